"""Analysis of exported runs: export (MLflow -> parquet), frames (shared helpers), figures, tables
(with the paper's numbers from paper), report, notebooks, and the CLI subcommands in commands.

Submodules are imported on their own (`from rgsweep.analysis import figures`) so that reading an
export in a notebook never pays for importing mlflow.
"""
