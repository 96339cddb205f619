"""Everything that talks to MLflow: store, experiments, run lifecycle, batched metrics, artifacts.

It knows nothing of models or Ray. The layout it writes (a contract the analysis code reads):
- one experiment per sweep family; a parent run per sweep (tag rgsweep.kind=sweep) or study (kind=tune);
- a child run per trial (tags mlflow.parentRunId, rgsweep.kind=trial, rgsweep.trial_key, rgsweep.sweep,
  rgsweep.git_commit, rgsweep.dataset_fingerprint, rgsweep.device, rgsweep.ray_node, rgsweep.torch_version);
- params: the resolved TrialConfig, flattened; metrics per epoch (step = epoch) in one batched call;
  summary metrics once at the end; a learning_curve.png artifact.

We use MlflowClient with explicit run ids, never the fluent "active run" state, so the same code
works from the CLI, from a Ray driver callback, and from several threads.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from rgsweep.data.sources import data_location

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG = "rgsweep."
T = TypeVar("T")


# -- store ----------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """Flag > $MLFLOW_TRACKING_URI > ./mlruns/mlflow.db. Relative SQLite paths become absolute so that
    processes started elsewhere (Ray workers, notebooks) open the same file."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    elif uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            f"tracking URI {uri!r}: MLflow's file store is refused since 3.13; "
            "use sqlite:///mlruns/mlflow.db or an http(s):// tracking server"
        )
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (mlruns/); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent.as_uri()
    return None


def retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry a store call on transient SQLite contention ('database is locked'): nothing may be lost."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn()
        except MlflowException as e:
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


_clients: dict[str, MlflowClient] = {}


def get_client(uri: str | None = None) -> MlflowClient:
    """A client for the resolved URI. The first call on a new SQLite file creates its schema (~3 s);
    callers that fan out (sweeps) call this once in the driver before any trial starts."""
    uri = resolve_tracking_uri(uri)
    if uri not in _clients:
        client = MlflowClient(tracking_uri=uri)
        retry(lambda: client.search_experiments(max_results=1))  # runs migrations once, here
        _clients[uri] = client
    return _clients[uri]


def get_experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# -- environment ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The code's commit (with -dirty), read once per process: a sweep tags hundreds of runs."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent,
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only; NaN/inf kept out (a diverged loss is recorded as a tag, not as a metric)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


# -- runs -----------------------------------------------------------------------------------------
class RunTracker:
    """One MLflow run: params at the start, a batch of metrics per epoch, summary and status at the end."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self.history: list[dict[str, float]] = []

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunTracker:
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=tags))
        tracker = cls(client, run.info.run_id)
        if params:
            tracker.log_params(params)
        return tracker

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            retry(lambda chunk=items[i : i + 100]: self.client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if tags:
            batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            retry(lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """All keys in one call (one ~9 ms round trip instead of one per key)."""
        clean = _clean(metrics)
        if not clean:
            return
        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, step or 0) for k, v in clean.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.log_epochs([metrics])

    def log_epochs(self, epochs: list[dict[str, Any]]) -> None:
        """Several epochs' metrics (each with its `epoch`, the step) in as few calls as MLflow allows."""
        ts = int(time.time() * 1000)
        batch: list[Metric] = []
        for metrics in epochs:
            clean = _clean(metrics)
            self.history.append(clean)
            step = int(metrics["epoch"])
            batch += [Metric(k, v, ts, step) for k, v in clean.items() if k != "epoch"]
        for i in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
            retry(lambda chunk=batch[i : i + 1000]: self.client.log_batch(self.run_id, metrics=chunk))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_learning_curve(self, history: list[dict[str, float]] | None = None) -> None:
        history = history if history is not None else self.history
        if not history:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "learning_curve.png"
            plot_learning_curve(history, path)
            self.log_artifact(path)

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status))

    def fail(self, error: str, diverged: bool = False) -> None:
        tags: dict[str, Any] = {TAG + "error": error[-4000:]}
        if diverged:
            tags[TAG + "diverged"] = "true"
        self.set_tags(tags)
        self.finish("FAILED")


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    # Fixed margins rather than tight_layout, which measures every tick label: the plot is drawn in the
    # sweep driver once per trial, and this halves it (0.6 -> 0.3 s).
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.95, wspace=0.25)
    # Each curve through the epochs that measured it: test metrics exist only on the epochs that
    # evaluated the test set (`eval_every`), and NaN gaps would break the line into invisible points.
    def curve(ax, key):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="." if len(pts) < len(history) else None)

    for key in ("train_loss", "test_loss"):
        curve(ax1, key)
    for key in ("train_acc", "test_acc", "train_acc_clean", "train_acc_noisy"):
        curve(ax2, key)
    ax1.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax1.legend()
    ax2.legend()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def search_children(
    client: MlflowClient, experiment_id: str, parent_run_id: str | None = None,
    statuses: Iterable[str] | None = None, extra: str = "",
) -> list[Any]:
    """Child runs of an experiment (optionally of one parent, optionally by status), all pages."""
    filt = [f"tags.`{TAG}kind` = 'trial'"]
    if parent_run_id:
        filt.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    if extra:
        filt.append(extra)
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], " and ".join(filt), max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    if statuses is not None:
        wanted = set(statuses)
        runs = [r for r in runs if r.info.status in wanted]
    return runs


# -- trial runs -----------------------------------------------------------------------------------
_ABBREV = {"label_noise": "noise", "weight_decay": "wd", "dropout": "drop", "corrupt_fraction": "cfrac",
           "pixel_fraction": "pfrac", "batch_size": "bs", "lr": "lr", "batch_norm": "bn"}


def run_name(config: Any, keys: Iterable[str] = ("label_noise",)) -> str:
    """Readable child-run name from the swept keys, e.g. `alexnet-noise0.4-seed0`."""
    parts = [config.arch]
    for k in keys:
        if k in ("arch", "seed"):
            continue
        v = getattr(config, k, None)
        if k == "corruption":
            parts.append(v if v != "none" else "clean")
        elif k == "augment":
            parts.append("+".join(v) if v else "noaug")
        elif k == "dataset":
            parts.append(str(v).split(":")[0])
        else:
            parts.append(f"{_ABBREV.get(k, k)}{v}")
    parts.append(f"seed{config.seed}")
    return "-".join(parts)


def trial_tags(config: Any, sweep: str | None = None, kind: str = "trial") -> dict[str, str]:
    tags = {TAG + "kind": kind, TAG + "trial_key": config.key(), TAG + "git_commit": git_commit(),
            TAG + "dataset": config.dataset}
    where = data_location(config.dataset, config.data_dir)  # called in the driver: its directory, as preload
    if where is not None:
        tags[TAG + "data_path"] = str(where)
    if sweep:
        tags[TAG + "sweep"] = sweep
    return tags


def info_tags(summary: dict[str, Any]) -> dict[str, str]:
    """Tags the trial itself learns: where it ran (device, Ray node id) and on what data."""
    keys = ("device", "ray_node", "dataset_fingerprint", "torch_version", "num_params", "stop_reason")
    return {TAG + k: str(summary[k]) for k in keys if summary.get(k) is not None}


def finish_trial(tracker: RunTracker, summary: dict[str, Any], error: str | None = None,
                 diverged: bool = False) -> None:
    """Summary metrics, info tags, the learning curve, then the final status."""
    tracker.set_tags(info_tags(summary))
    tracker.log_metrics({k: v for k, v in summary.items() if k != "last_epoch"})
    tracker.log_learning_curve()
    if error is not None or diverged:
        tracker.fail(error or "diverged: training loss is not finite", diverged=diverged)
    else:
        tracker.finish("FINISHED")
