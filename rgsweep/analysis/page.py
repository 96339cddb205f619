"""The sweep's own page: what a sweep's (or a study's) parent run carries when it ends, so that opening
that one run in the MLflow UI answers "what did this sweep find?".

- Description (`mlflow.note.content`, shown on the run's Overview): the counts, the cost per device
  kind, the claims' verdicts when the report judged them, the gen_gap figure, and the results table
  the terminal printed (mean ± std over seeds when there are several).
- Artifacts `report/`: `rgsweep report`'s report.md and figures (only those the sweep's runs can draw:
  gen_gap and test error against label noise per architecture, time to fit, learning curves overlaid,
  ...), claims.json once the claims exist, and the results table as results.md and results.csv.
- Metrics: `gen_gap_vs_noise/<arch>` and `test_error_vs_noise/<arch>` with step = the index of the label
  noise level (tag `rgsweep.noise_levels` lists the levels), so the parent's own charts draw the paper's
  Figure 1c; `device_s/<device kind>`, the trials' device-seconds summed per kind.

Built from the store (the export of this parent's children), so a resumed sweep's page covers the
trials of every invocation. A failure here prints a warning and leaves the sweep's result alone: the
runs are in MLflow either way, and `rgsweep report` redraws the page.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from rgsweep.analysis import export, report
from rgsweep.analysis.frames import col, finished, latest_per_trial

# The figure shown inline in the description, when the report drew it.
INLINE_FIGURE = ("gen_gap_vs_label_noise.png", "Generalization gap against label noise")


def noise_metrics(runs: pd.DataFrame) -> tuple[list[tuple[str, float, int]], list[float]]:
    """(key, value, step) per architecture and label-noise level, over the finished runs with intact
    inputs; the levels in step order. Nothing when fewer than two levels were run."""
    done = finished(latest_per_trial(runs))
    intact = done[col(done, "corruption", "none").fillna("none") == "none"]
    noise = pd.to_numeric(col(intact, "label_noise"), errors="coerce")
    levels = sorted(noise.dropna().unique().tolist())
    if len(levels) < 2 or "arch" not in intact.columns:
        return [], []
    out = []
    step = {p: i for i, p in enumerate(levels)}
    for (arch, p), g in intact.assign(_p=noise).groupby(["arch", "_p"]):
        gap = pd.to_numeric(col(g, "final_gen_gap"), errors="coerce").mean()
        err = 1 - pd.to_numeric(col(g, "final_test_acc"), errors="coerce").mean()
        out += [(f"gen_gap_vs_noise/{arch}", gap, step[p]), (f"test_error_vs_noise/{arch}", err, step[p])]
    return [m for m in out if not math.isnan(m[1])], levels


def cost_sums(runs: pd.DataFrame) -> dict[str, float]:
    """Device-seconds per device kind, over every run that logged them (failed ones cost too)."""
    if "device_s" not in runs.columns:
        return {}
    kind = col(runs, "tag_device_kind", "unknown").fillna("unknown").astype(str)
    sums = pd.to_numeric(runs["device_s"], errors="coerce").groupby(kind).sum(min_count=1).dropna()
    return {str(k): float(v) for k, v in sums.items()}


def cost_line(sums: dict[str, float]) -> str:
    if not sums:
        return ""
    unit = lambda kind: "CPU core-seconds" if kind == "cpu" else f"GPU-seconds on {kind}"
    return "Cost: " + ", ".join(f"{v:,.0f} {unit(k)}" for k, v in sorted(sums.items())) + "."


def claims_line(folder: Path) -> str:
    """The verdicts, when the report judged the paper's claims (it writes claims.json then)."""
    path = folder / "claims.json"
    if not path.exists():
        return ""
    verdicts = json.loads(path.read_text())
    return "Claims: " + " · ".join(f"{c['id']} **{c['status']}**" for c in verdicts) + " (report/report.md says why)."


def note(headline: str, cost: str, claims: str, results_md: str, figure_url: str | None) -> str:
    lines = [f"**{headline}**", ""]
    lines += [x for x in (cost, claims) if x]
    if figure_url:
        lines += ["", f"![{INLINE_FIGURE[1]}]({figure_url})"]
    lines += ["", "### Results", "", results_md, "",
              "Figures, the full report and results.csv: the **Artifacts** tab, folder `report/`."]
    return "\n".join(lines)


def artifact_url(run_id: str, path: str) -> str:
    """An artifact as the MLflow server serves it, relative to the UI's page (works behind a path prefix)."""
    return f"get-artifact?path={path}&run_uuid={run_id}"


def metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, '_', '-', '.', ' ' and '/'."""
    return re.sub(r"[^\w\-. /]", "_", text)


def build(client: Any, parent_run_id: str, folder: Path, *, title: str, headline: str, results_md: str,
          results: pd.DataFrame) -> tuple[str, list[tuple[str, float, int]], dict[str, str]]:
    """Write the page's files into `folder`; return (description, metrics, tags) for the parent run."""
    uri = client.tracking_uri
    runs, history = export.collect(uri, parent_run_id=parent_run_id)
    report.write_report(folder, runs, history, title=title, source=uri)
    (folder / "results.md").write_text(results_md + "\n")
    results.to_csv(folder / "results.csv", index=False)
    metrics, levels = noise_metrics(runs)
    sums = cost_sums(runs)
    metrics += [(metric_key(f"device_s/{kind}"), v, 0) for kind, v in sums.items()]
    figure = artifact_url(parent_run_id, f"report/{INLINE_FIGURE[0]}") if (folder / INLINE_FIGURE[0]).exists() \
        else None
    text = note(headline, cost_line(sums), claims_line(folder), results_md, figure)
    tags = {"rgsweep.noise_levels": ",".join(f"{p:g}" for p in levels)} if levels else {}
    return text, metrics, tags


def publish(client: Any, parent_run_id: str, *, title: str, headline: str, results_md: str,
            results: pd.DataFrame) -> None:
    """Build the page and put it on the parent run (see the module's docstring)."""
    from rgsweep import tracking

    try:
        with tempfile.TemporaryDirectory() as tmp:
            text, metrics, tags = build(client, parent_run_id, Path(tmp), title=title, headline=headline,
                                        results_md=results_md, results=results)
            tracking.log_parent_page(client, parent_run_id, Path(tmp), text, metrics, tags)
    except Exception as e:  # the page is a view of the runs: never the reason a sweep fails
        print(f"warning: the sweep's page on its parent run is incomplete ({type(e).__name__}: {e}); "
              f"`rgsweep report` redraws its figures", file=sys.stderr)
