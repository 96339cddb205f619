"""Table 1 of the paper (with its numbers beside ours) and a per-configuration summary, as DataFrames
and as Markdown (written here: pandas' to_markdown needs the optional `tabulate` package)."""

from __future__ import annotations

import math

import pandas as pd

from rgsweep.analysis import paper
from rgsweep.analysis.frames import col, regularizer_setting, swept_factors

SUMMARY_METRICS = ("final_train_acc", "final_test_acc", "final_gen_gap", "epochs_to_fit", "fitted")
TABLE1_COLUMNS = ["arch", "setting", "n_runs", "train_acc", "test_acc", "paper_train_acc", "paper_test_acc"]


def _metric(runs: pd.DataFrame, final: str, latest: str) -> pd.Series:
    """The run's final_* summary metric, else the latest logged per-epoch value (a run that stopped early)."""
    latest_values = pd.to_numeric(col(runs, latest), errors="coerce")
    return pd.to_numeric(col(runs, final), errors="coerce").fillna(latest_values)


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean train/test accuracy (%) per architecture and regularizer setting, one row per pair we ran,
    with the paper's CIFAR-10 numbers where it reports that pair (NaN otherwise)."""
    setting = regularizer_setting(runs)
    sel = runs[setting.notna() & col(runs, "arch").notna()].assign(
        setting=setting, _train=100 * _metric(runs, "final_train_acc", "train_acc"),
        _test=100 * _metric(runs, "final_test_acc", "test_acc"),
    )
    if sel.empty:
        return pd.DataFrame(columns=TABLE1_COLUMNS)
    t = sel.groupby(["arch", "setting"]).agg(
        n_runs=("setting", "size"), train_acc=("_train", "mean"), test_acc=("_test", "mean")
    ).reset_index()
    ref = [paper.table1(a, s) or (math.nan, math.nan) for a, s in zip(t["arch"], t["setting"])]
    t["paper_train_acc"] = [r[0] for r in ref]
    t["paper_test_acc"] = [r[1] for r in ref]
    # The paper's row and column order; architectures it did not test come after, by name.
    arch_rank = {a: i for i, a in enumerate(paper.TABLE1)}
    t["_a"] = t["arch"].map(lambda a: (arch_rank.get(a, len(arch_rank)), a))
    t["_s"] = t["setting"].map(paper.SETTINGS.index)
    return t.sort_values(["_a", "_s"]).drop(columns=["_a", "_s"]).reset_index(drop=True)[TABLE1_COLUMNS]


def _pct(train: float, test: float) -> str:
    return f"{train:.2f} / {test:.2f}"


def table1_markdown(t1: pd.DataFrame) -> str:
    """Table 1 laid out like the paper: architectures as rows, settings as columns, cells
    "train % / test %" for our runs and, in brackets, the paper's (CIFAR-10) where it has the cell."""
    if t1.empty:
        return ("_No runs match a Table 1 setting (clean labels with or without crop and weight decay, "
                "or random labels)._")
    settings = [s for s in paper.SETTINGS if s in set(t1["setting"])]
    rows = []
    for arch, g in t1.groupby("arch", sort=False):
        cells = {"arch": arch}
        for r in g.itertuples():
            cell = f"{_pct(r.train_acc, r.test_acc)} (n={r.n_runs})"
            if not math.isnan(r.paper_train_acc):
                cell += f" · paper {_pct(r.paper_train_acc, r.paper_test_acc)}"
            cells[r.setting] = cell
        rows.append(cells)
    return to_markdown(pd.DataFrame(rows, columns=["arch", *settings]))


def summary_table(runs: pd.DataFrame, *, aggregate_seeds: bool = True) -> pd.DataFrame:
    """One row per combination of swept values: run count and statuses, mean and standard deviation
    (over seeds, n - 1 in the denominator; NaN for one run) of the final train/test accuracy, gen_gap,
    epochs_to_fit (over the runs that fitted) and the fraction fitted. With aggregate_seeds=False: one
    row per run."""
    factors = swept_factors(runs)
    metrics = [m for m in SUMMARY_METRICS if m in runs.columns]
    if not aggregate_seeds:
        cols = ["run_name", *[f for f in factors if f != "run_name"], "status", *metrics]
        rows = runs[[c for c in cols if c in runs.columns]]
        return rows.sort_values(factors or "run_name").reset_index(drop=True)
    factors = [f for f in factors if f != "seed"]
    keyed = runs.assign(_all="all runs") if not factors else runs
    by = factors or ["_all"]
    statuses = keyed.groupby(by, dropna=False, sort=True)["status"].agg(
        lambda s: ", ".join(f"{n} {k}" for k, n in s.value_counts().sort_index().items())
    )
    stats = {m: (m, "mean") for m in metrics} | {f"{m}_std": (m, "std") for m in metrics if m != "fitted"}
    t = keyed.groupby(by, dropna=False, sort=True).agg(n_runs=("run_id", "size"), **stats)
    t.insert(1, "status", statuses)
    return t.reset_index().rename(columns={"_all": "runs"})


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    """'0.912 ± 0.013' (one run, or no spread known: the mean alone; nothing: blank)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def merge_std(t: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A summary table for reading: each `m` and `m_std` pair becomes one 'mean ± std' column `m`."""
    out = t.copy()
    for m in [c for c in t.columns if f"{c}_std" in t.columns]:
        d = 1 if m == "epochs_to_fit" else digits
        out[m] = [mean_std(a, b, d) for a, b in zip(t[m], t[f"{m}_std"])]
        out = out.drop(columns=f"{m}_std")
    return out


def seed_summary(trials: pd.DataFrame, factors: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per-trial results (one row per trial, a `status` column, `fitted` as 0/1) summarized per
    combination of `factors` over seeds: n, 'mean ± std' per metric (epochs_to_fit over the runs that
    fitted), fitted as 'k/n' and the statuses. Used for the table a sweep prints and logs."""
    rows = []
    for key, g in trials.groupby(factors, sort=False, dropna=False):
        row = dict(zip(factors, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(g)
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").dropna()
            d = 1 if m == "epochs_to_fit" else 3
            row[m] = mean_std(v.mean(), v.std(ddof=1) if len(v) > 1 else math.nan, d) or "-"
        if "fitted" in g.columns:
            row["fitted"] = f"{int(pd.to_numeric(g['fitted'], errors='coerce').fillna(0).sum())}/{len(g)}"
        row["status"] = ", ".join(f"{n} {k}" for k, n in g["status"].value_counts().items())
        rows.append(row)
    return pd.DataFrame(rows)


def to_text(df: pd.DataFrame) -> str:
    """A plain aligned table for a terminal: a header, a rule, one line per row."""
    plain = lambda v: _cell(v, 3).replace("\\|", "|") or "-"
    cells = [[str(c) for c in df.columns]] + [[plain(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    line = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def pivot_mean(
    runs: pd.DataFrame, value: str, *, index: str = "arch", columns: str = "label_noise"
) -> pd.DataFrame:
    """Mean of `value` per (index, columns) cell; an empty frame when the export lacks one of the columns."""
    if not {value, index, columns} <= set(runs.columns):
        return pd.DataFrame()
    return runs.pivot_table(index=index, columns=columns, values=value, aggfunc="mean")


def _cell(v: object, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; floats to `digits` places, missing values blank."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
