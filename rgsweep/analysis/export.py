"""Export trial runs from MLflow to two pandas frames, stored as parquet (and optionally CSV).

`runs.parquet`: one row per trial (child run): ids, status, times, every param (typed), the latest
value of every metric, and the `rgsweep.*` tags as `tag_*` columns.
`history.parquet`: one row per trial and epoch: `run_id`, `epoch` (the MLflow step), one column per
per-epoch metric. Parent runs (one per sweep invocation) are never rows; their `rgsweep.swept` tag is
copied into each child's `swept` column so the analysis knows which factors the grid varied.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from rgsweep import metrics
from rgsweep.stores import given_uri, sqlite_file

if TYPE_CHECKING:  # mlflow is imported lazily: notebooks only need load_export, and mlflow is slow to import
    from mlflow import MlflowClient
    from mlflow.entities import Run

# Logged once per run at the end (layout contract, rgsweep/metrics.py); every other metric key is per-epoch.
SUMMARY_METRICS = metrics.PER_RUN
# Per-epoch metrics in the order people read them; unknown keys follow, sorted.
HISTORY_ORDER = tuple(metrics.EPOCH_SERIES)
# Params that are fractions or rates: always float, even when every logged value happens to be "0" or "1".
FLOAT_PARAMS = frozenset({
    "label_noise", "val_fraction", "corrupt_fraction", "pixel_fraction", "dropout", "lr", "momentum",
    "weight_decay", "lr_decay", "fit_threshold",
})
ID_COLUMNS = ["run_id", "run_name", "status", "parent_run_id", "experiment", "experiment_id", "start_time",
              "end_time", "swept"]
_INT = re.compile(r"^[+-]?\d+$")
_PAGE = 1000


class AnalysisError(Exception):
    """A user-facing problem (unknown experiment, missing export): the CLI prints it on one line."""


def resolve_uri(uri: str | None) -> str:
    """rgsweep.tracking's rule (flag > $MLFLOW_TRACKING_URI > ./mlruns/mlflow.db), errors made user-facing.

    The commands that read a store (export, report, ui) never create one: a mistyped path, or a command
    run from another directory than the sweep, would otherwise become a new empty store and an
    "unknown experiment" error that hides the cause."""
    from rgsweep import tracking  # imports mlflow: kept out of module import for load_export's sake

    given = given_uri(uri)
    db = sqlite_file(given)
    if db is not None:
        path = db.resolve()
        if not path.is_file():
            raise AnalysisError(
                f"no MLflow store at {path} (tracking URI {given}): nothing has been tracked there; a relative "
                "sqlite:/// path is read from the current directory, so run this where the sweep ran or pass "
                "--tracking-uri sqlite:////absolute/path/mlflow.db")
    try:
        return tracking.resolve_tracking_uri(uri)
    except ValueError as e:
        raise AnalysisError(str(e)) from e


def get_client(tracking_uri: str | None) -> MlflowClient:
    from rgsweep import tracking

    return tracking.get_client(resolve_uri(tracking_uri))


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise AnalysisError(f"unknown experiment {name!r} (known: {known})")
    return exp.experiment_id


def _search_all(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_trial(run: Run) -> bool:
    tags = run.data.tags
    kind = tags.get("rgsweep.kind")
    return kind == "trial" or (kind is None and "mlflow.parentRunId" in tags)


def parse_param(values: pd.Series, name: str = "") -> pd.Series:
    """Param strings back to types: "None" -> missing, True/False -> boolean, numbers -> int/float."""
    s = values.astype(object).where(values.notna() & (values != "None"), None)
    present = s.dropna().astype(str)
    if present.empty:
        return s
    if present.str.lower().isin(["true", "false"]).all():
        return s.map(lambda v: None if v is None else str(v).lower() == "true").astype("boolean")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return s.astype("str")  # pandas' string dtype, the same as a parquet round trip gives back
    if name not in FLOAT_PARAMS and present.str.match(_INT).all():
        return pd.to_numeric(s).astype("Int64" if s.isna().any() else "int64")
    return pd.to_numeric(s).astype("float64")


def _runs_frame(runs: list[Run], exp_names: dict[str, str], swept: dict[str, str]) -> pd.DataFrame:
    base = pd.DataFrame([{
        "run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
        "parent_run_id": r.data.tags.get("mlflow.parentRunId"),
        "experiment": exp_names.get(r.info.experiment_id), "experiment_id": r.info.experiment_id,
        "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
        "swept": swept.get(r.data.tags.get("mlflow.parentRunId")),
    } for r in runs], columns=ID_COLUMNS)
    params = pd.DataFrame([r.data.params for r in runs], index=base.index)
    params = pd.DataFrame({k: parse_param(params[k], k) for k in sorted(params.columns)}, index=base.index)
    values = pd.DataFrame([_with_finals(r.data.metrics) for r in runs], index=base.index, dtype="float64")
    values = values.reindex(columns=sorted(values.columns))
    # Params keep their own names; a metric named like a param or id column (none today) gets a prefix.
    taken = set(ID_COLUMNS) | set(params.columns)
    values.columns = [f"metric_{k}" if k in taken else k for k in values.columns]
    tags = pd.DataFrame([{f"tag_{k.removeprefix('rgsweep.')}": v for k, v in r.data.tags.items()
                          if k.startswith("rgsweep.")} for r in runs], index=base.index)
    tags = tags.reindex(columns=sorted(tags.columns))
    return pd.concat([base, params, values, tags], axis=1)


def _with_finals(logged: dict[str, float]) -> dict[str, float]:
    """A run's metrics with the `final_*` columns the analysis reads: as logged by stores written before
    rgsweep stopped logging them, else the series' latest value (its last epoch; rgsweep/metrics.py)."""
    out = dict(logged)
    for final, series in metrics.FINAL_FROM_SERIES.items():
        if final not in out and series in out:
            out[final] = out[series]
    return out


def _history_records(client: MlflowClient, run_ids: list[str], keys: list[str], bulk: bool) -> pd.DataFrame:
    store = client._tracking_client.store
    records = []
    if bulk and hasattr(store, "get_metric_history_bulk"):
        # SQL stores answer one query per key for many runs (MlflowClient only has the per-run, per-key call).
        # Chunks keep the IN (...) list under SQLite's variable limit.
        for key in keys:
            for i in range(0, len(run_ids), 500):
                for m in store.get_metric_history_bulk(run_ids[i:i + 500], key, max_results=10**9):
                    records.append((m.run_id, key, m.step, m.timestamp, m.value))
    else:
        for rid in run_ids:
            for key in keys:
                for m in client.get_metric_history(rid, key):
                    records.append((rid, key, m.step, m.timestamp, m.value))
    return pd.DataFrame(records, columns=["run_id", "key", "step", "timestamp", "value"])


def _history_frame(client: MlflowClient, runs: list[Run], *, bulk: bool = True) -> pd.DataFrame:
    keys = sorted({k for r in runs for k in r.data.metrics} - SUMMARY_METRICS)
    ordered = [k for k in HISTORY_ORDER if k in keys] + [k for k in keys if k not in HISTORY_ORDER]
    run_ids = [r.info.run_id for r in runs]
    rec = _history_records(client, run_ids, keys, bulk)
    # Epochs are 1-based steps; rgsweep logs once-per-run values (num_params, summaries) at step 0.
    rec = rec[rec["step"] >= 1]
    ordered = [k for k in ordered if k in set(rec["key"])]
    if rec.empty:
        return pd.DataFrame(columns=["run_id", "epoch", *ordered])
    # A step logged twice (a resumed trial) keeps its latest value.
    rec = rec.sort_values("timestamp", kind="stable").drop_duplicates(["run_id", "step", "key"], keep="last")
    wide = rec.pivot(index=["run_id", "step"], columns="key", values="value").reset_index()
    wide = wide.rename(columns={"step": "epoch"}).reindex(columns=["run_id", "epoch", *ordered])
    wide.columns.name = None
    order = wide["run_id"].map({rid: i for i, rid in enumerate(run_ids)})
    wide = wide.assign(_order=order).sort_values(["_order", "epoch"]).drop(columns="_order")
    return wide.astype({"epoch": "int64"}).reset_index(drop=True)


def collect(
    tracking_uri: str | None, *, experiment: str | None = None, parent_run_id: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two frames, without writing anything."""
    from mlflow.exceptions import MlflowException

    client = get_client(tracking_uri)
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as e:
            raise AnalysisError(f"unknown sweep parent run {parent_run_id!r}") from e
        exp_ids = [parent.info.experiment_id]
        if experiment is not None and experiment_id(client, experiment) != exp_ids[0]:
            raise AnalysisError(f"run {parent_run_id} is not in experiment {experiment!r}")
    elif experiment is not None:
        exp_ids = [experiment_id(client, experiment)]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    exp_names = {e: client.get_experiment(e).name for e in exp_ids}

    every = _search_all(client, exp_ids) if exp_ids else []
    swept = {r.info.run_id: r.data.tags.get("rgsweep.swept") for r in every if not _is_trial(r)}
    trials = [r for r in every if _is_trial(r)]
    if parent_run_id is not None:
        trials = [r for r in trials if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    trials.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return _runs_frame(trials, exp_names, swept), _history_frame(client, trials)


def export_runs(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    out_dir: str | Path = "exports",
    csv: bool = False,
) -> dict[str, Path]:
    """Write runs.parquet and history.parquet (and .csv twins) to out_dir; returns {name: path}."""
    runs, history = collect(tracking_uri, experiment=experiment, parent_run_id=parent_run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out / "runs.parquet", "history": out / "history.parquet"}
    runs.to_parquet(paths["runs"], index=False)
    history.to_parquet(paths["history"], index=False)
    if csv:
        paths["runs_csv"] = out / "runs.csv"
        paths["history_csv"] = out / "history.csv"
        runs.to_csv(paths["runs_csv"], index=False)
        history.to_csv(paths["history_csv"], index=False)
    return paths


def load_export(out_dir: str | Path = "exports") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, history) as written by export_runs."""
    out = Path(out_dir)
    missing = [p for p in ("runs.parquet", "history.parquet") if not (out / p).exists()]
    if missing:
        raise AnalysisError(f"no export in {out} (missing {', '.join(missing)}): run `rgsweep export` first")
    return pd.read_parquet(out / "runs.parquet"), pd.read_parquet(out / "history.parquet")
