"""The one module that imports Ray. Ray renamed its API several times (ray.air, ray.train, ray.tune);
when it moves again, only this file changes.

- `start_ray(address)`: join a cluster (`RAY_ADDRESS` or `--ray-address`) or start a local instance.
- `run_trials(...)`: a `tune.Tuner` over a list of trial payloads (grid) or a search algorithm (Optuna),
  with per-trial resources, a storage path, and our MLflow callback.
- `OptunaSearcher`, `asha(...)`: Optuna's sampler and ASHA pruning for per-epoch trials (tune.py).
- `report(metrics)`: what a trainable calls once per epoch.
- `put_datasets(...)` / `get_dataset(handle)`: the driver's decoded datasets through the object store
  (run_trials(datasets=...) does the put; a trainable gets its one).
- `TrackingCallback(hooks)`: a `tune.Callback` that calls `hooks` with plain ids and dicts, so the MLflow
  logic (sweep.py, tune.py) never touches Ray's Trial objects; it tells a lost worker or node
  (`is_infrastructure`) from an error raised by the trial's code.
- What a run prints: by default no Ray status table, only rgsweep's own progress line
  (`rgsweep.progress`, fed by the same trial events); `verbose` brings back Ray's table.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import optuna
import ray
import ray.exceptions
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from rgsweep.data.sources import Dataset

log = logging.getLogger(__name__)


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect to Ray; returns True when this call started it (so the caller should stop it).

    With an address (`--ray-address`, else `$RAY_ADDRESS`) the sweep joins that cluster. Without one it
    starts its own instance: `address="local"`. A bare `ray.init()` would instead join the latest cluster
    any `ray start` left on the machine (Ray reads it from /tmp/ray/ray_current_cluster), so a sweep
    could silently run on someone else's cluster, with its resources and its data.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    warnings.filterwarnings("ignore", module="ray")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return True


def node_id() -> str:
    """The Ray node this process runs on (tagged on each trial run: which node of a cluster trained it)."""
    return ray.get_runtime_context().get_node_id()


def stop_ray(started: bool) -> None:
    if started and ray.is_initialized():
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    return dict(ray.cluster_resources())


def report(metrics: dict[str, Any]) -> None:
    """Per-epoch report from inside a trial."""
    tune.report(metrics)


# Errors that mean a trial's process or node was lost, not that its code raised: retried by Ray
# (FailureConfig), then recorded as infrastructure failures that a plain --resume runs again.
INFRA_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError, ray.exceptions.LocalRayletDiedError,
    ray.exceptions.RaySystemError,
)


def is_infrastructure(exc: BaseException | None) -> bool:
    """A dead actor or worker, a lost node or object; a RayTaskError counts when its cause is one."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        exc = exc.as_instanceof_cause()
    return isinstance(exc, INFRA_ERRORS)


def trial_failure(trial: Any) -> tuple[str, bool]:
    """(error text, whether it is an infrastructure failure) of a trial Tune just saw fail. The exception
    is pickled beside the trial's local state when Tune handles it; its text file is the fallback."""
    exc = None
    path = trial.pickled_error_file
    if path and os.path.exists(path):
        try:
            exc = cloudpickle.loads(Path(path).read_bytes())
        except Exception:  # noqa: BLE001 - an unpicklable cause: the text says enough
            exc = None
    text = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    if not text and trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text(errors="replace")
    return text or "trial raised an error", is_infrastructure(exc)


class TrackingCallback(tune.Callback):
    """Translates Tune's trial events into plain calls on `hooks` (ids and dicts), so the MLflow logic
    (sweep.py, tune.py) never touches Ray's Trial objects: trial_started(id, config),
    trial_result(id, result), trial_completed(id), trial_errored(id, error, infrastructure),
    trial_retried(id, error) (a lost attempt Ray is about to run again)."""

    def __init__(self, hooks: Any):
        self.hooks = hooks

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state (never restored: rgsweep resumes from MLflow);
        # the hooks hold MLflow clients and this process's stderr, which do not pickle.
        return {"hooks": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.hooks is not None:
            self.hooks.trial_started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.hooks is not None:
            self.hooks.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.hooks is not None:
            self.hooks.trial_completed(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.hooks is not None:
            error, infra = trial_failure(trial)
            self.hooks.trial_errored(trial.trial_id, error, infra)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.hooks is not None:
            self.hooks.trial_retried(trial.trial_id, trial_failure(trial)[0])


class _StopAll(tune.Stopper):
    """Stops every trial once `should_stop()` is true (a signal, the store down, the lease lost)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return bool(self.should_stop())


class _Forward(TrackingCallback):
    """Trial events to a plain object (the progress line), plus `tick` on every step of Tune's loop."""

    def on_step_end(self, iteration, trials, **info):
        if self.hooks is not None:
            self.hooks.tick()


class _DropSlowWarnings(logging.Filter):
    """Tune warns when a step takes over 0.5 s ("... may be a performance bottleneck"): our driver callback
    writes a trial's end to MLflow (summary, learning-curve PNG), which takes that long by design, so on a
    busy machine every trial end printed four such lines. Kept with `verbose`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "may be a performance bottleneck" not in record.getMessage()


_SLOW_WARNING_LOGGERS = ("ray.tune.utils.util", "ray.tune.execution.tune_controller")


def _set_filter(names: tuple[str, ...], kind: type[logging.Filter], on: bool) -> None:
    """One filter of `kind` on each named logger when `on`, none otherwise (calls repeat per sweep)."""
    for name in names:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, kind)]:
            logger.removeFilter(f)
        if on:
            logger.addFilter(kind())


class _DropUnwrittenResultFiles(logging.Filter):
    """With Tune's loggers off, `Tuner.fit` ends by looking for each trial's result.json/progress.csv to
    build a results table rgsweep never reads, and warns "Failed to fetch metrics for N trial(s)"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to fetch metrics for" not in record.getMessage()


def _tune_loggers() -> None:
    """Ray Tune's own per-trial loggers (result.json, progress.csv, TensorBoard events) copy what MLflow
    holds. With them on, a Ctrl-C'd sweep once printed Ray's "Saving experiment state to storage ... failed"
    traceback (CI, 3a0b290; Ray copies its session folder, these files included, to the storage path:
    the likely cause, not proven). Off by default; TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings them back."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    _set_filter(("ray.tune.analysis.experiment_analysis",), _DropUnwrittenResultFiles,
                os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1")


def run_trials(
    trainable: Callable[[dict[str, Any]], Any],
    *,
    name: str,
    storage_path: str | Path,
    resources: dict[str, float],
    callbacks: list[tune.Callback],
    payloads: dict[str, dict[str, Any]] | None = None,
    param_space: dict[str, Any] | None = None,
    search_alg: Any = None,
    scheduler: Any = None,
    num_samples: int = 1,
    max_concurrent: int | None = None,
    metric: str | None = None,
    mode: str | None = None,
    verbose: int = 0,
    parameters: dict[str, Any] | None = None,
    parameter_columns: list[str] | None = None,
    datasets: dict[str, Dataset] | None = None,
    progress: Any = None,
    retries: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run trials on Ray Tune. Never raises for a failed trial (failures are recorded by the callback).

    `datasets` (data key -> Dataset, loaded by the driver) go into the object store once; the trainable
    receives `datasets=` {data key: handle} and calls `get_dataset(handle)` for the one it trains on.
    `progress` (a `rgsweep.progress.Progress`) receives the trial events and is closed at the end.
    `verbose` 0: Ray prints no status table (Tune's verbosity 0); 1: Ray's table as well.
    A trial whose process dies is run again up to `retries` times (trainables catch their own errors,
    so what reaches Ray's FailureConfig is infrastructure). Signals are the caller's (lifecycle.py):
    Tune's own SIGINT handler is off, and `should_stop()` ends the run."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Ray's classic reporter: a compact table every 30 s with the epoch metrics that matter, instead
    # of the new engine's per-trial boxes (which bury the table on sweeps of hundreds of trials).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    _set_filter(_SLOW_WARNING_LOGGERS, _DropSlowWarnings, not verbose)
    _tune_loggers()
    if progress is not None:
        callbacks = [*callbacks, _Forward(progress)]
    reporter = tune.CLIReporter(
        parameter_columns=parameter_columns or ["trial"],
        metric_columns={"epoch": "epoch", "train_acc": "train", "test_acc": "test", "val_acc": "val"},
        max_report_frequency=30,
        max_column_length=48,
        sort_by_metric=False,
    )
    shared = dict(parameters or {})
    if datasets is not None:
        shared["datasets"] = put_datasets(datasets)
    if payloads is not None:
        # Ray's table shows the readable names; the payloads travel once, in the object store.
        param_space = {"trial": tune.grid_search(list(payloads))}
        shared["payloads"] = payloads
    if shared:
        trainable = tune.with_parameters(trainable, **shared)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space or {},
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=max_concurrent, metric=metric, mode=mode,
            reuse_actors=True,  # keeps worker processes (and their torch import) across trials
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()) if "://" not in str(storage_path) else str(storage_path),
            callbacks=callbacks,
            stop=_StopAll(should_stop) if should_stop is not None else None,
            failure_config=tune.FailureConfig(max_failures=retries, fail_fast=False),
            verbose=verbose,
            progress_reporter=reporter if verbose else None,
        ),
    )
    try:
        tuner.fit()  # outcomes are read from MLflow, which the callback keeps; Ray's own view is not needed
    finally:
        if progress is not None:
            progress.close()


def put_datasets(datasets: dict[str, Dataset]) -> dict[str, dict[str, Any]]:
    """Each dataset's uint8/int64 arrays into the object store, each array once (two subsets of one dataset
    share its test split). Returns small handles (names, classes, fingerprint, object refs) that travel
    with the trials; the arrays move only to the nodes whose trials read them."""
    refs: dict[int, ray.ObjectRef] = {}  # id(tensor) -> its ref; the tensors live as long as `datasets`
    handles = {}
    for key, ds in datasets.items():
        arrays = {}
        for name, array in ds.arrays().items():
            t = getattr(ds, name)
            if id(t) not in refs:
                refs[id(t)] = ray.put(array)
            arrays[name] = refs[id(t)]
        handles[key] = {"name": ds.name, "classes": list(ds.classes), "fingerprint": ds.fingerprint(),
                        "arrays": arrays}
    return handles


def get_dataset(handle: dict[str, Any]) -> Dataset:
    """A trial's dataset from the object store. The arrays reach a node once (the driver's node holds them
    already); trials on that node then read them in place: zero-copy, read-only memory they all share."""
    names = list(handle["arrays"])
    arrays = dict(zip(names, ray.get([handle["arrays"][n] for n in names])))
    return Dataset.from_arrays(handle["name"], arrays, handle["classes"], handle["fingerprint"])


def trial_resources() -> dict[str, float]:
    """Resources granted to the current trial (for thread counts)."""
    try:
        res = tune.get_context().get_trial_resources()
        return dict(res.required_resources)
    except Exception:
        return {}


# -- Optuna on Ray Tune ---------------------------------------------------------------------------
class OptunaSearcher(OptunaSearch):
    """Ray's OptunaSearch for trials that report once per epoch and end with a summary result.

    Three changes to the stock searcher (which already creates the study with `load_if_exists=True`,
    so a second run with the same storage and study name adds trials to the same study):
    - intermediate values are reported at step `result[step_key]` (the epoch, as MLflow's steps), not at
      Ray's `training_iteration`, and the summary result (`final_key`) is not an epoch;
    - a trial that completes without its summary result was stopped by the scheduler: it is told to
      Optuna as PRUNED, with the value of the epoch it was stopped at as its last intermediate value
      (Tune does not pass that result to `on_trial_result`). The stock searcher tells it COMPLETE with
      that early value, which TPE would then take for a full-budget result;
    - a summary with `failed_key` set (a diverged trial), or an errored trial, is FAIL.
    Its attributes are plain values, so Tune can pickle it into its experiment state.
    """

    def __init__(self, *args: Any, step_key: str = "epoch", final_key: str, failed_key: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._step_key = step_key
        self._final_key = final_key
        self._failed_key = failed_key
        self._last_step: dict[str, int] = {}  # Ray trial id -> last step reported to Optuna

    def own_trials(self) -> set[int]:
        """Numbers of the Optuna trials this searcher asked for (this driver's, not another's)."""
        return {t.number for t in self._ot_trials.values()}

    def trial_number(self, trial_id: str) -> int | None:
        """Optuna's trial number for a Ray trial (known from the moment the trial is suggested)."""
        t = self._ot_trials.get(trial_id)
        return None if t is None else t.number

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        value, step = result.get(self.metric), result.get(self._step_key)
        if value is None or step is None or self._last_step.get(trial_id) == int(step):
            return
        self._ot_trials[trial_id].report(float(value), int(step))
        self._last_step[trial_id] = int(step)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or self._final_key in result:
            return
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        value = result.get(self.metric)
        state = optuna.trial.TrialState.COMPLETE
        if error or result.get(self._failed_key) or (
            self._final_key in result and (value is None or not math.isfinite(value))
        ):
            state, value = optuna.trial.TrialState.FAIL, None
        elif self._final_key not in result:
            if result:
                self._report(trial_id, result)
            state, value = optuna.trial.TrialState.PRUNED, None
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)


def asha(metric: str, mode: str, epochs: int, grace_period: int, reduction_factor: float,
         time_attr: str = "epoch") -> ASHAScheduler:
    """ASHA on per-epoch results. Its rungs lie strictly before the last epoch (max_t = epochs - 1) and it
    never stops a trial for reaching max_t: a trial that gets to its last epoch ends by itself and sends
    its summary, so every stop ASHA makes is a real prune."""
    return ASHAScheduler(
        time_attr=time_attr, metric=metric, mode=mode, max_t=max(1, epochs - 1), grace_period=grace_period,
        reduction_factor=reduction_factor, stop_last_trials=False,
    )
