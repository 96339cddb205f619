"""Grid sweeps: a YAML sweep file -> validated trials (sweepfile.py) -> Ray Tune -> one MLflow child run per
trial.

The sweep file's format and precedence rules: sweepfile.py, which turns the file into a Plan.

The MLflow store is the source of truth for resume: a trial is identified by its trial key (a
hash of its resolved config), so `--resume` skips trials that already have a FINISHED run, closes
runs left RUNNING by a dead driver as KILLED, and runs everything else once more (FAILED trials only
with --rerun-failed, except those whose worker was lost: those are rerun). How a sweep starts, holds
its lease, and ends on every path is rgsweep/lifecycle.py's job.

Every MLflow write happens in this driver process (one writer, no SQLite races); trials on any
node of a Ray cluster only report numbers back through Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from rgsweep import lifecycle, tracking
from rgsweep.lifecycle import EPOCH_KEYS, default_storage, fit_resources, ui_hint
from rgsweep.preload import SweepData, preload
from rgsweep.progress import Progress
from rgsweep.sweepfile import PACK_SEP, Plan, Trial, make_payloads, packing_line
from rgsweep.trials import EPOCHS_KEY, REPORT_INTERVAL_S, SUMMARY_KEY, sweep_trainable


def faults_from_env() -> dict[str, Any] | None:
    """$RGSWEEP_FAULTS: fault injection for a driver the tests start as a subprocess (see trials.inject_fault)."""
    text = os.environ.get("RGSWEEP_FAULTS")
    return json.loads(text) if text else None


# -- MLflow from the driver -----------------------------------------------------------------------
class SweepTracker:
    """Owns the parent run and the child runs; every write happens in the driver. It is the sweep's
    lifecycle job (see lifecycle.Job): find_parent, open, launch, the Ray hooks, close."""

    command = "sweep"

    def __init__(self, plan: Plan, resume: bool = False, rerun_failed: bool = False,
                 launch: dict[str, Any] | None = None):
        self.plan = plan
        self.name = plan.spec.name
        self.resume = resume
        self.rerun_failed = rerun_failed
        self.launch_args = launch or {}
        self.client: Any = None
        self.uri = ""
        self.exp_id = ""
        self.parent: tracking.RunTracker | None = None
        self.todo: list[Trial] = []
        self.done: dict[str, Any] = {}  # trial key -> FINISHED run (skipped on resume)
        self.failed_before: dict[str, Any] = {}
        self.runs: dict[str, dict[str, tracking.RunTracker]] = {}  # ray trial id -> trial name -> open run
        self.attempts: dict[str, int] = {}  # ray trial id -> attempts started (a lost worker adds one)
        self.by_payload: dict[str, Trial] = {t.key: t for t in plan.trials}
        self.by_name: dict[str, Trial] = {t.name: t for t in plan.trials}
        self.counts_: dict[str, int] = {}

    # -- the lifecycle job
    def find_parent(self, client: Any) -> Any | None:
        self.client = client
        self.uri = client.tracking_uri
        self.exp_id = tracking.get_experiment_id(client, self.plan.experiment)
        return tracking.latest_parent(client, self.exp_id, {"rgsweep.kind": "sweep", "rgsweep.sweep": self.name})

    def open(self, lease: lifecycle.Lease) -> bool:
        """Create (or, on resume, reopen) the parent run under `lease`; whether trials are left to run."""
        parent = self.find_parent(self.client)
        if parent is not None and (self.resume or parent.info.status == "RUNNING"):
            lease.take(f"sweep {self.name!r}", parent)  # its driver is gone: its runs are ours to close
            self.close_dead(parent.info.run_id)
        if parent is not None and self.resume:
            self.parent = tracking.reopen(self.client, parent.info.run_id)
            self.todo = self.remaining()
        else:
            if parent is not None and parent.info.status == "RUNNING":  # a dead driver's parent, not resumed
                tracking.RunTracker(self.client, parent.info.run_id).finish("KILLED")
            self.parent = self.start_parent(lease)
            self.todo = list(self.plan.trials)
        print(f"sweep {self.name!r}: {len(self.plan.trials)} trials, {len(self.todo)} to run "
              f"(parent run {self.parent.run_id}, experiment {self.plan.experiment!r}"
              + (f", baseline {self.plan.baseline}" if self.plan.baseline else "") + ")", flush=True)
        for note in self.plan.notes:
            print(note, flush=True)
        tracking.set_experiment_note(self.client, self.exp_id, self.plan.spec.description)
        return bool(self.todo)

    def start_parent(self, lease: lifecycle.Lease) -> tracking.RunTracker:
        tags = {
            "rgsweep.kind": "sweep", "rgsweep.sweep": self.name,
            "rgsweep.swept": ",".join(self.plan.swept_keys), "rgsweep.git_commit": tracking.git_commit(),
            "rgsweep.n_trials": str(len(self.plan.trials)), **lease.tags(),
            **tracking.source_tags(str(self.plan.path)), "mlflow.runColor": tracking.PARENT_COLOR,
            tracking.NOTE: f"Sweep `{self.name}` running: {len(self.plan.trials)} trials. "
                           "The results table and figures appear here when it ends.",
        }
        if self.plan.smoke:
            tags["rgsweep.smoke"] = "true"
        parent = tracking.RunTracker.start(
            self.client, self.exp_id, f"sweep-{self.name}", tags=tags,
            params={"sweep_file": str(self.plan.path), "n_trials": str(len(self.plan.trials)),
                    **({"baseline_file": self.plan.baseline} if self.plan.baseline else {})},
        )
        lease.hold(parent.run_id)
        parent.try_artifact(self.plan.path.name, lambda path: path.write_bytes(self.plan.path.read_bytes()))
        return parent

    def close_dead(self, parent_id: str) -> None:
        """Runs a dead driver left RUNNING are closed as KILLED (their trials run again)."""
        for run in tracking.search_children(self.client, self.exp_id, parent_id, statuses=["RUNNING"]):
            dead = tracking.RunTracker(self.client, run.info.run_id)
            dead.set_tags({"rgsweep.stop_reason": "driver_lost"})
            dead.finish("KILLED")

    def remaining(self) -> list[Trial]:
        """Trials without a FINISHED run; FAILED ones only with --rerun-failed, unless their worker was lost."""
        for run in tracking.search_children(self.client, self.exp_id):
            key = run.data.tags.get("rgsweep.trial_key")
            if key not in self.by_payload:
                continue
            if run.info.status == "FINISHED":
                self.done[key] = run
            elif run.info.status == "FAILED" and run.data.tags.get("rgsweep.failure") != "infrastructure":
                self.failed_before[key] = run
        skip = set(self.done) | (set() if self.rerun_failed else set(self.failed_before))
        return [t for t in self.plan.trials if t.key not in skip]

    def launch(self, callback: Any, should_stop: Any, folder: str) -> None:
        from rgsweep import raytune

        a = self.launch_args
        res = self.plan.spec.resources
        resources = fit_resources({"cpu": res.cpu, "gpu": res.gpu}, raytune.cluster_resources())
        # Packed by the GPU share Ray will grant each trial, not by this driver's own devices (packing.py).
        payloads = make_payloads(self.todo, self.plan.spec.pack, resources["gpu"], a.get("inject_failure"), a["data"])
        for p in payloads.values():
            p["report_interval"] = a.get("report_interval", REPORT_INTERVAL_S)
        if len(payloads) < len(self.todo):
            print(packing_line(len(self.todo), len(payloads), self.plan.spec.pack), flush=True)
        raytune.run_trials(
            sweep_trainable, name=folder,
            storage_path=a.get("storage_path") or os.environ.get("RGSWEEP_STORAGE") or default_storage(self.uri),
            resources=resources, callbacks=[callback], payloads=payloads,
            datasets=a["data"].select(t.config for t in self.todo),
            max_concurrent=a.get("max_concurrent") or self.plan.spec.max_concurrent, verbose=a.get("verbose", 0),
            progress=sweep_progress(self.todo, a.get("verbose", 0)),
            retries=self.plan.spec.retries, should_stop=should_stop,
        )

    def resume_hint(self) -> str:
        return f"rgsweep sweep {self.plan.path} --resume" + (" --smoke" if self.plan.smoke else "")

    # -- Ray callback hooks (called in the driver). A Ray trial carries one trial, or a pack of them.
    def trial_started(self, ray_id: str, payload: dict[str, Any]) -> None:
        attempt = self.attempts[ray_id] = self.attempts.get(ray_id, 0) + 1
        runs = {}
        for name in payload["trial"].split(PACK_SEP):
            trial = self.by_name[name]
            tags = tracking.trial_tags(trial.config, sweep=self.name)
            tags["rgsweep.ray_trial_id"] = ray_id
            if attempt > 1:
                tags["rgsweep.attempt"] = str(attempt)
            tags.update(tracking.ui_trial_tags(trial.config, str(self.plan.path)))
            runs[name] = tracking.RunTracker.start(
                self.client, self.exp_id, trial.name, params=trial.config.flat_params(), tags=tags,
                parent_run_id=self.parent.run_id,
            )
            runs[name].title = f"{trial.name} ({tracking.condition(trial.config)})"
        self.runs[ray_id] = runs

    def trial_result(self, ray_id: str, result: dict[str, Any]) -> None:
        run = self.runs.get(ray_id, {}).get(result.get("member", ""))
        if run is None:
            return
        if SUMMARY_KEY in result:
            summary = json.loads(result[SUMMARY_KEY])
            status, error = summary.pop("status"), summary.pop("error", None)
            failure = {"rgsweep.failure": "trial"} if status != "finished" else {}
            tracking.annotate_trial(run, self.by_name[result["member"]].config, summary, error)
            tracking.finish_trial(run, summary, error=error, diverged=status == "diverged", tags=failure)
            del self.runs[ray_id][result["member"]]
        elif EPOCHS_KEY in result:  # a batch of epochs from the trial's EpochBuffer
            run.log_epochs([{k: v for k, v in m.items() if k in EPOCH_KEYS} for m in json.loads(result[EPOCHS_KEY])])

    def trial_retried(self, ray_id: str, error: str) -> None:
        """The trial's worker was lost; Ray runs it again, into new runs (the lost attempt's steps stay apart)."""
        for run in self.runs.pop(ray_id, {}).values():
            run.set_tags({"rgsweep.stop_reason": "worker_lost", "rgsweep.error": f"retried: {error}"[-4000:]})
            run.finish("KILLED")
            run.log_learning_curve()

    def trial_errored(self, ray_id: str, error: str, infrastructure: bool = False) -> None:
        for name, run in self.runs.pop(ray_id, {}).items():
            if infrastructure:
                run.set_tags({"rgsweep.failure": "infrastructure", "rgsweep.stop_reason": "worker_lost"})
                error = (f"the trial's worker process or node was lost (infrastructure, not the trial's code) "
                         f"after {self.plan.spec.retries} retries; a plain --resume runs it again: {error}")
            else:
                run.set_tags({"rgsweep.failure": "trial"})
            tracking.set_note(self.client, run.run_id, tracking.describe_trial(self.by_name[name].config, {}, error))
            run.fail(error)
            run.log_learning_curve()

    def trial_completed(self, ray_id: str) -> None:
        for run in self.runs.pop(ray_id, {}).values():  # no summary: stopped by a scheduler or interrupted
            run.finish("KILLED")
            run.log_learning_curve()

    def close(self, stop: lifecycle.Stop) -> int:
        budget = None if stop.writable else 0  # the store is down: one attempt each, then say so
        for runs in self.runs.values():  # still open: the sweep was stopped
            for run in runs.values():
                run.finish("KILLED", budget=budget)
        self.runs.clear()
        if not stop.writable:
            self.parent.finish("KILLED", budget=0)
            return 1
        counts = self.counts_ = self.counts()
        self.parent.log_metrics({f"n_{k}": v for k, v in counts.items()})
        failed = counts["failed"] or counts["lost"]
        self.parent.finish("KILLED" if stop.interrupted else
                           ("FAILED" if failed or stop.reason == "crashed" else "FINISHED"))
        self.publish(counts, stop.interrupted)
        print()
        print(results_table(self.plan, self.latest_runs()))
        lost = f"{counts['lost']} lost (worker or node; --resume reruns them), " if counts["lost"] else ""
        print(f"\n{counts['finished']} finished, {counts['failed']} failed, {lost}{counts['killed']} killed, "
              f"{counts['missing']} not run, of {counts['trials']} trials")
        print(ui_hint(self.uri, self.exp_id, self.plan.experiment))
        if stop.interrupted or counts["killed"] or counts["missing"]:
            return 130
        return 1 if failed else 0

    def publish(self, counts: dict[str, int], interrupted: bool) -> None:
        """The sweep's own page on its parent run: description, results table, report, summary metrics."""
        from rgsweep.analysis import page

        latest = self.latest_runs()
        state = "interrupted" if interrupted else "ended"
        lost = f"{counts['lost']} lost (worker or node), " if counts["lost"] else ""
        headline = (f"Sweep `{self.plan.spec.name}` {state}: {counts['trials']} trials, {counts['finished']} "
                    f"finished, {counts['failed']} failed, {lost}{counts['killed']} killed, "
                    f"{counts['missing']} not run.")
        try:  # written after the parent's final status: a failed upload is a warning tag, never a RUNNING run
            page.publish(self.client, self.parent.run_id, title=self.plan.spec.name, headline=headline,
                         results_md=results_table(self.plan, latest, markdown=True),
                         results=results_frame(self.plan, latest))
        except Exception as e:  # noqa: BLE001 - the sweep's numbers are in its runs either way
            self.parent.set_tags({"rgsweep.warning.report": f"not uploaded: {tracking.first_line(e)}"}, budget=10)

    def latest_runs(self) -> dict[str, Any]:
        """Trial key -> its most relevant run (FINISHED wins, else the newest)."""
        best: dict[str, Any] = {}
        rank = {"FINISHED": 3, "FAILED": 2, "KILLED": 1, "RUNNING": 0}
        for run in tracking.search_children(self.client, self.exp_id):
            key = run.data.tags.get("rgsweep.trial_key")
            if key not in self.by_payload:
                continue
            cur = best.get(key)
            score = (rank.get(run.info.status, 0), run.info.start_time)
            if cur is None or score > (rank.get(cur.info.status, 0), cur.info.start_time):
                best[key] = run
        return best

    def counts(self) -> dict[str, int]:
        latest = self.latest_runs()
        c = {"trials": len(self.plan.trials), "finished": 0, "failed": 0, "lost": 0, "killed": 0, "missing": 0}
        for t in self.plan.trials:
            run = latest.get(t.key)
            status = run.info.status if run else "MISSING"
            if status == "FAILED" and run.data.tags.get("rgsweep.failure") == "infrastructure":
                status = "LOST"
            c[{"FINISHED": "finished", "FAILED": "failed", "LOST": "lost", "KILLED": "killed"}.get(
                status, "missing")] += 1
        return c


# -- results table --------------------------------------------------------------------------------
RESULT_METRICS = ("train_acc", "test_acc", "gen_gap", "epochs_to_fit")


def _final(metrics: dict[str, float], key: str) -> float | None:
    """A run's final value: the series' latest value (stores before the rename also hold `final_<key>`)."""
    v = metrics.get(key, metrics.get(f"final_{key}"))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def results_frame(plan: Plan, latest: dict[str, Any]) -> Any:
    """One row per trial: run name, swept values, seed, final train/test accuracy, gen_gap, epochs_to_fit,
    fitted, status and run id (a trial not run yet has blanks): results.csv on the parent run."""
    import pandas as pd

    cols = [c for c in plan.swept_keys if c != "seed"]
    rows = []
    for t in plan.trials:
        run = latest.get(t.key)
        m = run.data.metrics if run else {}
        vals = {c: (lambda v: ("+".join(v) or "none") if isinstance(v, list) else str(v))(getattr(t.config, c))
                for c in cols}
        diverged = run is not None and run.data.tags.get("rgsweep.diverged") == "true"
        rows.append({"run": t.name, **vals, "seed": t.config.seed, **{k: _final(m, k) for k in RESULT_METRICS},
                     "fitted": m.get("fitted"),
                     "status": "DIVERGED" if diverged else (run.info.status if run else "NOT RUN"),
                     "run_id": run.info.run_id if run else ""})
    return pd.DataFrame(rows)


def results_table(plan: Plan, latest: dict[str, Any], markdown: bool = False) -> str:
    """The table a sweep prints at its end (and puts on its parent run as Markdown): a row per trial, or
    with several seeds a row per grid point with 'mean ± std' over its seeds and n."""
    import pandas as pd

    from rgsweep.analysis import tables

    df = results_frame(plan, latest)
    cols = [c for c in plan.swept_keys if c != "seed"]
    if df["seed"].nunique() > 1:
        shown = tables.seed_summary(df, cols or ["run"], list(RESULT_METRICS))
    else:
        shown = df[["run", *cols, *RESULT_METRICS, "status"]].astype(object)
        for k in RESULT_METRICS:
            spec = "{:.0f}" if k == "epochs_to_fit" else "{:.3f}"
            shown[k] = [spec.format(v) if pd.notna(v) else "-" for v in df[k]]
    return tables.to_markdown(shown) if markdown else tables.to_text(shown)


# -- running --------------------------------------------------------------------------------------
def run_sweep(
    plan: Plan,
    *,
    tracking_uri: str | None = None,
    resume: bool = False,
    rerun_failed: bool = False,
    ray_address: str | None = None,
    storage_path: str | None = None,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    inject_failure: dict[str, Any] | None = None,
    verbose: int = 0,
    report_interval: float = REPORT_INTERVAL_S,
    data: SweepData | None = None,
) -> tuple[int, dict[str, int]]:
    """Run (or resume) a sweep; returns (exit code, counts). Trials send their epochs to the driver at
    most every `report_interval` seconds (0: every epoch, one round trip each; see trials.EpochBuffer).

    `data`: the sweep's datasets, as `preload(t.config for t in plan.trials)` (rgsweep/preload.py)
    returns them; when None they are loaded here first, before any MLflow run or Ray. Passing them lets
    a caller run the driver in stages: load the data, then (a test) move the data folder away, then
    run the trials, which get the data from the object store and open no dataset file.
    `verbose` 1 adds Ray's status table to the progress line (then plain lines at trial ends).
    How the sweep starts, holds its lease and ends on every path: rgsweep/lifecycle.py."""
    if data is None:
        data = preload(t.config for t in plan.trials)
    tracker = SweepTracker(plan, resume, rerun_failed, launch={
        "storage_path": storage_path, "max_concurrent": max_concurrent, "inject_failure": inject_failure,
        "verbose": verbose, "report_interval": report_interval, "data": data,
    })
    code = lifecycle.live(tracker, tracking_uri=tracking_uri, ray_address=ray_address, num_cpus=num_cpus)
    return code, tracker.counts_


def sweep_progress(todo: list[Trial], verbose: int = 0) -> Progress:
    """The progress line over the trials to run; best = highest final test_acc, with its gen_gap."""
    epochs, archs = {t.name: t.config.epochs for t in todo}, {t.name: t.config.arch for t in todo}
    return Progress(len(todo), epochs=epochs.get, group=archs.get, queued=[t.name for t in todo],
                    names=lambda ray_id, config: config["trial"].split(PACK_SEP),
                    summary_key=SUMMARY_KEY, **({"live": False, "interval": math.inf} if verbose else {}))


def run_from_cli(plan: Plan, args: argparse.Namespace) -> int:
    """`rgsweep sweep` once sweepfile.cmd_sweep has checked the file and the options: the store, the data,
    then the trials."""
    lifecycle.check_store(args.tracking_uri)  # an unreachable store fails first, in seconds
    # Every dataset resolved from here, downloaded, checked and decoded once, with or without a cluster:
    # a missing one fails here (exit 2), before Ray starts and before any run exists.
    data = preload(t.config for t in plan.trials)
    code, _ = run_sweep(
        plan, tracking_uri=args.tracking_uri, resume=args.resume, rerun_failed=args.rerun_failed,
        ray_address=args.ray_address, storage_path=args.storage_path, max_concurrent=args.max_concurrent,
        num_cpus=args.num_cpus, data=data, verbose=int(args.verbose), inject_failure=faults_from_env(),
    )
    return code


if __name__ == "__main__":
    from rgsweep.cli import main

    sys.exit(main(["sweep", *sys.argv[1:]]))
