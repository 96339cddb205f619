"""Optuna tunes the baseline (nuisance) hyperparameters; every trial runs on Ray Tune and is an MLflow run.

Tuning file (sweeps/tune-*.yaml; checked and resolved to a plan by tunefile.py):

    name: tune-demo                 # the Optuna study's name; also the default MLflow experiment
    experiment: tune-demo           # optional
    base: {dataset: digits, arch: mlp1x512, epochs: 40, val_fraction: 0.2}   # a TrialConfig
    space:                          # TrialConfig keys -> distributions
      lr: {type: float, low: 1.0e-3, high: 0.3, log: true}
      momentum: {type: float, low: 0.5, high: 0.99}
      lr_step: {type: int, low: 5, high: 50, step: 5}
      batch_size: {type: categorical, choices: [32, 64, 128, 256]}
    objective: {metric: val_acc, mode: max}     # val_acc | val_loss; never a test metric
    n_trials: 16                    # trials per invocation (--resume adds this many more)
    max_concurrent: 2
    resources: {cpu: 1, gpu: 0}     # per trial, as in sweep files
    pruning: {enabled: true, grace_period: 5, reduction_factor: 3}   # ASHA on per-epoch val_acc
    seed: 0                         # the TPE sampler's seed
    startup_trials: 10              # random trials before TPE models the results
    smoke: {epochs: 2, n_trials: 2} # --smoke: tiny variant (TrialConfig keys, plus n_trials)

The objective is measured on a validation split held out from the *clean* training set
(`val_fraction`, 0.1 when the base does not set it); the test set never reaches Optuna or ASHA.
Test metrics are still logged to MLflow, where they belong to the analysis, not to the search.

How a study runs: Optuna's TPE sampler (seeded) proposes trials through Ray Tune's OptunaSearch;
ASHA stops trials whose per-epoch `val_acc` falls behind at its rungs (grace_period, grace_period *
reduction_factor, ... epochs). The study lives in an Optuna RDB storage beside the MLflow store
(`mlruns/optuna.db` by default, `--storage` to change), so `--resume` adds trials to the same study
and `optuna-dashboard sqlite:///.../mlruns/optuna.db` opens it. A second run without `--resume` is
refused (exit 2) rather than mixing two searches; `--restart` deletes the study and starts over (its
MLflow runs stay). `--smoke` uses its own throwaway study, `<name>-smoke`.

MLflow (every write in this driver process, as for grid sweeps):
- a parent run per study (tags rgsweep.kind=tune, rgsweep.sweep=<name>, optuna.study, optuna.storage;
  params: the search space, objective, pruning and sampler settings; the tuning file as an artifact);
  at the end metrics best_value, n_trials, n_complete, n_pruned, n_failed (over the whole study, step =
  its trial count), tags `best.<key>` and the artifact best_params.yaml. `--resume` reopens it.
- a child run per Optuna trial (tags rgsweep.kind=trial like grid trials, optuna.trial_number,
  optuna.state = complete | pruned | failed; params: the full TrialConfig; per-epoch metrics).
  A trial pruned by ASHA is a normal outcome of the search, so its run ends FINISHED with
  optuna.state=pruned and rgsweep.stop_reason=pruned (KILLED is kept for interrupted trials);
  a diverged or crashed trial is FAILED with optuna.state=failed. No run is left RUNNING.

Hand-off: the best trial's values of the searched keys are written to `baselines/<name>.yaml` beside the
MLflow store (mlruns/baselines/ by default, never the sources: `make tune` leaves git clean;
`--baseline-out` to change) as `{name, source: {study, storage, best_value, n_trials, trial_number,
date}, params: {...}}`, with the storage and tuning file as the user gave them (no machine's absolute
paths). A grid sweep file that says `baseline: <path>` starts every trial from those values (its own
`base` and grid keys override them); `rgsweep sweep FILE --baseline <path>` does the same for one run.

How the study starts, holds its lease (a second driver is refused before any trial is marked FAIL)
and ends on every path is rgsweep/lifecycle.py's job, shared with grid sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import yaml

from rgsweep import lifecycle, tracking
from rgsweep.config import ConfigError, TrialConfig
from rgsweep.lifecycle import EPOCH_KEYS, default_storage, fit_resources, ui_hint
from rgsweep.preload import SweepData, preload
from rgsweep.progress import Progress
from rgsweep.stores import given_uri, sqlite_file
from rgsweep.trials import FAILED_KEY, SUMMARY_KEY, study_trainable, trial_config
from rgsweep.tunefile import TuningPlan, baseline_path, default_optuna_storage


# -- MLflow from the driver -----------------------------------------------------------------------
class StudyTracker:
    """The study's parent run and a child run per Optuna trial; every write happens in the driver. It is
    the study's lifecycle job (see lifecycle.Job): find_parent, open, launch, the Ray hooks, close."""

    command = "tune"

    def __init__(self, plan: TuningPlan, storage_url: str, resume: bool = False, restart: bool = False,
                 launch: dict[str, Any] | None = None, baseline_out: str | Path | None = None):
        self.plan = plan
        self.name = plan.study
        self.storage_url = storage_url  # as the user gave it (recorded so); opened resolved
        self.storage = open_storage(storage_url)
        self.resume = resume and not plan.smoke  # a smoke study is throwaway: always a new one
        self.restart = restart
        self.launch_args = launch or {}
        self.baseline_out = baseline_out
        self.client: Any = None
        self.uri = ""
        self.exp_id = ""
        self.parent: tracking.RunTracker | None = None
        self.n_before = 0
        self.searcher: Any = None
        self.runs: dict[str, tracking.RunTracker] = {}  # Ray trial id -> open child run
        self.configs: dict[str, TrialConfig] = {}  # Ray trial id -> its config (for its description)
        self.started: dict[str, float] = {}  # Ray trial id -> when it started (a pruned trial's cost)
        self.resources: dict[str, float] = {"cpu": 1.0, "gpu": 0.0}  # per trial, set once Ray is up
        self.device_kind = ""  # as the last trial that ended by itself reported it
        self.last_epoch: dict[str, int] = {}
        self.trial_number: Any = lambda ray_id: None  # set to the searcher's lookup before trials start
        self.base = plan.base.model_dump()
        self.stats: dict[str, Any] = {}

    # -- the lifecycle job
    def find_parent(self, client: Any) -> Any | None:
        self.client = client
        self.uri = client.tracking_uri
        self.exp_id = tracking.get_experiment_id(client, self.plan.experiment)
        return tracking.latest_parent(client, self.exp_id, {"rgsweep.kind": "tune", "optuna.study": self.plan.study})

    def open(self, lease: lifecycle.Lease) -> bool:
        """Prepare the study and the parent run under `lease`. A live driver of this study was refused
        before this point, so ending a dead driver's RUNNING trials as FAIL touches nobody's work."""
        parent = self.find_parent(self.client)
        if parent is not None and (self.resume or parent.info.status == "RUNNING"):
            lease.take(f"tune {self.name!r}", parent)
            self.close_dead(parent.info.run_id)
            if not self.resume:  # a dead driver's parent, not resumed
                tracking.RunTracker(self.client, parent.info.run_id).finish("KILLED")
        self.n_before = prepare_study(self.plan, self.storage, self.storage_url, self.resume, self.restart)
        if parent is not None and self.resume:
            self.parent = tracking.reopen(self.client, parent.info.run_id)
        else:
            self.parent = self.start_parent(lease)
        print(f"tune {self.plan.study!r}: {self.plan.n_trials} trials to add to a study of {self.n_before} "
              f"(objective {self.plan.metric} {self.plan.mode}, pruning rungs {self.plan.rungs() or 'off'}; "
              f"parent run {self.parent.run_id}, experiment {self.plan.experiment!r}; storage {self.storage_url})",
              flush=True)
        return True

    def start_parent(self, lease: lifecycle.Lease) -> tracking.RunTracker:
        spec, plan = self.plan.spec, self.plan
        params = {f"space.{k}": p.describe() for k, p in plan.space.items()}
        params.update({
            "objective": f"{plan.metric} ({plan.mode})",
            "pruning": (f"asha grace_period={plan.grace_period} reduction_factor={spec.pruning.reduction_factor:g}"
                        f" rungs={plan.rungs()}" if plan.grace_period else "none"),
            "sampler": f"tpe seed={spec.seed} startup_trials={spec.startup_trials}",
            "tuning_file": str(plan.path), "study": plan.study, "storage": self.storage_url,
        })
        tags = {"rgsweep.kind": "tune", "rgsweep.sweep": spec.name, "rgsweep.swept": ",".join(plan.space),
                "rgsweep.git_commit": tracking.git_commit(), "optuna.study": plan.study,
                "optuna.storage": self.storage_url, **lease.tags(), **tracking.source_tags(str(plan.path)),
                "mlflow.runColor": tracking.PARENT_COLOR,
                tracking.NOTE: f"Study `{plan.study}` running: {plan.n_trials} trials to add. "
                               "The results table and figures appear here when it ends."}
        if plan.smoke:
            tags["rgsweep.smoke"] = "true"
        parent = tracking.RunTracker.start(self.client, self.exp_id, f"tune-{plan.study}", params=params, tags=tags)
        lease.hold(parent.run_id)
        parent.try_artifact(plan.path.name, lambda path: path.write_bytes(plan.path.read_bytes()))
        tracking.set_experiment_note(self.client, self.exp_id, spec.description)
        return parent

    def close_dead(self, parent_id: str) -> None:
        for run in tracking.search_children(self.client, self.exp_id, parent_id, statuses=["RUNNING"]):
            stale = tracking.RunTracker(self.client, run.info.run_id)  # its driver died
            stale.set_tags({"optuna.state": "failed", "rgsweep.stop_reason": "driver_lost"})
            stale.finish("KILLED")

    def launch(self, callback: Any, should_stop: Any, folder: str) -> None:
        from rgsweep import raytune

        plan, a = self.plan, self.launch_args
        # A resumed study gets a new sampler seed: the same seed would replay the same random startup trials.
        sampler = optuna.samplers.TPESampler(seed=plan.spec.seed + self.n_before,
                                             n_startup_trials=plan.spec.startup_trials)
        self.searcher = raytune.OptunaSearcher(
            space=plan.distributions(), metric=plan.metric, mode=plan.mode, sampler=sampler,
            study_name=plan.study, storage=self.storage, step_key="epoch", final_key=SUMMARY_KEY,
            failed_key=FAILED_KEY,
        )
        self.trial_number = self.searcher.trial_number
        scheduler = None
        if plan.grace_period:
            scheduler = raytune.asha(plan.metric, plan.mode, plan.base.epochs, plan.grace_period,
                                     plan.spec.pruning.reduction_factor)
        res = plan.spec.resources
        resources = self.resources = fit_resources({"cpu": res.cpu, "gpu": res.gpu}, raytune.cluster_resources())
        raytune.run_trials(
            study_trainable, name=folder,
            storage_path=a.get("storage_path") or os.environ.get("RGSWEEP_STORAGE") or default_storage(self.uri),
            resources=resources, callbacks=[callback], search_alg=self.searcher, scheduler=scheduler,
            num_samples=plan.n_trials, max_concurrent=a.get("max_concurrent") or plan.spec.max_concurrent,
            parameters={"base": self.base}, parameter_columns=list(plan.space), verbose=a.get("verbose", 0),
            datasets=a["data"].select([plan.base]),
            progress=tune_progress(plan, self.searcher.trial_number, a.get("verbose", 0)),
            retries=plan.spec.retries, should_stop=should_stop,
        )

    def resume_hint(self) -> str:
        return f"rgsweep tune {self.plan.path} --resume"

    # -- Ray callback hooks (called in the driver)
    def trial_started(self, ray_id: str, params: dict[str, Any]) -> None:
        cfg = trial_config(self.base, params)
        number = self.trial_number(ray_id)
        tags = tracking.trial_tags(cfg, sweep=self.plan.spec.name)
        tags.update({"rgsweep.ray_trial_id": ray_id, "optuna.study": self.plan.study,
                     "optuna.trial_number": str(number)})
        name = f"{cfg.arch}-trial{number:03d}" if number is not None else f"{cfg.arch}-{ray_id}"
        tags.update(tracking.ui_trial_tags(cfg, str(self.plan.path)))
        self.runs[ray_id] = tracking.RunTracker.start(
            self.client, self.exp_id, name, params=cfg.flat_params(), tags=tags, parent_run_id=self.parent.run_id,
        )
        self.runs[ray_id].title = f"{name} ({tracking.condition(cfg)})"
        self.configs[ray_id] = cfg
        self.started[ray_id] = time.monotonic()

    def trial_result(self, ray_id: str, result: dict[str, Any]) -> None:
        run = self.runs.get(ray_id)
        if run is None:
            return
        if SUMMARY_KEY in result:
            summary = json.loads(result[SUMMARY_KEY])
            status, error = summary.pop("status"), summary.pop("error", None)
            run.set_tags({"optuna.state": "complete" if status == "complete" else "failed"})
            failure = {"rgsweep.failure": "trial"} if status != "complete" else {}
            tracking.annotate_trial(run, self.configs[ray_id], summary, error)
            self.device_kind = summary.get("device_kind", self.device_kind)
            tracking.finish_trial(run, summary, error=error, diverged=status == "diverged", tags=failure)
            del self.runs[ray_id]
        elif "epoch" in result:
            run.log_epoch({k: result[k] for k in result if k in EPOCH_KEYS})
            self.last_epoch[ray_id] = int(result["epoch"])

    def trial_completed(self, ray_id: str) -> None:
        run = self.runs.pop(ray_id, None)
        if run is None:  # ended with its summary
            return
        # Completed without a summary: ASHA stopped it. A pruned trial is a normal outcome: FINISHED.
        run.set_tags({"optuna.state": "pruned", "rgsweep.stop_reason": "pruned"})
        # Stopped inside its epoch report, a pruned trial sends no summary: the driver charges the wall time
        # it saw between the trial's start and its stop (scheduling included) at the trial's share.
        share = self.resources["gpu"] or self.resources["cpu"]
        kind = self.device_kind or ("gpu" if self.resources["gpu"] else "cpu")
        run.set_tags({"rgsweep.device_kind": kind})
        run.log_metrics({"epochs_run": self.last_epoch.get(ray_id, 0), "device_share": share,
                         "device_s": (time.monotonic() - self.started.get(ray_id, time.monotonic())) * share})
        tracking.set_note(self.client, run.run_id, f"{tracking.condition(self.configs[ray_id])}: pruned by ASHA "
                                                   f"after epoch {self.last_epoch.get(ray_id, 0)}")
        run.finish("FINISHED")
        run.log_learning_curve()

    def trial_retried(self, ray_id: str, error: str) -> None:
        """The trial's worker was lost; Ray runs the same Optuna trial again, into a new run."""
        run = self.runs.pop(ray_id, None)
        if run is not None:
            run.set_tags({"rgsweep.stop_reason": "worker_lost", "rgsweep.error": f"retried: {error}"[-4000:]})
            run.finish("KILLED")
            run.log_learning_curve()

    def trial_errored(self, ray_id: str, error: str, infrastructure: bool = False) -> None:
        run = self.runs.pop(ray_id, None)
        if run is not None:
            kind = "infrastructure" if infrastructure else "trial"
            run.set_tags({"optuna.state": "failed", "rgsweep.failure": kind})
            tracking.set_note(self.client, run.run_id, tracking.describe_trial(self.configs[ray_id], {}, error))
            run.fail(error)
            run.log_learning_curve()

    def close(self, stop: lifecycle.Stop) -> int:
        budget = None if stop.writable else 0
        for run in self.runs.values():  # still open: the study was stopped
            run.set_tags({"optuna.state": "failed"}, budget=budget)
            run.finish("KILLED", budget=budget)
        self.runs.clear()
        study = optuna.load_study(study_name=self.plan.study, storage=self.storage)
        mine = self.searcher.own_trials() if self.searcher is not None else set()
        for t in study.get_trials(deepcopy=False):  # this driver's interrupted trials: never left RUNNING
            if t.state == optuna.trial.TrialState.RUNNING and t.number in mine:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if not stop.writable:
            self.parent.finish("KILLED", budget=0)
            return 1
        stats = self.stats = self.finish_parent(study, stop.interrupted, stop.reason == "crashed")
        print()
        print(results_table(study, self.plan))
        print(f"\nstudy {self.plan.study!r}: {stats['n_trials']} trials ({stats['n_complete']} complete, "
              f"{stats['n_pruned']} pruned, {stats['n_failed']} failed)")
        if stats.get("best_params"):
            self.write_baseline(stats)
        print(ui_hint(self.uri, self.exp_id, self.plan.experiment))
        print(f"Optuna dashboard: {dashboard_command(self.storage_url)}")
        if stop.interrupted:
            return 130
        return 0 if stats["n_complete"] else 1

    def finish_parent(self, study: optuna.Study, interrupted: bool, crashed: bool = False) -> dict[str, Any]:
        stats = study_stats(study)
        metrics = {k: v for k, v in stats.items() if k.startswith("n_") or k == "best_value"}
        self.parent.log_metrics(metrics, step=stats["n_trials"])
        if stats.get("best_params"):
            self.parent.set_tags({f"best.{k}": v for k, v in stats["best_params"].items()}
                                 | {"best.trial_number": stats["best_trial"]})
        self.parent.finish("KILLED" if interrupted else
                           ("FINISHED" if stats["n_complete"] and not crashed else "FAILED"))
        if stats.get("best_params"):
            doc = yaml.safe_dump(baseline_doc(self.plan, stats, self.storage_url), sort_keys=False)
            self.parent.try_artifact("best_params.yaml", lambda path: path.write_text(doc))
        try:  # written after the parent's final status: a failed upload is a warning tag, never a RUNNING run
            self.publish(study, stats, interrupted)
        except Exception as e:  # noqa: BLE001 - the study's numbers are in its runs and in Optuna either way
            self.parent.set_tags({"rgsweep.warning.report": f"not uploaded: {tracking.first_line(e)}"}, budget=10)
        return stats

    def publish(self, study: optuna.Study | None, stats: dict[str, Any], interrupted: bool) -> None:
        """The study's own page on its parent run (rgsweep/analysis/page.py), as for grid sweeps."""
        import pandas as pd

        from rgsweep.analysis import page, tables

        state = "interrupted" if interrupted else "ended"
        headline = (f"Study `{self.plan.study}` {state}: {stats['n_trials']} trials, {stats.get('n_complete', 0)} "
                    f"complete, {stats.get('n_pruned', 0)} pruned, {stats.get('n_failed', 0)} failed.")
        if stats.get("best_params"):
            headline += f" Best: trial {stats['best_trial']}, {self.plan.metric} = {stats['best_value']:.4f}."
        frame = results_frame(study, self.plan) if study is not None else None
        page.publish(self.client, self.parent.run_id, title=self.plan.study, headline=headline,
                     results_md=tables.to_markdown(frame) if frame is not None else "_no trials_",
                     results=frame if frame is not None else pd.DataFrame())

    def write_baseline(self, stats: dict[str, Any]) -> None:
        plan = self.plan
        best = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats["best_params"].items())
        print(f"best: trial {stats['best_trial']}, {plan.metric}={stats['best_value']:.4f}, {best}")
        out = Path(self.baseline_out) if self.baseline_out else (None if plan.smoke else baseline_path(plan, self.uri))
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = yaml.safe_dump(baseline_doc(plan, stats, self.storage_url), sort_keys=False)
        out.write_text(f"# Best values of study {plan.study!r}, written by `rgsweep tune {plan.path}`.\n"
                       "# A sweep file uses them with `baseline: <this file, relative to the sweep file>`, or\n"
                       "# `rgsweep sweep FILE --baseline <this file>`.\n" + doc)
        stats["baseline"] = str(out)
        print(f"baseline written to {out}: a sweep starts from it with `rgsweep sweep FILE --baseline {out}`")


def study_stats(study: optuna.Study) -> dict[str, Any]:
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    stats: dict[str, Any] = {
        "n_trials": len(trials),
        "n_complete": sum(t.state == S.COMPLETE for t in trials),
        "n_pruned": sum(t.state == S.PRUNED for t in trials),
        "n_failed": sum(t.state == S.FAIL for t in trials),
    }
    if stats["n_complete"]:
        best = study.best_trial
        stats.update(best_value=best.value, best_params=dict(best.params), best_trial=best.number)
    return stats


def baseline_doc(plan: TuningPlan, stats: dict[str, Any], storage_url: str) -> dict[str, Any]:
    return {
        "name": plan.spec.name,
        "source": {
            "study": plan.study, "storage": storage_url, "objective": f"{plan.metric} ({plan.mode})",
            "best_value": stats["best_value"], "trial_number": stats["best_trial"], "n_trials": stats["n_trials"],
            "tuning_file": str(plan.path), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "params": {k: stats["best_params"][k] for k in plan.space if k in stats["best_params"]},
    }


# -- storage --------------------------------------------------------------------------------------
def open_storage(url: str) -> optuna.storages.BaseStorage:
    db = sqlite_file(url)  # Optuna's URLs name SQLite files as MLflow's do
    if db is not None and not db.is_absolute():
        path = db.resolve()  # absolute, like the MLflow store
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    return optuna.storages.RDBStorage(url)


def dashboard_command(storage_url: str) -> str:
    """How to open the study in optuna-dashboard (an optional extra): on PATH, else beside this interpreter
    (a venv not activated, as `make` runs it), else say how to install it."""
    beside = Path(sys.executable).with_name("optuna-dashboard")
    if shutil.which("optuna-dashboard"):
        return f"optuna-dashboard {storage_url}"
    if beside.exists():
        return f"{beside} {storage_url}"
    return f"optuna-dashboard {storage_url} (not installed: pip install optuna-dashboard)"


def prepare_study(plan: TuningPlan, storage: optuna.storages.BaseStorage, url: str, resume: bool,
                  restart: bool) -> int:
    """Make the stored study ready for this invocation; returns how many trials it already holds.

    Without --resume an existing study is refused (two searches mixed in one study would be
    misleading); --restart deletes it, a smoke run always does. --resume ends trials a dead driver left
    RUNNING as FAIL, so TPE's constant liar does not wait on them forever."""
    if plan.study not in optuna.study.get_all_study_names(storage=storage):
        return 0
    if restart or plan.smoke:
        optuna.delete_study(study_name=plan.study, storage=storage)
        return 0
    study = optuna.load_study(study_name=plan.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    if not resume:
        raise ConfigError(
            f"study {plan.study!r} already has {len(trials)} trials in {url}: pass --resume to add trials to it, "
            "or --restart to delete it and start over (with make: ARGS=--resume)"
        )
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(trials)


# -- running --------------------------------------------------------------------------------------
def run_tune(
    plan: TuningPlan,
    *,
    tracking_uri: str | None = None,
    storage_url: str | None = None,
    resume: bool = False,
    restart: bool = False,
    ray_address: str | None = None,
    storage_path: str | None = None,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    baseline_out: str | Path | None = None,
    verbose: int = 0,
    data: SweepData | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run (or resume) a study; returns (exit code, stats incl. the baseline path when one was written).
    `data`: the study's dataset, as `preload([plan.base])` returns it (loaded here first when None).
    How the study starts, holds its lease and ends on every path: rgsweep/lifecycle.py."""
    if data is None:
        data = preload([plan.base])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url or default_optuna_storage(given_uri(tracking_uri))
    tracker = StudyTracker(plan, url, resume, restart, baseline_out=baseline_out, launch={
        "storage_path": storage_path, "max_concurrent": max_concurrent, "verbose": verbose, "data": data})
    code = lifecycle.live(tracker, tracking_uri=tracking_uri, ray_address=ray_address, num_cpus=num_cpus)
    return code, tracker.stats


def tune_progress(plan: TuningPlan, number: Any, verbose: int = 0) -> Progress:
    """The progress line over this invocation's trials; best = the best objective of a complete trial,
    named by its Optuna trial number (`number`: Ray trial id -> number)."""
    def names(ray_id: str, config: dict[str, Any]) -> list[str]:
        n = number(ray_id)
        return [ray_id if n is None else f"trial {n}"]

    return Progress(plan.n_trials, epochs=lambda name: plan.base.epochs, metric=plan.metric, mode=plan.mode,
                    also=(), names=names, summary_key=SUMMARY_KEY, stopped="pruned",
                    **({"live": False, "interval": math.inf} if verbose else {}))


def results_frame(study: optuna.Study, plan: TuningPlan) -> Any:
    """One row per Optuna trial (a DataFrame): number, state, objective (or its last reported value), epochs,
    values tried."""
    import pandas as pd

    keys = list(plan.space)
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        vals = [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-"))
                for k in keys]
        rows.append([str(t.number), t.state.name.lower(), "-" if value is None else f"{value:.4f}",
                     str(max(t.intermediate_values, default=0)), *vals])
    return pd.DataFrame(rows, columns=["trial", "state", plan.metric, "epochs", *keys])


def results_table(study: optuna.Study, plan: TuningPlan) -> str:
    from rgsweep.analysis import tables

    return tables.to_text(results_frame(study, plan))


def run_from_cli(plan: TuningPlan, args: argparse.Namespace) -> int:
    """`rgsweep tune` once tunefile.cmd_tune has checked the file and the options: the store, the data, then
    the study."""
    lifecycle.check_store(args.tracking_uri)  # an unreachable store fails first, in seconds
    data = preload([plan.base])  # resolved here, checked, loaded once: a missing dataset fails before Ray and any run
    code, _ = run_tune(
        plan, tracking_uri=args.tracking_uri, storage_url=args.storage, resume=args.resume, restart=args.restart,
        ray_address=args.ray_address, storage_path=args.storage_path, max_concurrent=args.max_concurrent,
        num_cpus=args.num_cpus, baseline_out=args.baseline_out, data=data, verbose=int(args.verbose),
    )
    return code


if __name__ == "__main__":
    from rgsweep.cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
