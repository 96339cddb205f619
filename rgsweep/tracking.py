"""Everything that talks to MLflow: store, experiments, run lifecycle, batched metrics, artifacts.

It knows nothing of models or Ray. The layout it writes (a contract the analysis code reads):
- one experiment per sweep family; a parent run per sweep (tag rgsweep.kind=sweep) or study (kind=tune);
- a child run per trial (tags mlflow.parentRunId, rgsweep.kind=trial, rgsweep.trial_key, rgsweep.sweep,
  rgsweep.git_commit, rgsweep.dataset_fingerprint, rgsweep.device, rgsweep.ray_node, rgsweep.torch_version);
- params: the resolved TrialConfig, flattened; metrics per epoch (step = epoch) in one batched call;
  summary metrics once at the end (rgsweep/metrics.py says which is which); a learning_curve.png artifact;
- what the MLflow UI reads (see "the UI" below): run colours per architecture, dataset inputs, source and
  user tags, descriptions (`mlflow.note.content`) of the experiment, the parent and each child.

We use MlflowClient with explicit run ids, never the fluent "active run" state, so the same code
works from the CLI, from a Ray driver callback, and from several threads.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from rgsweep.data.sources import data_location
from rgsweep.metrics import FINAL_FROM_SERIES
from rgsweep.palette import arch_color
from rgsweep.stores import absolute_uri, artifact_root, sqlite_file

TAG = "rgsweep."
T = TypeVar("T")


# -- store ----------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """Flag > $MLFLOW_TRACKING_URI > ./mlruns/mlflow.db, absolute (stores.absolute_uri), with the SQLite
    file's folder created: the store is about to be opened."""
    uri = absolute_uri(uri)
    db = sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


# -- store errors ---------------------------------------------------------------------------------
# A store call that fails with a transient error (SQLite "database is locked" or "disk I/O error", a
# server that is down, restarting or overloaded) is retried with backoff for up to STORE_RETRY_S
# seconds, reads as well as writes; then StoreError (one line) tells the caller the store is down.
# Errors that say our request was wrong (bad parameter, no such run) are raised at once: retrying
# would not help. MLflow's own HTTP retries (7, ~4 minutes by default) are cut to one attempt of at
# most HTTP_TIMEOUT_S, so the budget here is the only one (a user's MLFLOW_HTTP_* settings still win).
STORE_RETRY_S = 120.0
HTTP_TIMEOUT_S = 30
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
              "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND", "NOT_FOUND"}


class StoreError(RuntimeError):
    """The tracking store stayed unavailable for the whole retry budget (message: one line)."""


def retry_budget() -> float:
    """Seconds a failing store call is retried ($RGSWEEP_STORE_RETRY_S, default 120)."""
    return float(os.environ.get("RGSWEEP_STORE_RETRY_S", STORE_RETRY_S))


def transient(e: BaseException) -> bool:
    """Worth retrying: the store failed, not our request. A local file error (an artifact location
    that is not writable) is not: it would fail the same way for the whole budget."""
    if isinstance(e, MlflowException):
        return e.error_code not in _PERMANENT
    return isinstance(e, (ConnectionError, TimeoutError, requests.exceptions.RequestException))


def first_line(e: BaseException) -> str:
    """The gist of a store error on one line: an OS error's own words when there is one (a refused
    connection, a read-only file) rather than the client's wrapping of it."""
    text = str(e).strip() or type(e).__name__
    gist = re.search(r"\[Errno -?\d+\] [^\"'\)\]]+|(Read|Connect) timed out\.( \([a-z]+ timeout=[\d.]+\))?", text)
    if gist:
        return gist.group(0).strip()
    return text.splitlines()[0][:200]


_outage: dict[str, float] = {}  # "since": when the current outage began (monotonic), while one lasts


def _announce(e: BaseException, budget: float) -> None:
    if "since" not in _outage:
        _outage["since"] = time.monotonic()
        print(f"tracking store unavailable ({first_line(e)}); retrying for up to {budget:.0f} s", file=sys.stderr,
              flush=True)


def _recovered() -> None:
    since = _outage.pop("since", None)
    if since is not None:
        print(f"tracking store back after {time.monotonic() - since:.0f} s", file=sys.stderr, flush=True)


def retry(fn: Callable[[], T], budget: float | None = None, quiet: bool = False) -> T:
    """`fn()`, retried with backoff while the store fails transiently, for at most `budget` seconds
    (default `retry_budget()`); raises StoreError when the store stays down. Nothing may be lost, so
    every store call of a sweep goes through here."""
    budget = retry_budget() if budget is None else budget
    deadline: float | None = None
    delay = 0.1
    while True:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not transient(e):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + budget
                if budget > 0 and not quiet:
                    _announce(e, budget)
            if now >= deadline:
                raise StoreError(f"the tracking store failed: {first_line(e)} (retried for {budget:.0f} s)") from e
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 5.0)
        else:
            if deadline is not None:
                _recovered()
            return out


def bound_http_client() -> None:
    """MLflow's HTTP client retries a dead server for minutes by default; one attempt per call here."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))


_clients: dict[str, MlflowClient] = {}


def get_client(uri: str | None = None) -> MlflowClient:
    """A client for the resolved URI. The first call on a new SQLite file creates its schema (~3 s);
    callers that fan out (sweeps) call this once in the driver before any trial starts."""
    uri = resolve_tracking_uri(uri)
    if uri not in _clients:
        bound_http_client()
        # MLflow logs a full SQLAlchemy traceback for every locked SQLite call; retry() says it in one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        client = MlflowClient(tracking_uri=uri)
        retry(lambda: client.search_experiments(max_results=1))  # runs migrations once, here
        _clients[uri] = client
    return _clients[uri]


CHECK_TIMEOUT_S = 3  # per request while checking: with the retries below, a check ends within ~13 s


def check_store(uri: str | None = None) -> MlflowClient:
    """The store, reachable, or StoreError at once (within ~15 s): a sweep checks this before it
    starts Ray, so a server that is down costs seconds and one line, not minutes and a traceback."""
    resolved = resolve_tracking_uri(uri)
    if resolved in _clients:
        return _clients[resolved]
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CHECK_TIMEOUT_S)
    try:
        probe = MlflowClient(tracking_uri=resolved)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        retry(lambda: probe.search_experiments(max_results=1), budget=8, quiet=True)
    except StoreError as e:
        raise StoreError(f"tracking store {resolved} is unreachable: {first_line(e.__cause__ or e)}") from None
    except MlflowException as e:
        raise StoreError(f"tracking store {resolved}: {first_line(e)}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return get_client(resolved)


def get_experiment_id(client: MlflowClient, name: str) -> str:
    exp = retry(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            retry(lambda: client.restore_experiment(exp.experiment_id))
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{safe_name(name)}" if root else None
    try:
        return retry(lambda: client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created concurrently by another process
        exp = retry(lambda: client.get_experiment_by_name(name))
        if exp is None:
            raise
        return exp.experiment_id


def safe_name(name: str) -> str:
    """A name as one path component: experiment names may hold '/', spaces, quotes, '..'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "_"


def quote(value: str) -> str | None:
    """`value` as a filter-string literal, or None when MLflow's parser cannot take it (it has no escape
    for a string holding both quote kinds); `search_tagged` then matches by LIKE and checks exactly."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def search_tagged(
    client: MlflowClient, experiment_ids: list[str], tags: dict[str, str], order_by: list[str] | None = None,
    max_results: int | None = None,
) -> list[Any]:
    """Runs whose tags equal `tags` exactly, however the values are quoted; reads retried, all pages."""
    clauses = []
    for k, v in tags.items():
        q = quote(v)
        like = v.replace("'", "_").replace('"', "_")  # `_` matches any one character
        clauses.append(f"tags.`{k}` = {q}" if q else f"tags.`{k}` LIKE '{like}'")
    runs: list[Any] = []
    token = None
    while True:
        page = retry(lambda t=token: client.search_runs(
            experiment_ids, " and ".join(clauses), order_by=order_by, max_results=1000, page_token=t))
        runs += [r for r in page if all(r.data.tags.get(k) == v for k, v in tags.items())]
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            break
    return runs[:max_results] if max_results else runs


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
        self.title = ""  # the learning curve's title: run name and condition (set by the sweep's hooks)

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

    def set_tags(self, tags: dict[str, Any], budget: float | None = None) -> None:
        if tags:
            batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            retry(lambda: self.client.log_batch(self.run_id, tags=batch), budget=budget)

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

    def try_artifact(self, what: str, write: Callable[[Path], None], budget: float = 10.0) -> bool:
        """Upload a file that `write(path)` draws, but never let it cost the run: any failure (drawing,
        an unwritable artifact location, a server that is down) becomes tag `rgsweep.warning.<what>`.
        Called after the run's status is final, so a failed upload never leaves a run RUNNING."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / what
                write(path)
                retry(lambda: self.client.log_artifact(self.run_id, str(path)), budget=budget)
            return True
        except Exception as e:  # noqa: BLE001 - whatever broke, the run's numbers and status are kept
            try:
                self.set_tags({f"{TAG}warning.{what}": f"not uploaded: {first_line(e)}"}, budget=budget)
            except Exception:  # noqa: BLE001 - the store is down too: the run is already terminal
                pass
            return False

    def log_learning_curve(self, history: list[dict[str, float]] | None = None) -> None:
        history = history if history is not None else self.history
        if history:
            self.try_artifact("learning_curve.png", lambda path: plot_learning_curve(history, path, self.title))

    def finish(self, status: str = "FINISHED", budget: float | None = None) -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status), budget=budget)

    def fail(self, error: str, diverged: bool = False) -> None:
        tags: dict[str, Any] = {TAG + "error": error[-4000:]}
        if diverged:
            tags[TAG + "diverged"] = "true"
        self.set_tags(tags)
        self.finish("FAILED")


def learning_curve_figure(history: list[dict[str, float]], title: str = "") -> Any:
    """Loss and accuracy against epochs (a matplotlib Figure, built without pyplot's global state). The
    subsets of the training set whose labels were kept / changed get their own colour and dash, so
    memorisation (the changed ones fitted last) reads at a glance."""
    from matplotlib.figure import Figure

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = Figure(figsize=(9, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    # Fixed margins rather than tight_layout, which measures every tick label: the plot is drawn in the
    # sweep driver once per trial, and this halves it (0.6 -> 0.3 s).
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.86 if title else 0.95, wspace=0.25)
    if title:
        fig.suptitle(title, fontsize=10)

    # Each curve through the epochs that measured it: test metrics exist only on the epochs that
    # evaluated the test set (`eval_every`), and NaN gaps would break the line into invisible points.
    def curve(ax, key, style, label):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        if pts:
            ax.plot(*zip(*pts), style, label=label, marker="." if len(pts) < len(history) else None)

    for key, style in (("train_loss", "C0-"), ("test_loss", "C1-")):
        curve(ax1, key, style, key)
    curves = (("train_acc", "C0-", "train_acc (labels trained on)"), ("test_acc", "C1-", "test_acc"),
              ("train_acc_clean", "C2--", "train, labels kept"), ("train_acc_noisy", "C3:", "train, labels changed"))
    for key, style, label in curves:
        curve(ax2, key, style, label)
    ax1.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return fig


def plot_learning_curve(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    learning_curve_figure(history, title).savefig(path, dpi=80)


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
        page = retry(lambda t=token: client.search_runs(
            [experiment_id], " and ".join(filt), max_results=1000, page_token=t))
        runs.extend(page)
        token = page.token
        if not token:
            break
    if statuses is not None:
        wanted = set(statuses)
        runs = [r for r in runs if r.info.status in wanted]
    return runs


# -- trial runs -----------------------------------------------------------------------------------
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
    """Tags the trial itself learns: where it ran (device and its kind, Ray node id) and on what data."""
    keys = ("device", "device_kind", "ray_node", "dataset_fingerprint", "torch_version", "num_params", "stop_reason")
    return {TAG + k: str(summary[k]) for k in keys if summary.get(k) is not None}


def finish_trial(tracker: RunTracker, summary: dict[str, Any], error: str | None = None,
                 diverged: bool = False, tags: dict[str, Any] | None = None) -> None:
    """Summary metrics, info tags, the final status, then the learning curve: the status is written
    before any artifact, so a failed upload (a warning tag) never leaves a finished trial RUNNING. The
    `final_*` copies of the series' last values stay out (rgsweep/metrics.py says why)."""
    tracker.set_tags({**info_tags(summary), **(tags or {})})
    tracker.log_metrics({k: v for k, v in summary.items() if k != "last_epoch" and k not in FINAL_FROM_SERIES})
    if error is not None or diverged:
        tracker.fail(error or "diverged: training loss is not finite", diverged=diverged)
    else:
        tracker.finish("FINISHED")
    tracker.log_learning_curve()


# -- the UI: what MLflow 3.17's UI reads, set by rgsweep ------------------------------------------
# Each of these was checked in the UI (tests/test_browser.py drives it): `mlflow.runColor` colours a run's
# row and its chart lines; dataset inputs fill the Dataset column and its filter; `mlflow.source.*` fill
# Source; `mlflow.user` fills User; `mlflow.note.content` (Markdown) is the description on a run's or an
# experiment's page.
NOTE = "mlflow.note.content"
NOTE_MAX = 8000  # MLflow's limit on a run tag's value
PARENT_COLOR = "#3b3b3b"  # dark grey: the architectures' colours stand out beside it


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def source_tags(source: str) -> dict[str, str]:
    """Source column (the sweep or tuning file, shown by its file name), user and commit."""
    return {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.user": _user(),
            "mlflow.source.git.commit": git_commit()}


def ui_trial_tags(config: Any, source: str) -> dict[str, str]:
    """What a child run shows in the runs table beyond its params: its architecture's colour and its source."""
    return {"mlflow.runColor": arch_color(config.arch), **source_tags(source)}


def fit_note(note: str, limit: int = NOTE_MAX) -> str:
    """A note within MLflow's tag limit: cut at a line boundary, saying where the rest is."""
    if len(note) <= limit:
        return note
    tail = "\n\n_(cut to fit MLflow's description limit: the full table is in the artifacts, report/results.md)_"
    return note[: note.rfind("\n", 0, limit - len(tail))] + tail


def set_note(client: MlflowClient, run_id: str, markdown: str) -> None:
    retry(lambda: client.set_tag(run_id, NOTE, fit_note(markdown)))


def set_experiment_note(client: MlflowClient, experiment_id: str, markdown: str) -> None:
    if markdown.strip():
        retry(lambda: client.set_experiment_tag(experiment_id, NOTE, markdown[:20000]))


def condition(config: Any) -> str:
    """What was done to a trial, for people: 'cnn, noise 1.0, clean' (plus regularizers when set)."""
    parts = [config.arch, f"noise {float(config.label_noise)}",
             "clean" if config.corruption == "none" else config.corruption.replace("_", " ")]
    if config.corruption != "none" and config.corrupt_fraction < 1:
        parts[-1] += f" ({config.corrupt_fraction:g} of images)"
    if config.augment:
        parts.append("+".join(config.augment))
    if config.weight_decay:
        parts.append(f"wd {config.weight_decay:g}")
    if config.dropout:
        parts.append(f"dropout {config.dropout:g}")
    return ", ".join(parts)


def describe_trial(config: Any, summary: dict[str, Any], error: str | None = None) -> str:
    """A child run's one-line description: 'cnn, noise 1.0, clean: train 1.00 / test 0.12 / gap 0.88,
    fitted in 77 epochs'."""
    head = condition(config)
    why = f": {error.strip().splitlines()[-1]}" if error and error.strip() else ""
    if "final_train_acc" not in summary:
        return f"{head}: failed before its first epoch ended{why}"
    s = summary
    acc = f"train {s['final_train_acc']:.2f} / test {s['final_test_acc']:.2f} / gap {s['final_gen_gap']:.2f}"
    reason, run = s.get("stop_reason"), s.get("epochs_run")
    if s.get("fitted"):
        end = f"fitted in {s['epochs_to_fit']} epochs"
    elif reason == "diverged":
        end = f"diverged at epoch {run}"
    elif reason == "early_stopping":
        end = f"stopped early at epoch {run}, not fitted"
    elif error:
        end = f"failed at epoch {run}{why}"
    else:
        end = f"not fitted in {run} epochs"
    return f"{head}: {acc}, {end}"


def log_dataset_inputs(client: MlflowClient, run_id: str, config: Any, fingerprint: str) -> None:
    """The trial's train and test data as MLflow dataset inputs (the Dataset column and its filter).

    MLflow keeps one input per (name, digest) and run, so the two splits are named apart (`digits/train`,
    `digits/test`), each with its context; the digest of both is the dataset's fingerprint. A dataset
    entity is shared by every run of the experiment (its first run's profile stays), so what this trial
    did to the data goes in the input's own tags (`rgsweep.label_noise`, `rgsweep.corruption`)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    name = config.dataset if not str(config.dataset).startswith("imagefolder:") else \
        "imagefolder:" + Path(str(config.dataset)[len("imagefolder:"):]).name
    source = json.dumps({"uri": str(config.data_dir or config.dataset)})
    pixels = {TAG + "corruption": config.corruption}
    splits = {"train": {TAG + "label_noise": str(config.label_noise), **pixels}, "test": pixels}
    inputs = [
        DatasetInput(Dataset(f"{name}/{split}", fingerprint[:36], "local", source),
                     [InputTag("mlflow.data.context", split), *(InputTag(k, v) for k, v in extra.items())])
        for split, extra in splits.items()
    ]
    retry(lambda: client.log_inputs(run_id, datasets=inputs))


def annotate_trial(tracker: RunTracker, config: Any, summary: dict[str, Any], error: str | None = None) -> None:
    """A child's description and dataset inputs, from its summary (before finish_trial closes it)."""
    set_note(tracker.client, tracker.run_id, describe_trial(config, summary, error))
    if summary.get("dataset_fingerprint"):
        log_dataset_inputs(tracker.client, tracker.run_id, config, str(summary["dataset_fingerprint"]))


def log_parent_page(client: MlflowClient, run_id: str, folder: Path, note: str,
                    metrics: list[tuple[str, float, int]], tags: dict[str, str]) -> None:
    """A sweep's page on its parent run (rgsweep/analysis/page.py builds it): the folder's files as
    artifacts under report/, summary metrics at their steps, tags, and the description last."""
    retry(lambda: client.log_artifacts(run_id, str(folder), "report"))
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, int(step)) for k, v, step in metrics if math.isfinite(v)]
    for i in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
        retry(lambda chunk=batch[i : i + 1000]: client.log_batch(run_id, metrics=chunk))
    if tags:
        retry(lambda: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
    set_note(client, run_id, note)


# -- addresses ------------------------------------------------------------------------------------
def server_base(uri: str) -> str | None:
    """The tracking server's own address when the store is a server (its UI lives there too), else None."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def runs_url(base: str, experiment_id: str) -> str:
    """An experiment's runs table in the training view. MLflow 3.17 opens an experiment on a GenAI overview
    of traces; the runs tab plus `workflowType=machine_learning` (read by the UI's router, after the `#`)
    opens the runs table with the training navigation."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# -- the lease: which driver owns a sweep ---------------------------------------------------------
# Tags on the parent run (see rgsweep/lifecycle.py for the rules): who holds it, where, and when it
# last said it was alive. Written and read here, like every other MLflow call.
LEASE_KEYS = ("holder", "host", "pid", "heartbeat", "state")


def lease_tags(lease: dict[str, Any]) -> dict[str, str]:
    return {f"{TAG}lease.{k}": str(lease[k]) for k in LEASE_KEYS if k in lease}


def read_lease(client: MlflowClient, run_id: str, budget: float | None = None) -> dict[str, str]:
    tags = retry(lambda: client.get_run(run_id), budget=budget).data.tags
    return {k: tags[f"{TAG}lease.{k}"] for k in LEASE_KEYS if f"{TAG}lease.{k}" in tags}


def write_lease(client: MlflowClient, run_id: str, lease: dict[str, Any], budget: float | None = None) -> None:
    RunTracker(client, run_id).set_tags(lease_tags(lease), budget=budget)


def latest_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Any | None:
    """The newest parent run with these tags (a sweep's or a study's), or None."""
    runs = search_tagged(client, [experiment_id], tags, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def reopen(client: MlflowClient, run_id: str) -> RunTracker:
    retry(lambda: client.update_run(run_id, status="RUNNING"))
    return RunTracker(client, run_id)
