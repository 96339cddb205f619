"""A sweep's life, for `rgsweep sweep` and `rgsweep tune` alike:

    check the store -> lease on the parent run -> Ray -> trials -> close everything

`live(job, ...)` runs those steps for a *job*: the sweep's or the study's tracker (sweep.SweepTracker,
tune.StudyTracker), which knows its own parent run, trials and table. What can go wrong, and what the
user sees (README "Resume and failures"):

- The store is unreachable at the start: one line, exit 2, within ~15 s, before Ray starts.
- Another driver is running the same sweep (its lease is alive): one line naming it, exit 2, nothing
  touched. A lease whose holder is dead (its pid is gone on this host, or no heartbeat for
  LEASE_TTL_S) is taken over, and only then are that driver's RUNNING runs closed.
- The store fails mid-sweep: every store call is retried for a bounded time (tracking.retry); if it
  stays down the trials are stopped, the exit code is 1 with one line, and `--resume` finishes later.
- A worker process dies (out of memory, a node lost): Ray retries the trial (`retries:`); the lost
  attempt's run is closed KILLED, and a trial still lost after its retries is FAILED with
  `rgsweep.failure=infrastructure`, which a plain `--resume` runs again.
- SIGINT or SIGTERM: the first stops the trials and closes their runs as KILLED (exit 130); a second
  interrupts at once, and the runs are still closed on the way out.

MLflow calls stay in tracking.py and Ray calls in raytune.py; this module only orders them. It also
holds what a running sweep and study share (a trial's cost, the store's folders, the UI's address); what
their files and command lines share, checked before anything runs, is in jobfile.py.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rgsweep import tracking
from rgsweep.config import ConfigError
from rgsweep.metrics import EPOCH_SERIES
from rgsweep.stores import artifact_root

EPOCH_KEYS = {"epoch", *EPOCH_SERIES}  # what the driver logs per epoch (rgsweep/metrics.py)
LEASE_TTL_S = 60.0  # a lease with no heartbeat for this long is dead ($RGSWEEP_LEASE_TTL_S)


# -- the job: what sweep.py and tune.py hand to `live` ---------------------------------------------
class Job(Protocol):
    command: str  # "sweep" or "tune", for messages
    name: str  # the sweep's or study's name (Ray's experiment folder starts with it)

    def find_parent(self, client: Any) -> Any | None:
        """The newest parent run of this sweep or study (its lease is checked), or None."""

    def open(self, lease: Lease) -> bool:
        """Create or reopen the parent run under `lease`; True when there are trials to run."""

    def launch(self, callback: Any, should_stop: Callable[[], bool], folder: str) -> None:
        """Run the trials on Ray (raytune.run_trials) with this callback and stop condition."""

    parent: Any  # the parent run once opened (tracking.RunTracker), else None

    def close(self, stop: Stop) -> int:
        """Close the open runs and the parent, print the outcome; returns the exit code."""

    def resume_hint(self) -> str:
        """The command that finishes the job later."""


class Stop:
    """Why the trials must stop (first reason wins). Ray's stopper polls it; plain strings only, so
    Tune can pickle it into its experiment state."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "SIGINT", "SIGTERM", "interrupted", "store", "lease", "crashed"
        self.store_error: str | None = None
        self.lease_lost: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def store_failed(self, e: BaseException) -> None:
        self.store_error = self.store_error or tracking.first_line(e)
        self.request("store")

    @property
    def interrupted(self) -> bool:
        return self.reason in ("SIGINT", "SIGTERM", "interrupted")

    @property
    def writable(self) -> bool:
        """Whether runs may still be written: not when the store is down or the sweep is someone else's."""
        return self.store_error is None and self.lease_lost is None

    def __call__(self) -> bool:
        return self.reason is not None


# -- the lease ------------------------------------------------------------------------------------
class LeaseHeld(ConfigError):
    """Another live driver holds the sweep (exit 2)."""


def lease_ttl() -> float:
    return float(os.environ.get("RGSWEEP_LEASE_TTL_S", LEASE_TTL_S))


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Lease:
    """Which driver owns a sweep: tags `rgsweep.lease.*` on its parent run (holder, host, pid, heartbeat).

    Alive while the holder beats every ttl/6 s; dead when the heartbeat is older than the ttl, or at
    once when the holder's pid is gone on this host. Taking over writes our tags and reads them back;
    two drivers taking over in the same instant is the window this leaves (MLflow has no atomic
    compare-and-set). The heartbeat also checks that the lease is still ours: a driver whose lease
    was taken over (judged dead during a long store outage) stops its trials and leaves the runs alone.
    """

    def __init__(self, client: Any):
        self.client = client
        self.me = {"holder": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}
        self.run_id: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def tags(self) -> dict[str, str]:
        """Tags for a new parent run: held by us from its first write."""
        return tracking.lease_tags({**self.me, "heartbeat": f"{time.time():.1f}", "state": "held"})

    @staticmethod
    def alive(lease: dict[str, str]) -> bool:
        if lease.get("state") != "held":
            return False
        try:
            age = time.time() - float(lease["heartbeat"])
        except (KeyError, ValueError):
            return False
        if age > lease_ttl():
            return False
        if lease.get("host") == socket.gethostname():
            try:
                return pid_alive(int(lease.get("pid", "")))
            except ValueError:
                return False
        return True

    @staticmethod
    def describe(lease: dict[str, str]) -> str:
        try:
            age = f", heartbeat {time.time() - float(lease['heartbeat']):.0f} s ago"
        except (KeyError, ValueError):
            age = ""
        return f"{lease.get('host', '?')} pid {lease.get('pid', '?')} (lease {lease.get('holder', '?')}{age})"

    def check(self, title: str, parent: Any) -> None:
        """Refuse (LeaseHeld, exit 2) when a live driver other than us holds `parent`."""
        lease = {k.removeprefix(tracking.TAG + "lease."): v for k, v in parent.data.tags.items()
                 if k.startswith(tracking.TAG + "lease.")}
        if lease.get("holder") != self.me["holder"] and self.alive(lease):
            raise LeaseHeld(
                f"{title} is being run by another driver: {self.describe(lease)}; wait for it to end, or stop "
                f"it (a dead driver's lease is taken over at once on its own host, after {lease_ttl():.0f} s "
                "without a heartbeat elsewhere)"
            )

    def take(self, title: str, parent: Any) -> None:
        """Take `parent` over (its driver is gone); afterwards its runs are ours to close."""
        self.check(title, parent)
        run_id = parent.info.run_id
        tracking.write_lease(self.client, run_id, {**self.me, "heartbeat": f"{time.time():.1f}", "state": "held"})
        back = tracking.read_lease(self.client, run_id)
        if back.get("holder") != self.me["holder"]:
            raise LeaseHeld(f"{title} was just taken by another driver: {self.describe(back)}")
        self.run_id = run_id

    def hold(self, run_id: str) -> None:
        """A new parent created with `tags()`."""
        self.run_id = run_id

    def beat(self, stop: Stop) -> None:
        """Heartbeat in a daemon thread until `end()`; single attempts, so a store outage only skips beats."""
        if self.run_id is None:
            return

        def loop() -> None:
            while not self._done.wait(lease_ttl() / 6):
                try:
                    current = tracking.read_lease(self.client, self.run_id, budget=0)
                    if current.get("holder") != self.me["holder"]:
                        stop.lease_lost = self.describe(current)
                        stop.request("lease")
                        return
                    tracking.write_lease(self.client, self.run_id, {"heartbeat": f"{time.time():.1f}"}, budget=0)
                except Exception:  # noqa: BLE001 - store down: the main thread reports it; beat again later
                    continue

        self._thread = threading.Thread(target=loop, name="rgsweep-lease", daemon=True)
        self._thread.start()

    def end(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def release(self) -> None:
        if self.run_id is not None:
            tracking.write_lease(self.client, self.run_id, {"state": "released"}, budget=5)


# -- signals --------------------------------------------------------------------------------------
class Signals:
    """SIGINT and SIGTERM. While trials run, the first asks them to stop (`stop`); a second, or one
    before trials start, raises KeyboardInterrupt at once. Either way `live` closes every run."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop: Stop | None = None
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.getsignal(s) for s in self.SIGNALS}
            self.install()
        return self

    def install(self) -> None:
        """(Re)install our handlers: ray.init sets its own SIGTERM handler (sys.exit), so call again after it."""
        if self.saved:
            for s in self.SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop is not None and not self.stop():
            self.stop.request(name)
            print(f"\n{name}: stopping the trials and closing their runs (again to stop at once)",
                  file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)


# -- the Ray callback -----------------------------------------------------------------------------
class Guarded:
    """The tracker's Ray hooks, guarded: a StoreError (the store stayed down through its retries) stops
    the sweep instead of escaping into Ray; once the store is down or the lease lost, hooks write nothing."""

    HOOKS = ("trial_started", "trial_result", "trial_completed", "trial_errored", "trial_retried")

    def __init__(self, tracker: Any, stop: Stop):
        self.tracker, self.stop = tracker, stop

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in self.HOOKS:
            raise AttributeError(name)
        hook = getattr(self.tracker, name)

        def call(*args: Any) -> None:
            if not self.stop.writable:
                return
            try:
                hook(*args)
            except tracking.StoreError as e:
                self.stop.store_failed(e)
                print(f"{e}; stopping the trials", file=sys.stderr, flush=True)

        return call


# -- a sweep's life -------------------------------------------------------------------------------
def ray_folder(name: str, lease: Lease) -> str:
    """Ray Tune's experiment folder: unique per driver (two sweeps started in the same second differ)."""
    return f"{tracking.safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{lease.me['holder'][:6]}"


def live(job: Job, *, tracking_uri: str | None = None, ray_address: str | None = None,
         num_cpus: int | None = None) -> int:
    """Check the store, take the lease, run the trials on Ray, close everything; the exit code.
    Whatever ends the run (the last trial, a signal, the store, a bug), the runs are closed on the
    way out; a refusal (another live driver, a study that exists) raises before anything is opened."""
    from rgsweep import raytune

    with Signals() as signals:
        client = check_store(tracking_uri)
        lease, stop = Lease(client), Stop()
        try:
            parent = job.find_parent(client)
            if parent is not None:
                lease.check(f"{job.command} {job.name!r}", parent)
            work = job.open(lease)
            lease.beat(stop)
            signals.stop = stop
            if work:
                started = raytune.start_ray(ray_address, num_cpus=num_cpus)
                try:
                    signals.install()  # after ray.init, which sets its own SIGTERM handler
                    job.launch(raytune.TrackingCallback(Guarded(job, stop)), stop, ray_folder(job.name, lease))
                finally:
                    raytune.stop_ray(started)
        except KeyboardInterrupt:
            stop.request("interrupted")
        except tracking.StoreError as e:
            stop.store_failed(e)
        except BaseException:  # a refusal before anything was opened, or a bug: closed below, then raised
            stop.request("crashed")
            raise
        finally:
            signals.stop = None
            lease.end()
            if job.parent is not None:
                code = finish(job, stop, lease)
            elif stop.store_error:
                code = store_down(job, stop.store_error)
            else:  # interrupted (or refused) before a parent run existed: nothing to close
                code = 130
        return code


def check_store(tracking_uri: str | None) -> Any:
    """The store's client, or ConfigError (exit 2, one line) within ~15 s when it is unreachable."""
    try:
        return tracking.check_store(tracking_uri)
    except (tracking.StoreError, ValueError) as e:
        raise ConfigError(str(e)) from None


def finish(job: Job, stop: Stop, lease: Lease) -> int:
    """Close the job on whatever path got here; one line and exit 1 when the store or the lease is gone."""
    if stop.lease_lost:
        print(f"rgsweep {job.command}: error: {job.command} {job.name!r} was taken over by {stop.lease_lost}; "
              "this driver stopped its trials and left their runs to it", file=sys.stderr)
        return 1
    try:
        code = job.close(stop)
        lease.release()
    except tracking.StoreError as e:
        stop.store_failed(e)
    if stop.store_error:
        return store_down(job, stop.store_error)
    return code


def store_down(job: Job, error: str) -> int:
    print(f"rgsweep {job.command}: error: {error}; trials stopped, nothing lost: once the store is back, "
          f"`{job.resume_hint()}` finishes the {job.command}", file=sys.stderr)
    return 1


# -- shared by sweep.py and tune.py ---------------------------------------------------------------
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
    root = artifact_root(uri)
    base = Path(root[len("file://"):]) if root else Path("mlruns").resolve()
    return str(base / "ray")


def ui_hint(uri: str, exp_id: str, experiment: str | None = None) -> str:
    """Where to look next: the tracking server's own address when the store is a server; for a local
    store, the command that serves it (it prints the address, on the port it was given)."""
    base = tracking.server_base(uri)
    if base:
        return f"MLflow UI: {tracking.runs_url(base, exp_id)}"
    which = f"experiment {experiment!r}" if experiment else f"experiment {exp_id}"
    return f"MLflow UI: `make ui` (or `rgsweep ui --tracking-uri {uri}`) prints the address of {which}"
