"""`rgsweep report`: export an experiment, judge the paper's claims on it, draw the figures, write report.md
(and claims.json) beside them, and log the folder as artifacts (`report/`) of the experiment's latest sweep
parent run, where the MLflow UI shows it."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from rgsweep.analysis import claims, figures, tables
from rgsweep.analysis.export import experiment_id, export_runs, get_client, load_export, resolve_uri
from rgsweep.analysis.frames import col, finished, latest_per_trial, swept_factors

log = logging.getLogger(__name__)
FigureBuilder = Callable[[pd.DataFrame, pd.DataFrame], Figure]


def _heatmap(runs: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Gen-gap heatmap over two swept factors: label_noise x arch when both vary (on intact inputs, so
    pixel corruptions do not blur the label-noise cells), else the first two that vary."""
    factors = [f for f in swept_factors(runs) if f != "seed" and runs[f].nunique() > 1]
    if {"label_noise", "arch"} <= set(factors):
        intact = runs[col(runs, "corruption", "none").fillna("none") == "none"]
        return figures.gen_gap_heatmap(intact, "label_noise", "arch")
    if len(factors) < 2:
        return figures.gen_gap_heatmap(runs, factors[0] if factors else "label_noise", "arch")
    return figures.gen_gap_heatmap(runs, factors[1], factors[0])


def _data_samples(runs: pd.DataFrame, history: pd.DataFrame) -> Figure:
    from rgsweep.analysis import samples  # imports torch: only when a report is drawn

    return samples.figure_from_runs(runs)


# (file name, heading, builder): the order they appear in the report.
FIGURES: list[tuple[str, str, FigureBuilder]] = [
    ("data_samples.png", "The data: training images per condition, as the trials train on them", _data_samples),
    ("fig1a_loss_curves.png", "Figure 1a: training loss per corruption type",
     lambda r, h: figures.fig1a_loss_curves(h, r)),
    ("fig1b_time_to_fit.png", "Figure 1b: time to fit against label noise, relative to clean labels",
     lambda r, h: figures.fig1b_time_to_fit(r)),
    ("fig1c_test_error.png", "Figure 1c: test error against label noise",
     lambda r, h: figures.fig1c_test_error(r)),
    ("gen_gap_vs_label_noise.png", "Generalization gap against label noise",
     lambda r, h: figures.gen_gap_vs_label_noise(r)),
    ("gen_gap_heatmap.png", "Generalization gap over two swept factors", _heatmap),
    ("memorisation.png", "Memorisation: clean and relabelled training subsets",
     lambda r, h: figures.memorisation_curves(h, r)),
    ("learning_curves.png", "Learning curves of every run, overlaid", lambda r, h: figures.learning_curves(h, r)),
]


def latest_sweep_parent(client, exp_id: str) -> str | None:
    """The run id of the experiment's most recent sweep parent (tag rgsweep.kind=sweep), if any."""
    found = client.search_runs([exp_id], filter_string="tags.`rgsweep.kind` = 'sweep'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def claims_section(folder: Path, runs: pd.DataFrame, history: pd.DataFrame) -> list[str]:
    """The paper's claims judged on the runs: the section's lines; claims.json beside report.md."""
    judged, left_out = claims.judge(runs, history)
    (folder / "claims.json").write_text(claims.to_json(judged))
    return [claims.to_markdown(judged, left_out)]


def write_report(folder: Path, runs: pd.DataFrame, history: pd.DataFrame, *, title: str, source: str) -> Path:
    """report.md plus one PNG per figure that has data, from exported frames."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = latest_per_trial(runs)
    done = finished(runs)
    statuses = ", ".join(f"{n} {s}" for s, n in col(runs, "status").value_counts().sort_index().items())
    datasets = ", ".join(sorted(map(str, col(done, "dataset").dropna().unique()))) or "unknown"
    lines = [
        f"# rgsweep report: {title}", "",
        f"- source: `{source}`",
        f"- generated: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- trials: {len(runs)} ({statuses or 'none'}); figures and tables use the {len(done)} FINISHED ones",
        f"- dataset: {datasets}; the paper's numbers are CIFAR-10",
        f"- swept factors: {', '.join(swept_factors(runs)) or 'none'}",
        "", "## Claims", "", *claims_section(folder, runs, history),
        "", "## Figures", "",
    ]
    for name, heading, build in FIGURES:
        (folder / name).unlink(missing_ok=True)  # never leave a stale figure from an earlier report
        fig = build(done, history)
        lines.append(f"### {heading}")
        if figures.has_data(fig):
            fig.savefig(folder / name, dpi=110)
            lines += ["", f"![{heading}]({name})", ""]
        else:
            note = next((t.get_text() for t in fig.axes[0].texts), "no data")
            lines += ["", f"_Not drawn ({note})._", ""]
    lines += [
        "## Table 1: train / test accuracy (%) per architecture and regularizer setting", "",
        tables.table1_markdown(tables.table1(done)), "",
        "## Summary per configuration (mean ± standard deviation over seeds, n runs)", "",
        tables.to_markdown(tables.merge_std(tables.summary_table(runs))), "",
    ]
    failed = runs[col(runs, "status") != "FINISHED"]
    if not failed.empty:
        shown = [c for c in ("run_name", "status", "tag_error") if c in failed.columns]
        lines += ["## Runs that did not finish", "", tables.to_markdown(failed[shown]), ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def build_report(
    tracking_uri: str | None = None,
    *,
    experiment: str,
    out_dir: str | Path = "reports",
    log_to_parent: bool = True,
) -> Path:
    """Export `experiment`, write <out_dir>/<experiment>/report.md with its figures, and (by default)
    log them as artifacts under `report/` of the experiment's latest sweep parent run.
    Returns report.md's path."""
    uri = resolve_uri(tracking_uri)
    folder = Path(out_dir) / re.sub(r"[^\w.-]+", "_", experiment)
    export_runs(uri, experiment=experiment, out_dir=folder / "data")
    runs, history = load_export(folder / "data")
    path = write_report(folder, runs, history, title=experiment, source=uri)
    if log_to_parent:
        client = get_client(uri)
        parent = latest_sweep_parent(client, experiment_id(client, experiment))
        if parent is None:
            log.warning("experiment %r has no sweep parent run: report not logged to MLflow", experiment)
        else:
            for f in [path, folder / "claims.json", *sorted(folder.glob("*.png"))]:
                client.log_artifact(parent, str(f), artifact_path="report")
    return path
