"""What runs on a Ray worker: the sweep's and the study's trainables, and what they send to the driver.

A worker process imports the module that defines its trainable. Kept apart from sweep.py and tune.py
(and so from lifecycle.py and tracking.py), a worker imports torch, Ray Tune (which brings pandas and,
through raytune.py, Optuna: 0.1 s once Ray is in) and the training loop, never MLflow, matplotlib or the
drivers' modules: a new worker's imports take 5.7 s instead of 8.4-9.2 s (benchmarks/README.md, "Data
hand-off"). Keep it so: nothing here may import tracking, lifecycle, sweep or tune (tests/test_walls.py).

- `sweep_trainable`: one grid trial, or a pack of them (`train_packed`), reporting through
  `EpochBuffer` (epochs batched to the driver), then each member's summary.
- `study_trainable`: one Optuna trial, reporting every epoch (ASHA and Optuna read them), then its summary.
- `SUMMARY_KEY`, `EPOCHS_KEY`, `FAILED_KEY`: the keys of those results, read by the drivers' trackers.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rgsweep.config import TrialConfig, make_config
from rgsweep.packing import trial_device

# What a trainable's results carry (read by sweep.py's and tune.py's trackers).
SUMMARY_KEY = "rgsweep_summary"  # the trial's summary result, JSON
EPOCHS_KEY = "rgsweep_epochs"  # a batch of epochs (sweep trials), JSON
FAILED_KEY = "rgsweep_failed"  # set on a study trial's summary result when it diverged (Optuna: FAIL)
REPORT_INTERVAL_S = 1.0


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


def granted_device(cfg: TrialConfig, granted: dict[str, float]) -> TrialConfig:
    """The trial's config with `device: auto` made `cpu` when Ray granted it no GPU: Ray leaves
    CUDA_VISIBLE_DEVICES alone for such a trial (rgsweep/packing.py), so torch would see the node's GPUs
    and put every one of them on GPU 0, uncounted by Ray. With a GPU share `auto` stays (CUDA)."""
    return cfg.model_copy(update={"device": trial_device(cfg.device, float(granted.get("GPU") or 0.0))})


# -- grid sweeps --------------------------------------------------------------------------------
def sweep_trainable(config: dict[str, Any], payloads: dict[str, dict[str, Any]], datasets: dict[str, Any]) -> None:
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

    configs = [granted_device(TrialConfig(**m["config"]), granted) for m in members]
    interval = payload.get("report_interval", REPORT_INTERVAL_S)
    reports = [EpochBuffer(m["name"], raytune.report, m.get("inject_failure"), interval) for m in members]
    # An error raised by the trial's own code is reported as the trial's outcome (FAILED), never raised
    # to Ray: what Ray sees fail is then a lost process or node, which FailureConfig retries.
    try:
        if len(members) == 1:
            try:
                results: list[Any] = [train(configs[0], reports[0], dataset=dataset)]
            except Exception as e:  # noqa: BLE001 - DivergedError included
                results = [e]
        else:
            from rgsweep.packed import train_packed

            try:
                results = train_packed(configs, reports, dataset=dataset)
            except Exception as e:  # noqa: BLE001 - the whole pack failed
                results = [e] * len(members)
    finally:  # a trial that raises still sends the epochs it trained, so its FAILED run has its curve
        for r in reports:
            r.flush()
    # A pack shares its device: each member is charged an equal part of the time the pack held it.
    cost = trial_cost(configs[0].device, (time.monotonic() - started) / len(members), granted)
    for m, res in zip(members, results):
        if isinstance(res, DivergedError):
            summary, status = res.summary, "diverged"
        elif isinstance(res, BaseException):  # this trial raised: it alone is FAILED
            summary, status = {"error": "".join(traceback.format_exception(res))[-4000:]}, "failed"
        else:
            summary, status = res, "finished"
        summary["data_fetch_s"] = fetch_s
        summary.update(cost)
        last = summary.pop("last_epoch", None) or {}
        # The last epoch's numbers ride along so Ray's table shows them for finished trials too.
        raytune.report({**last, "member": m["name"],
                        SUMMARY_KEY: json.dumps({"status": status, "ray_node": raytune.node_id(), **summary},
                                                default=str)})


class EpochBuffer:
    """A trial's per-epoch `report`, sending its epochs to the driver in batches.

    A Ray report is a round trip to the driver (the trial waits for it), and the driver then writes the
    epoch to MLflow: 17 ms an epoch on a 2-core machine, ~40 ms with two trials running beside the
    driver, more than a digits epoch takes to train (benchmarks/sweep_overhead.py).
    So epochs are sent together, at most every `interval` seconds (the first epoch at once, so Ray's
    table fills in), and the driver logs each batch in one MLflow call. Every epoch still becomes its
    own MLflow step; `flush` sends what is left (the trainable calls it before the summary and when
    the trial raises). `fail_at` injects a fault for tests (see `inject_fault`).
    """

    def __init__(self, name: str, send: Any, fail_at: Any = None, interval: float = REPORT_INTERVAL_S):
        self.name, self.send, self.fail_at, self.interval = name, send, fail_at, interval
        self.pending: list[dict[str, Any]] = []
        self.last_sent: float | None = None

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self.fail_at is not None:
            inject_fault(self.name, self.fail_at, metrics["epoch"], self.flush)
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


def inject_fault(name: str, fault: Any, epoch: int, flush: Any) -> None:
    """Fault injection for tests (`run_sweep(inject_failure={trial name: fault})`, or $RGSWEEP_FAULTS as
    JSON for a driver in a subprocess), checked before epoch `epoch` is reported:

    - an int N: raise at epoch N, as a bug in the trial's code would;
    - `{"hang_at": N, "pid_dir": D, "times": T, "until": F}`: at epoch N, on the trial's first T attempts,
      send the epochs so far, write this process's pid to `D/<name>.<attempt>.pid`, then wait: until file
      F exists (the test has broken something and lets the trial go on), or, without F, to be killed
      from outside (a worker lost to the OOM killer or a dead node).
    """
    if not isinstance(fault, dict):
        if epoch >= fault:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        return
    pid_dir = Path(fault["pid_dir"])
    attempt = len(list(pid_dir.glob(f"{name}.*.pid")))
    if epoch < fault["hang_at"] or attempt >= fault.get("times", 1):
        return
    flush()
    tmp = pid_dir / f".{name}.{attempt}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(pid_dir / f"{name}.{attempt}.pid")  # atomic: the test never reads a half-written pid
    deadline = time.monotonic() + fault.get("timeout", 300)
    release = Path(fault["until"]) if fault.get("until") else None
    while time.monotonic() < deadline:
        if release is not None and release.exists():
            return
        threading.Event().wait(0.1)
    raise RuntimeError("injected hang: nobody released or killed this trial")


# -- Optuna studies -----------------------------------------------------------------------------
def trial_config(base: dict[str, Any], params: dict[str, Any], where: str = "") -> TrialConfig:
    """The trial's config: the base with its sampled values on top (driver and worker use this one function)."""
    return make_config({**base, **params}, where=where)


def study_trainable(config: dict[str, Any], base: dict[str, Any], datasets: dict[str, Any]) -> None:
    """Train one sampled config on the study's dataset (from the object store); report every epoch (ASHA
    and Optuna read `val_acc` from them), then a summary result that marks the trial as ended by itself
    (not pruned) and carries the run summary."""
    import torch

    from rgsweep import raytune
    from rgsweep.train import DivergedError, train

    started = time.monotonic()
    granted = raytune.trial_resources()
    cfg = granted_device(trial_config(base, config), granted)
    torch.set_num_threads(max(1, int(granted.get("CPU", 1) or 1)))
    t_fetch = time.perf_counter()
    (handle,) = datasets.values()  # one dataset per study: dataset, data_dir and subset are not tunable
    dataset = raytune.get_dataset(handle)
    fetch_s = time.perf_counter() - t_fetch
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        last.clear()
        last.update(metrics)
        raytune.report(metrics)

    # An error raised by the trial's own code is its outcome (FAIL), never raised to Ray: what Ray sees
    # fail is then a lost process or node, which FailureConfig retries.
    try:
        summary, status = train(cfg, report, dataset=dataset), "complete"
    except DivergedError as e:
        summary, status = e.summary, "diverged"
    except Exception as e:  # noqa: BLE001
        summary, status = {"error": "".join(traceback.format_exception(e))[-4000:]}, "failed"
    summary.pop("last_epoch", None)
    summary["data_fetch_s"] = fetch_s
    summary.update(trial_cost(cfg.device, time.monotonic() - started, granted))
    # The last epoch's numbers ride along: Optuna's value is this result's val_acc (that epoch's).
    raytune.report({**last, FAILED_KEY: status != "complete",
                    SUMMARY_KEY: json.dumps({"status": status, "ray_node": raytune.node_id(), **summary},
                                            default=str)})
