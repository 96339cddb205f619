"""Small helpers on the exported frames, shared by figures, tables, report and notebooks.

Every helper tolerates missing columns: an export from a sweep that never varied a factor may not
have the column at all (an older run), and analysis must still work on what is there.
"""

from __future__ import annotations

import pandas as pd

# The corruption types of the paper's Figure 1a, in its legend order.
CORRUPTION_TYPES = ("true labels", "random labels", "shuffled pixels", "random pixels", "gaussian")
# Factors a sweep may vary, for exports whose parent run carries no `rgsweep.swept` tag.
CANDIDATE_FACTORS = (
    "arch", "label_noise", "corruption", "corrupt_fraction", "pixel_fraction", "augment", "weight_decay",
    "dropout", "batch_norm", "optimizer", "lr", "momentum", "batch_size", "width", "depth", "dataset",
    "subset", "epochs", "seed",
)


def col(df: pd.DataFrame, name: str, default: object = None) -> pd.Series:
    """df[name], or a column of `default` when the export has no such column."""
    return df[name] if name in df.columns else pd.Series(default, index=df.index, dtype=object)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that completed (FAILED and KILLED runs have partial or no final metrics)."""
    return runs[col(runs, "status", "FINISHED") == "FINISHED"]


def latest_per_trial(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial key: a trial run again by a later sweep invocation keeps its latest FINISHED run."""
    if "tag_trial_key" not in runs.columns or runs.empty:
        return runs
    rank = (runs["status"] == "FINISHED").astype(int)
    ordered = runs.assign(_rank=rank).sort_values(["_rank", "start_time"], kind="stable")
    keep = ordered.drop_duplicates("tag_trial_key", keep="last").index
    return runs.loc[runs.index.isin(keep) | runs["tag_trial_key"].isna()]


def corruption_type(runs: pd.DataFrame) -> pd.Series:
    """Figure 1a's category per run, or None for runs that are none of them (e.g. partial label noise)."""
    corruption = col(runs, "corruption", "none").fillna("none")
    noise = pd.to_numeric(col(runs, "label_noise", 0.0), errors="coerce").fillna(0.0)
    kind = pd.Series(None, index=runs.index, dtype=object)
    kind[(corruption == "none") & (noise == 0)] = "true labels"
    kind[(corruption == "none") & (noise == 1)] = "random labels"
    for name in ("shuffled_pixels", "random_pixels", "gaussian"):
        kind[(corruption == name) & (noise == 0)] = name.replace("_", " ")
    return kind


def regularizer_setting(runs: pd.DataFrame) -> pd.Series:
    """Table 1's column per run: crop+wd, crop only, wd only, neither, random labels (None otherwise)."""
    corruption = col(runs, "corruption", "none").fillna("none")
    noise = pd.to_numeric(col(runs, "label_noise", 0.0), errors="coerce").fillna(0.0)
    # The paper's crop by its exact name in the comma-joined list (padcrop is a different regulariser).
    crop = col(runs, "augment", "").fillna("").astype(str).str.contains(r"(?:^|,)\s*crop\s*(?:,|$)", regex=True)
    wd = pd.to_numeric(col(runs, "weight_decay", 0.0), errors="coerce").fillna(0.0) > 0
    setting = pd.Series(None, index=runs.index, dtype=object)
    clean = (corruption == "none") & (noise == 0)
    setting[clean & crop & wd] = "crop+wd"
    setting[clean & crop & ~wd] = "crop only"
    setting[clean & ~crop & wd] = "wd only"
    setting[clean & ~crop & ~wd] = "neither"
    setting[(corruption == "none") & (noise == 1)] = "random labels"
    return setting


def swept_factors(runs: pd.DataFrame) -> list[str]:
    """The factors the sweep varied: from the parent's `rgsweep.swept` tag, else the candidates that vary."""
    tagged = [s for s in col(runs, "swept").dropna().unique() if s]
    if tagged:
        names = dict.fromkeys(k.strip() for s in tagged for k in str(s).split(",") if k.strip())
        return [k for k in names if k in runs.columns]
    return [k for k in CANDIDATE_FACTORS if k in runs.columns and runs[k].nunique(dropna=False) > 1]


def pick_arch(runs: pd.DataFrame, arch: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """Runs of one architecture: the one asked for, else the one with most runs (curves of different
    architectures must not be averaged together)."""
    archs = col(runs, "arch")
    if arch is None:
        counts = archs.dropna().value_counts()
        if counts.empty:
            return runs, None
        arch = str(counts.index[0])
    return runs[archs == arch], arch
