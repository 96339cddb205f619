"""The `sweep` and `tune` subcommands' options, added to the main parser by `register`.

Kept out of sweep.py and tune.py, which import MLflow, Ray and Optuna: building the parser (`rgsweep
--help`, an unknown option) imports none of them, and a command's module loads only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], Any]:
    """A command function that imports its module when called."""

    def run(args: argparse.Namespace) -> Any:
        return getattr(importlib.import_module(module), name)(args)

    return run


def register(sub: Any) -> None:
    add_sweep(sub)
    add_tune(sub)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `rgsweep sweep` and `rgsweep tune`: data overrides, Ray, MLflow."""
    p.add_argument("--dataset", help="override the dataset of every trial")
    p.add_argument("--data-dir", help="override the data dir of every trial (relative to the current directory)")
    p.add_argument("--download", action="store_true", help="allow downloading the dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a trial key for every trial, grid values included (repeatable)")
    p.add_argument("--ray-address", help="join this Ray cluster (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--storage-path", help="Ray Tune state (default mlruns/ray beside the store; s3://... for clusters)")
    p.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--verbose", action="store_true", help="also print Ray's status table (default: one progress line)")


def add_job(sub: Any, name: str, *, help: str, file: str, dry_run: str, smoke: str, resume: str) -> Any:
    """What `sweep` and `tune` share: a file, --dry-run, --smoke, --resume (each with its own meaning)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("file", help=file)
    p.add_argument("--dry-run", action="store_true", help=dry_run)
    p.add_argument("--smoke", action="store_true", help=smoke)
    p.add_argument("--resume", action="store_true", help=resume)
    return p


def add_sweep(sub: Any) -> None:
    p = add_job(sub, "sweep", help="run a grid sweep file on Ray Tune, every trial an MLflow run",
                file="sweep file (sweeps/*.yaml)", dry_run="print the expanded trials and their count",
                smoke="tiny variant: the file's smoke overrides, 2 values per key",
                resume="continue the last run of this sweep; skip FINISHED trials")
    p.add_argument("--rerun-failed", action="store_true", help="with --resume: run FAILED trials again")
    p.add_argument("--cpus-per-trial", type=float, help="override resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override resources.gpu (fractions share a GPU)")
    p.add_argument("--pack", type=int, help="override pack: train up to this many compatible trials together")
    p.add_argument("--baseline", help="baseline file to start from instead of the file's `baseline:` "
                   "(e.g. mlruns/baselines/tune-demo.yaml, written by `rgsweep tune`)")
    p.add_argument("--seeds", metavar="S,S,...", help="override seeds, e.g. 0,1,2 (also --set seeds=[0,1,2]): "
                                                     "results are then shown as mean ± std over them")
    add_run_args(p)
    p.set_defaults(func=lazy("rgsweep.sweepfile", "cmd_sweep"))


def add_tune(sub: Any) -> None:
    p = add_job(sub, "tune", help="Optuna search for baseline hyperparameters on Ray Tune, every trial in MLflow",
                file="tuning file (sweeps/tune-*.yaml)", dry_run="print the resolved study plan and exit",
                smoke="tiny variant (the file's smoke overrides), throwaway study",
                resume="add trials to the existing study instead of refusing")
    p.add_argument("--restart", action="store_true", help="delete the existing study and start a new one")
    p.add_argument("--n-trials", type=int, help="trials to run in this invocation (default: the file's n_trials)")
    p.add_argument("--baseline-out",
                   help="where to write the best params (default: baselines/<name>.yaml beside the MLflow store)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///.../optuna.db beside the MLflow store)")
    add_run_args(p)
    p.set_defaults(func=lazy("rgsweep.tunefile", "cmd_tune"))
