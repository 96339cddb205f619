"""Grid sweeps: a YAML sweep file -> validated trials -> Ray Tune -> one MLflow child run per trial.

Sweep file (sweeps/*.yaml):

    name: demo                      # also the default MLflow experiment
    experiment: demo                # optional
    baseline: baselines/tune-demo.yaml   # optional, written by `rgsweep tune` (path relative to the file)
    base: {dataset: digits, arch: mlp1x512, epochs: 60}     # a TrialConfig, shared by every trial
    grid:                           # cartesian product of these lists
      arch: [mlp1x512, cnn]
      label_noise: [0.0, 0.2, 0.4]
      setting:                      # a *bundle*: any key whose values are mappings of TrialConfig keys
        - {corruption: none}
        - {corruption: shuffled_pixels}
    seeds: [0, 1]
    resources: {cpu: 1, gpu: 0.25}  # per trial; fractions allowed
    max_concurrent: 4
    pack: 1                         # >1: train this many same-shape trials together in one process
    smoke: {epochs: 2, subset: 200} # overrides used by --smoke (CI runs every sweep file this way)

The MLflow store is the source of truth for resume: a trial is identified by its trial key (a
hash of its resolved config), so `--resume` skips trials that already have a FINISHED run, closes
runs left RUNNING by a dead driver as KILLED, and runs everything else once more.

Every MLflow write happens in this driver process (one writer, no SQLite races); trials on any
node of a Ray cluster only report numbers back through Ray.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rgsweep import tracking
from rgsweep.config import ConfigError, TrialConfig, load_yaml, make_config
from rgsweep.metrics import EPOCH_SERIES
from rgsweep.preload import SweepData, preload
from rgsweep.progress import Progress

SUMMARY_KEY = "rgsweep_summary"
DEFAULT_SMOKE = {"dataset": "synthetic", "data_dir": None, "subset": None, "epochs": 2, "download": False}


PACK_MAX = 256  # trials trained together in one Ray trial, at most


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)  # CPU cores per trial; also the trial's torch thread count
    gpu: float = Field(0.0, ge=0)  # GPUs per trial; 0.25 packs four trials on one GPU (no memory isolation)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    experiment: str | None = None
    description: str = ""
    baseline: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    pack: int = Field(1, ge=1, le=PACK_MAX)
    smoke: dict[str, Any] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has an empty list of values")
            bundles = [isinstance(v, dict) for v in values]
            if any(bundles) and not all(bundles):
                raise ValueError(f"grid key {key!r}: mix of mappings and plain values")
            if not any(bundles) and key not in TrialConfig.model_fields:
                raise ValueError(
                    f"unknown grid key {key!r}; allowed: the trial keys ({', '.join(TrialConfig.model_fields)}) "
                    "or a bundle name whose values are mappings of trial keys"
                )
        return grid


@dataclass
class Trial:
    config: TrialConfig
    key: str
    name: str
    swept: dict[str, Any] = field(default_factory=dict)  # the grid values this trial took


@dataclass
class Plan:
    spec: SweepSpec
    path: Path
    experiment: str
    trials: list[Trial]
    swept_keys: list[str]


# -- loading and expansion ------------------------------------------------------------------------
def load_spec(path: str | Path) -> SweepSpec:
    data = load_yaml(path)
    try:
        return SweepSpec(**data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                msgs.append(f"unknown key {loc!r}; allowed keys: {', '.join(SweepSpec.model_fields)}")
            else:
                msgs.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid sweep file {path}: " + "; ".join(msgs)) from None


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def expand(
    spec: SweepSpec, path: Path, overrides: dict[str, Any] | None = None, smoke: bool = False,
    seeds: list[int] | None = None,
) -> Plan:
    """Every trial of the sweep as a validated TrialConfig. Raises ConfigError naming the bad trial.
    `seeds` (from --seeds) replaces the file's, and --smoke keeps them all: they were asked for."""
    base: dict[str, Any] = {}
    if spec.baseline:
        bpath = (path.parent / spec.baseline).resolve()
        bdata = load_yaml(bpath)
        base.update(bdata.get("params", bdata))
    base.update(spec.base)
    grid = dict(spec.grid)
    if smoke:
        base.update({**DEFAULT_SMOKE, **spec.smoke})
        # First and last value of every grid list: the extremes, at a fraction of the cost.
        grid = {k: (v if len(v) <= 2 else [v[0], v[-1]]) for k, v in grid.items()}
    base.update(overrides or {})

    keys = list(grid)
    swept: list[str] = []
    for k in keys:
        names = [kk for v in grid[k] for kk in v] if isinstance(grid[k][0], dict) else [k]
        swept += [kk for kk in dict.fromkeys(names) if kk not in swept]
    seeds = seeds or (spec.seeds[:1] if smoke else spec.seeds)
    if len(seeds) > 1:
        swept.append("seed")

    trials: list[Trial] = []
    seen: set[str] = set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(base)
        chosen: dict[str, Any] = {}
        named: list[str] = []  # the keys the run name shows
        for k, v in zip(keys, combo):
            if isinstance(v, dict):
                values.update(v)
                chosen.update(v)
                # A bundle that picks the architecture carries that architecture's setup (its lr, ...):
                # the name shows the architecture alone.
                named += ["arch"] if "arch" in v else list(v)
            else:
                values[k] = v
                chosen[k] = v
                named.append(k)
        for seed in seeds:
            values_s = {**values, "seed": seed}
            where = f"{path} (trial {', '.join(f'{k}={_fmt_value(v)}' for k, v in chosen.items())})"
            cfg = make_config(values_s, where=where)
            key = cfg.key()
            if key in seen:  # two grid points that resolve to the same trial run once
                continue
            seen.add(key)
            name = tracking.run_name(cfg, named, seed=len(seeds) > 1)
            if any(t.name == name for t in trials):  # same swept values, other base: keep names unique
                name = f"{name}-{key[:6]}"
            trials.append(Trial(cfg, key, name, {**chosen, "seed": seed}))
    return Plan(spec, path, spec.experiment or spec.name, trials, swept)


# -- the trainable (runs on a Ray worker) ---------------------------------------------------------
def trainable(config: dict[str, Any], payloads: dict[str, dict[str, Any]], datasets: dict[str, Any]) -> None:
    """Thin Ray adapter around `train` (or `train_packed` for a pack of trials): reads the payload and its
    dataset (from the object store: no file is opened here), sets threads, reports each epoch tagged with
    the member it belongs to, then each summary."""
    import torch

    from rgsweep import raytune
    from rgsweep.train import DivergedError, train

    started = time.monotonic()
    payload = payloads[config["trial"]]
    granted = raytune.trial_resources()
    torch.set_num_threads(max(1, int(granted.get("CPU", 1) or 1)))
    members = payload["members"]
    t_fetch = time.perf_counter()
    dataset = raytune.get_dataset(datasets[payload["data"]])  # a pack's members share their data
    fetch_s = time.perf_counter() - t_fetch

    configs = [TrialConfig(**m["config"]) for m in members]
    interval = payload.get("report_interval", REPORT_INTERVAL_S)
    reports = [EpochBuffer(m["name"], raytune.report, m.get("inject_failure"), interval) for m in members]
    try:
        if len(members) == 1:
            try:
                results: list[Any] = [train(configs[0], reports[0], dataset=dataset)]
            except DivergedError as e:
                results = [e]
        else:
            from rgsweep.packed import train_packed

            results = train_packed(configs, reports, dataset=dataset)
    finally:  # a trial that raises still sends the epochs it trained, so its FAILED run has its curve
        for r in reports:
            r.flush()
    # A pack shares its device: each member is charged an equal part of the time the pack held it.
    cost = trial_cost(configs[0].device, (time.monotonic() - started) / len(members), granted)
    for m, res in zip(members, results):
        if isinstance(res, DivergedError):
            summary, status = res.summary, "diverged"
        elif isinstance(res, BaseException):  # one packed trial raised: it alone is FAILED
            if len(members) == 1:
                raise res
            summary, status = {"error": f"{type(res).__name__}: {res}"}, "failed"
        else:
            summary, status = res, "finished"
        summary["data_fetch_s"] = fetch_s
        summary.update(cost)
        last = summary.pop("last_epoch", None) or {}
        # The last epoch's numbers ride along so Ray's table shows them for finished trials too.
        raytune.report({**last, "member": m["name"],
                        SUMMARY_KEY: json.dumps({"status": status, "ray_node": raytune.node_id(), **summary},
                                                default=str)})


def trial_cost(device: str, seconds: float, granted: dict[str, float]) -> dict[str, Any]:
    """What a trial cost (rgsweep/metrics.py): `device_s` = the seconds it held its device share x that
    share (a GPU fraction, or CPU cores), `device_share`, and `device_kind` ('cpu' or the GPU's name).
    Seconds from the trainable's start (data preparation included) to its summary."""
    import torch

    from rgsweep.train import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        kind, share = torch.cuda.get_device_name(dev), float(granted.get("GPU") or 1.0)
    else:
        kind, share = dev.type, float(granted.get("CPU") or 1.0)
    return {"device_s": seconds * share, "device_share": share, "device_kind": kind}


EPOCHS_KEY = "rgsweep_epochs"
REPORT_INTERVAL_S = 1.0


class EpochBuffer:
    """A trial's per-epoch `report`, sending its epochs to the driver in batches.

    A Ray report is a round trip to the driver (the trial waits for it), and the driver then writes the
    epoch to MLflow: 17 ms an epoch on a 2-core machine, ~40 ms with two trials running beside the
    driver, more than a digits epoch takes to train (benchmarks/sweep_overhead.py).
    So epochs are sent together, at most every `interval` seconds (the first epoch at once, so Ray's
    table fills in), and the driver logs each batch in one MLflow call. Every epoch still becomes its
    own MLflow step; `flush` sends what is left (the trainable calls it before the summary and when
    the trial raises).
    """

    def __init__(self, name: str, send: Any, fail_at: int | None = None, interval: float = REPORT_INTERVAL_S):
        self.name, self.send, self.fail_at, self.interval = name, send, fail_at, interval
        self.pending: list[dict[str, Any]] = []
        self.last_sent: float | None = None

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self.fail_at is not None and metrics["epoch"] >= self.fail_at:  # fault injection (tests)
            raise RuntimeError(f"injected failure at epoch {metrics['epoch']}")
        self.pending.append(dict(metrics))
        if self.last_sent is None or time.monotonic() - self.last_sent >= self.interval:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # The newest epoch's numbers at the top level are what Ray's progress table shows.
        self.send({**self.pending[-1], "member": self.name, EPOCHS_KEY: json.dumps(self.pending)})
        self.pending = []
        self.last_sent = time.monotonic()


# -- MLflow from the driver -----------------------------------------------------------------------
class SweepTracker:
    """Owns the parent run and the child runs; every write happens in the driver."""

    def __init__(self, plan: Plan, tracking_uri: str | None, resume: bool, rerun_failed: bool):
        self.plan = plan
        self.client = tracking.get_client(tracking_uri)  # creates the schema once, before trials fan out
        self.uri = self.client.tracking_uri
        self.exp_id = tracking.get_experiment_id(self.client, plan.experiment)
        self.parent: tracking.RunTracker | None = None
        self.done: dict[str, Any] = {}  # trial key -> FINISHED run (skipped on resume)
        self.failed_before: dict[str, Any] = {}
        self.runs: dict[str, dict[str, tracking.RunTracker]] = {}  # ray trial id -> trial name -> open run
        self.by_payload: dict[str, Trial] = {t.key: t for t in plan.trials}
        self.by_name: dict[str, Trial] = {t.name: t for t in plan.trials}
        self.resume = resume
        self.rerun_failed = rerun_failed

    def _latest_parent(self) -> Any | None:
        runs = self.client.search_runs(
            [self.exp_id],
            f"tags.`rgsweep.kind` = 'sweep' and tags.`rgsweep.sweep` = '{self.plan.spec.name}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        return runs[0] if runs else None

    def open(self) -> list[Trial]:
        """Create (or, on resume, reopen) the parent run; return the trials still to run."""
        todo = list(self.plan.trials)
        parent = self._latest_parent() if self.resume else None
        if parent is not None:
            self.parent = tracking.RunTracker(self.client, parent.info.run_id)
            tracking.retry(lambda: self.client.update_run(parent.info.run_id, status="RUNNING"))
            keys = set(self.by_payload)
            for run in tracking.search_children(self.client, self.exp_id):
                key = run.data.tags.get("rgsweep.trial_key")
                if key not in keys:
                    continue
                status = run.info.status
                if status == "RUNNING":  # left behind by a driver that died
                    tracking.RunTracker(self.client, run.info.run_id).finish("KILLED")
                elif status == "FINISHED":
                    self.done[key] = run
                elif status == "FAILED":
                    self.failed_before[key] = run
            skip = set(self.done) | (set() if self.rerun_failed else set(self.failed_before))
            todo = [t for t in todo if t.key not in skip]
        else:
            tags = {
                "rgsweep.kind": "sweep", "rgsweep.sweep": self.plan.spec.name,
                "rgsweep.swept": ",".join(self.plan.swept_keys), "rgsweep.git_commit": tracking.git_commit(),
                "rgsweep.n_trials": str(len(self.plan.trials)),
                **tracking.source_tags(str(self.plan.path)), "mlflow.runColor": tracking.PARENT_COLOR,
                tracking.NOTE: f"Sweep `{self.plan.spec.name}` running: {len(self.plan.trials)} trials. "
                               "The results table and figures appear here when it ends.",
            }
            self.parent = tracking.RunTracker.start(
                self.client, self.exp_id, f"sweep-{self.plan.spec.name}", tags=tags,
                params={"sweep_file": str(self.plan.path), "n_trials": str(len(self.plan.trials))},
            )
            self.parent.log_artifact(self.plan.path)
        tracking.set_experiment_note(self.client, self.exp_id, self.plan.spec.description)
        return todo

    # Ray callback hooks (called in the driver). A Ray trial carries one trial, or a pack of them.
    def trial_started(self, ray_id: str, payload: dict[str, Any]) -> None:
        runs = {}
        for name in payload["trial"].split(PACK_SEP):
            trial = self.by_name[name]
            tags = tracking.trial_tags(trial.config, sweep=self.plan.spec.name)
            tags["rgsweep.ray_trial_id"] = ray_id
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
            tracking.annotate_trial(run, self.by_name[result["member"]].config, summary, error)
            tracking.finish_trial(run, summary, error=error, diverged=status == "diverged")
            del self.runs[ray_id][result["member"]]
        elif EPOCHS_KEY in result:  # a batch of epochs from the trial's EpochBuffer
            run.log_epochs([{k: v for k, v in m.items() if k in EPOCH_KEYS} for m in json.loads(result[EPOCHS_KEY])])

    def trial_errored(self, ray_id: str, error: str) -> None:
        for name, run in self.runs.pop(ray_id, {}).items():
            tracking.set_note(self.client, run.run_id, tracking.describe_trial(self.by_name[name].config, {}, error))
            run.log_learning_curve()
            run.fail(error)

    def trial_completed(self, ray_id: str) -> None:
        for run in self.runs.pop(ray_id, {}).values():  # no summary: stopped by a scheduler or interrupted
            run.log_learning_curve()
            run.finish("KILLED")

    def close(self, interrupted: bool) -> dict[str, int]:
        for runs in self.runs.values():  # still open: the sweep was interrupted
            for run in runs.values():
                run.finish("KILLED")
        self.runs.clear()
        counts = self.counts()
        self.parent.log_metrics({f"n_{k}": v for k, v in counts.items()})
        self.publish(counts, interrupted)
        self.parent.finish("KILLED" if interrupted else ("FAILED" if counts["failed"] else "FINISHED"))
        return counts

    def publish(self, counts: dict[str, int], interrupted: bool) -> None:
        """The sweep's own page on its parent run: description, results table, report, summary metrics."""
        from rgsweep.analysis import page

        latest = self.latest_runs()
        state = "interrupted" if interrupted else "ended"
        headline = (f"Sweep `{self.plan.spec.name}` {state}: {counts['trials']} trials, {counts['finished']} "
                    f"finished, {counts['failed']} failed, {counts['killed']} killed, {counts['missing']} not run.")
        page.publish(self.client, self.parent.run_id, title=self.plan.spec.name, headline=headline,
                     results_md=results_table(self.plan, latest, markdown=True),
                     results=results_frame(self.plan, latest))

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
        c = {"trials": len(self.plan.trials), "finished": 0, "failed": 0, "killed": 0, "missing": 0}
        for t in self.plan.trials:
            run = latest.get(t.key)
            status = run.info.status if run else "MISSING"
            c[{"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}.get(status, "missing")] += 1
        return c


EPOCH_KEYS = {"epoch", *EPOCH_SERIES}  # what the driver logs per epoch (rgsweep/metrics.py)


class TrackerCallback:
    """Factory for the Ray callback bound to a SweepTracker (defined lazily: Ray imports stay in raytune)."""

    @staticmethod
    def make(tracker: Any) -> Any:
        from rgsweep import raytune

        class Cb(raytune.TrackingCallback):
            def trial_started(self, trial_id, config):
                tracker.trial_started(trial_id, config)

            def trial_result(self, trial_id, result):
                tracker.trial_result(trial_id, result)

            def trial_completed(self, trial_id):
                tracker.trial_completed(trial_id)

            def trial_errored(self, trial_id, error):
                tracker.trial_errored(trial_id, error)

        return Cb()


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


def ui_hint(uri: str, exp_id: str, experiment: str | None = None) -> str:
    """Where to look next: the tracking server's own address when the store is a server; for a local
    store, the command that serves it (it prints the address, on the port it was given)."""
    base = tracking.server_base(uri)
    if base:
        return f"MLflow UI: {tracking.runs_url(base, exp_id)}"
    which = f"experiment {experiment!r}" if experiment else f"experiment {exp_id}"
    return f"MLflow UI: `make ui` (or `rgsweep ui --tracking-uri {uri}`) prints the address of {which}"


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
    inject_failure: dict[str, int] | None = None,
    verbose: int = 0,
    report_interval: float = REPORT_INTERVAL_S,
    data: SweepData | None = None,
) -> tuple[int, dict[str, int]]:
    """Run (or resume) a sweep; returns (exit code, counts). Trials send their epochs to the driver at
    most every `report_interval` seconds (0: every epoch, one round trip each; see EpochBuffer).

    `data`: the sweep's datasets, as `preload(t.config for t in plan.trials)` (rgsweep/preload.py)
    returns them; when None they are loaded here first, before any MLflow run or Ray. Passing them lets
    a caller run the driver in stages: load the data, then (a test) move the data folder away, then
    run the trials, which get the data from the object store and open no dataset file.
    `verbose` 1 adds Ray's status table to the progress line (then plain lines at trial ends)."""
    from rgsweep import raytune

    if data is None:
        data = preload(t.config for t in plan.trials)
    tracker = SweepTracker(plan, tracking_uri, resume, rerun_failed)
    todo = tracker.open()
    print(f"sweep {plan.spec.name!r}: {len(plan.trials)} trials, {len(todo)} to run "
          f"(parent run {tracker.parent.run_id}, experiment {plan.experiment!r})", flush=True)
    interrupted = False
    if todo:
        payloads = make_payloads(todo, plan.spec.pack, inject_failure, data)
        for p in payloads.values():
            p["report_interval"] = report_interval
        if len(payloads) < len(todo):
            print(packing_line(len(todo), len(payloads), plan.spec.pack), flush=True)
        res = plan.spec.resources
        storage = storage_path or os.environ.get("RGSWEEP_STORAGE") or default_storage(tracker.uri)
        started = raytune.start_ray(ray_address, num_cpus=num_cpus)
        resources = fit_resources({"cpu": res.cpu, "gpu": res.gpu}, raytune.cluster_resources())
        try:
            raytune.run_trials(
                trainable, name=f"{plan.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=storage, resources=resources,
                callbacks=[TrackerCallback.make(tracker)], payloads=payloads,
                datasets=data.select(t.config for t in todo),
                max_concurrent=max_concurrent or plan.spec.max_concurrent, verbose=verbose,
                progress=sweep_progress(todo, verbose),
            )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            interrupted = interrupted or bool(tracker.runs)
            raytune.stop_ray(started)
    counts = tracker.close(interrupted)
    latest = tracker.latest_runs()
    print()
    print(results_table(plan, latest))
    print(f"\n{counts['finished']} finished, {counts['failed']} failed, {counts['killed']} killed, "
          f"{counts['missing']} not run, of {counts['trials']} trials")
    print(ui_hint(tracker.uri, tracker.exp_id, plan.experiment))
    if interrupted or counts["killed"] or counts["missing"]:
        return 130, counts
    return (1 if counts["failed"] else 0), counts


PACK_SEP = "|"  # a packed Ray trial is named by its members' names joined with this


def sweep_progress(todo: list[Trial], verbose: int = 0) -> Progress:
    """The progress line over the trials to run; best = highest final test_acc, with its gen_gap."""
    epochs = {t.name: t.config.epochs for t in todo}
    return Progress(len(todo), epochs=epochs.get, names=lambda ray_id, config: config["trial"].split(PACK_SEP),
                    summary_key=SUMMARY_KEY, **({"live": False, "interval": math.inf} if verbose else {}))


def make_payloads(
    todo: list[Trial], pack: int, inject_failure: dict[str, int] | None = None, data: SweepData | None = None,
) -> dict[str, dict[str, Any]]:
    """One payload per Ray trial: a single trial, or (pack > 1) a pack of compatible trials; with `data`,
    each names the dataset it trains on (`data`: its key; a pack's members share dataset and subset)."""
    groups = [[i] for i in range(len(todo))]
    if pack > 1:
        from rgsweep.packed import pack_groups

        groups = pack_groups([t.config for t in todo], pack)
    payloads: dict[str, dict[str, Any]] = {}
    for group in groups:
        members = []
        for i in group:
            t = todo[i]
            m: dict[str, Any] = {"config": t.config.model_dump(), "key": t.key, "name": t.name}
            if inject_failure and t.name in inject_failure:
                m["inject_failure"] = inject_failure[t.name]
            members.append(m)
        payload: dict[str, Any] = {"members": members}
        if data is not None:
            payload["data"] = data.key(todo[group[0]].config)
        payloads[PACK_SEP.join(m["name"] for m in members)] = payload
    return payloads


def packing_line(n_trials: int, n_ray: int, pack: int) -> str:
    return f"packing: {n_trials} trials in {n_ray} Ray trials (pack: {pack})"


def fit_resources(wanted: dict[str, float], cluster: dict[str, float]) -> dict[str, float]:
    """Per-trial resources the cluster can actually grant: a sweep file written for GPU boxes
    (gpu: 0.25) still runs on a laptop, on CPU, instead of waiting forever for a GPU."""
    out = dict(wanted)
    if out["gpu"] > 0 and cluster.get("GPU", 0) == 0:
        print(f"no GPU in the Ray cluster: running trials on CPU (the sweep asked for gpu={out['gpu']})",
              file=sys.stderr)
        out["gpu"] = 0.0
    out["cpu"] = min(out["cpu"], max(1.0, cluster.get("CPU", out["cpu"])))
    return out


def default_storage(uri: str) -> str:
    """Ray Tune's state beside the SQLite store (mlruns/ray), else ./mlruns/ray."""
    root = tracking.artifact_root(uri)
    base = Path(root[len("file://"):]) if root else Path("mlruns").resolve()
    return str(base / "ray")


def parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Trial keys set on the command line (`--set`, `--dataset`, `--data-dir`, `--download`)."""
    overrides = parse_set(args.set)
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.download:
        overrides["download"] = True
    return overrides


def cmd_sweep(args: argparse.Namespace) -> int:
    path = Path(args.file)
    spec = load_spec(path)
    overrides = overrides_from_args(args)
    seeds = seeds_override(args.seeds, overrides)
    plan = expand(spec, path, overrides, smoke=args.smoke, seeds=seeds)
    if args.cpus_per_trial or args.gpus_per_trial is not None:
        try:
            plan.spec.resources = Resources(
                cpu=args.cpus_per_trial or plan.spec.resources.cpu,
                gpu=plan.spec.resources.gpu if args.gpus_per_trial is None else args.gpus_per_trial,
            )
        except ValidationError as e:
            raise ConfigError(f"--cpus-per-trial/--gpus-per-trial: {e.errors()[0]['msg']}") from None
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.pack is not None:
        if not 1 <= args.pack <= PACK_MAX:
            raise ConfigError(f"--pack must be between 1 and {PACK_MAX} (trials trained together), got {args.pack}")
        plan.spec.pack = args.pack
    if args.dry_run:
        for t in plan.trials:
            print(f"{t.name:<48} {t.key}  " + " ".join(f"{k}={_fmt_value(v)}" for k, v in t.swept.items()))
        print(f"{len(plan.trials)} trials (experiment {plan.experiment!r}, swept: {', '.join(plan.swept_keys)})")
        if plan.spec.pack > 1:
            print(packing_line(len(plan.trials), len(make_payloads(plan.trials, plan.spec.pack)), plan.spec.pack))
        return 0
    # Every dataset resolved from here, downloaded, checked and decoded once, with or without a cluster:
    # a missing one fails here (exit 2), before Ray starts and before any run exists.
    data = preload(t.config for t in plan.trials)
    code, _ = run_sweep(
        plan, tracking_uri=args.tracking_uri, resume=args.resume, rerun_failed=args.rerun_failed,
        ray_address=args.ray_address, storage_path=args.storage_path, max_concurrent=args.max_concurrent,
        num_cpus=args.num_cpus, data=data, verbose=int(args.verbose),
    )
    return code


def seeds_override(flag: str | None, overrides: dict[str, Any]) -> list[int] | None:
    """`--seeds 0,1,2` (or `--set seeds=[0,1,2]`): the sweep's seeds, replacing the file's `seeds`.
    `seeds` is a sweep key, not a trial key, so it is taken out of the trial overrides here."""
    raw = overrides.pop("seeds", None) if flag is None else flag
    if raw is None:
        return None
    parts = [x.strip() for x in raw.split(",")] if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
    if not parts or any(isinstance(x, bool) or not str(x).lstrip("-").isdigit() for x in parts):
        raise ConfigError(f"--seeds: expected integers separated by commas, such as 0,1,2; got {raw!r}")
    seeds = [int(x) for x in parts]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {raw!r} repeats a seed; each seed runs every trial once")
    return seeds


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `rgsweep sweep` and `rgsweep tune`: data overrides, Ray, MLflow."""
    p.add_argument("--dataset", help="override the dataset of every trial")
    p.add_argument("--data-dir", help="override the data dir of every trial (relative to the current directory)")
    p.add_argument("--download", action="store_true", help="allow downloading the dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base trial key (repeatable)")
    p.add_argument("--ray-address", help="join this Ray cluster (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--storage-path", help="Ray Tune state (default mlruns/ray beside the store; s3://... for clusters)")
    p.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--verbose", action="store_true", help="also print Ray's status table (default: one progress line)")


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid sweep file on Ray Tune, every trial an MLflow run")
    p.add_argument("file", help="sweep file (sweeps/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and their count")
    p.add_argument("--smoke", action="store_true", help="tiny variant: the file's smoke overrides, 2 values per key")
    p.add_argument("--resume", action="store_true", help="continue the last run of this sweep; skip FINISHED trials")
    p.add_argument("--rerun-failed", action="store_true", help="with --resume: run FAILED trials again")
    p.add_argument("--cpus-per-trial", type=float, help="override resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override resources.gpu (fractions share a GPU)")
    p.add_argument("--pack", type=int, help="override pack: train up to this many compatible trials together")
    p.add_argument("--seeds", metavar="S,S,...", help="override seeds, e.g. 0,1,2 (also --set seeds=[0,1,2]): "
                                                     "results are then shown as mean ± std over them")
    add_run_args(p)
    p.set_defaults(func=cmd_sweep)


if __name__ == "__main__":
    from rgsweep.cli import main

    sys.exit(main(["sweep", *sys.argv[1:]]))
