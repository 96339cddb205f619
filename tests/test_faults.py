"""Fault injection against a real local Ray instance and a real store (SQLite, or a real `mlflow server`).

Each test breaks one thing a sweep meets in real life, then checks the store: after recovery exactly one
FINISHED run per trial, none RUNNING, nothing duplicated. Tests synchronise on what they can observe (a
file a trial writes, a run's status in the store, a line the driver prints), never on sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from infra import MlflowServer, free_port
from sweep_helpers import children, wait_for, write_sweep

from rgsweep import lifecycle, tracking
from rgsweep.cli import main
from rgsweep.sweep import run_sweep
from rgsweep.sweepfile import expand, load_spec

REPO = Path(__file__).resolve().parents[1]


def finished(client, experiment: str) -> list:
    return [r for r in children(client, experiment) if r.info.status == "FINISHED"]


def assert_one_finished_run_per_trial(client, experiment: str, path: Path) -> list:
    plan = expand(load_spec(path), path)
    runs = children(client, experiment)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["rgsweep.trial_key"] for r in done) == sorted(t.key for t in plan.trials)
    return done


class Driver:
    """`rgsweep sweep|tune` in a subprocess of its own session, its output read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        full_env = {**os.environ, "RAY_ADDRESS": "", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "rgsweep.cli", *args], cwd=cwd, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of output
            self.changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(x for x in self.lines if x is not None)

    def wait_line(self, text: str, timeout: float = 300.0) -> str:
        with self.changed:
            ok = self.changed.wait_for(lambda: any(x is None or text in x for x in self.lines), timeout)
            hit = [x for x in self.lines if x is not None and text in x]
        assert ok and hit, f"driver never printed {text!r}:\n{self.output[-3000:]}"
        return hit[0]

    def wait_exit(self, timeout: float = 300.0) -> int:
        self.proc.wait(timeout=timeout)
        with self.changed:
            self.changed.wait_for(lambda: self.lines and self.lines[-1] is None, 30)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def read_only(path: Path, on: bool) -> None:
    """Make a file unwritable even for root (the immutable attribute); tests run as root in CI."""
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)


def chattr_works(tmp: Path) -> str | None:
    probe = tmp / "probe"
    probe.write_text("x")
    try:
        read_only(probe, True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"cannot make a file immutable here (chattr +i needs root on ext4-like filesystems): {e}"
    try:
        with probe.open("a") as f:
            f.write("y")
        return "chattr +i did not stop writes here"
    except OSError:
        return None
    finally:
        read_only(probe, False)


# -- the store at the start -----------------------------------------------------------------------
def _silent_port() -> socket.socket:
    """A port that accepts connections and never answers: a hung server (timeouts, not refusals)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_tracking_server_exits_2_within_15_s_with_one_line(kind, tmp_path, capsys):
    silent = _silent_port() if kind == "silent" else None
    port = silent.getsockname()[1] if silent else free_port()
    path = write_sweep(tmp_path, "unreachable", grid={"label_noise": [0.0]})
    tune = tmp_path / "tune.yaml"
    tune.write_text(yaml.safe_dump({"name": "unreachable-tune", "base": {"dataset": "synthetic", "epochs": 8},
                                    "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}}}))
    try:
        for argv in (["sweep", str(path)], ["tune", str(tune), "--storage", f"sqlite:///{tmp_path / 'o.db'}"]):
            t0 = time.monotonic()
            code = main([*argv, "--tracking-uri", f"http://127.0.0.1:{port}"])
            elapsed = time.monotonic() - t0
            err = capsys.readouterr().err
            assert code == 2 and elapsed <= 15, (elapsed, err)
            assert err.count("\n") == 1 and "unreachable" in err and f"127.0.0.1:{port}" in err, err
            assert ("Connection refused" if kind == "refused" else "timed out") in err, err
    finally:
        if silent:
            silent.close()
    assert not (tmp_path / "o.db").exists()  # nothing was created


# -- the store failing mid-sweep ------------------------------------------------------------------
def hold(trial: str, at: int, gates: Path) -> dict:
    """A fault that stops `trial` at epoch `at` (its pid file says it is there) until `gates/<trial>` exists."""
    return {"hang_at": at, "pid_dir": str(gates), "until": str(gates / trial)}


def arrived(gates: Path, trial: str) -> bool:
    return (gates / f"{trial}.0.pid").exists()


@pytest.mark.slow
def test_sqlite_store_read_only_mid_sweep_is_retried_then_stops_and_resume_finishes(tmp_path, ray_session):
    reason = chattr_works(tmp_path)
    if reason:
        pytest.skip(reason)
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = tracking.get_client(uri)  # the schema, once
    path = write_sweep(tmp_path, "read-only-store", epochs=3, max_concurrent=1,
                       grid={"label_noise": [0.0, 0.5, 1.0]})
    first, second, third = (t.name for t in expand(load_spec(path), path).trials)
    gates = tmp_path / "gates"
    gates.mkdir()
    faults = {second: hold(second, 2, gates), third: hold(third, 2, gates)}
    driver = Driver(["sweep", str(path), "--num-cpus", "1", "--tracking-uri", uri], tmp_path,
                    env={"RGSWEEP_STORE_RETRY_S": "20", "RGSWEEP_FAULTS": json.dumps(faults)})
    try:
        wait_for(lambda: arrived(gates, second), f"{second} mid-training")
        read_only(db, True)  # a short outage: the driver retries and carries on
        (gates / second).touch()
        driver.wait_line("tracking store unavailable")
        read_only(db, False)
        driver.wait_line("tracking store back")
        wait_for(lambda: arrived(gates, third), f"{third} mid-training")
        read_only(db, True)  # now for longer than the driver's retry budget: it stops the trials
        (gates / third).touch()
        assert driver.wait_exit() == 1, driver.output[-3000:]
        err = [x for x in driver.output.splitlines() if x.startswith("rgsweep sweep: error:")]
        assert len(err) == 1 and "disk I/O error" in err[0] and "--resume" in err[0], driver.output[-3000:]
        assert "Traceback" not in driver.output
    finally:
        read_only(db, False)
        driver.kill()
    before = {r.info.run_name: r.info.run_id for r in finished(client, "read-only-store")}
    assert sorted(before) == sorted([first, second])
    code, counts = run_sweep(expand(load_spec(path), path), tracking_uri=uri, resume=True, verbose=0)
    assert code == 0 and counts["finished"] == 3, counts
    done = assert_one_finished_run_per_trial(client, "read-only-store", path)
    assert set(before.values()) <= {r.info.run_id for r in done}  # finished before the outage: kept, not rerun
    parents = {r.data.tags["mlflow.parentRunId"] for r in children(client, "read-only-store")}
    assert len(parents) == 1 and client.get_run(parents.pop()).info.status == "FINISHED"


def test_unwritable_artifact_location_leaves_warning_tags_never_running_runs(tmp_path, ray_session, client,
                                                                             tracking_uri):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("artifacts cannot go under a file, not even for root")
    client.create_experiment("artifacts-unwritable", artifact_location=str(blocker / "artifacts"))
    path = write_sweep(tmp_path, "artifacts-unwritable", grid={"label_noise": [0.0, 1.0]})
    plan = expand(load_spec(path), path)
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, verbose=0)
    assert code == 0 and counts["finished"] == 2, counts
    runs = children(client, "artifacts-unwritable")
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "FINISHED" and "test_acc" in r.data.metrics
        assert "Not a directory" in r.data.tags["rgsweep.warning.learning_curve.png"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and "rgsweep.warning.artifacts-unwritable.yaml" in parent.data.tags
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, resume=True, verbose=0)
    assert code == 0 and counts["finished"] == 2
    assert_one_finished_run_per_trial(client, "artifacts-unwritable", path)
    assert len(children(client, "artifacts-unwritable")) == 2  # nothing ran again


@pytest.mark.slow
def test_tracking_server_stopped_mid_sweep_then_restarted_and_resumed(tmp_path, ray_session):
    # tests/infra.py: a real `mlflow server` (artifacts through it), stoppable and restartable on its port
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    driver = None
    try:
        client = tracking.get_client(server.url)
        path = write_sweep(tmp_path, "server-down", epochs=3, max_concurrent=1, grid={"label_noise": [0.0, 0.5, 1.0]})
        first, second, _ = (t.name for t in expand(load_spec(path), path).trials)
        gates = tmp_path / "gates"
        gates.mkdir()
        faults = json.dumps({second: hold(second, 2, gates)})
        driver = Driver(["sweep", str(path), "--num-cpus", "1", "--tracking-uri", server.url], tmp_path,
                        env={"RGSWEEP_STORE_RETRY_S": "5", "RGSWEEP_FAULTS": faults})
        wait_for(lambda: arrived(gates, second), f"{second} mid-training")
        server.stop()
        (gates / second).touch()
        assert driver.wait_exit() == 1, driver.output[-3000:]
        err = [x for x in driver.output.splitlines() if x.startswith("rgsweep sweep: error:")]
        assert len(err) == 1 and "Connection refused" in err[0] and "--resume" in err[0], driver.output[-3000:]
        server.start()  # the same port, the same backend store
        (before,) = [r.info.run_id for r in finished(client, "server-down")]
        code, counts = run_sweep(expand(load_spec(path), path), tracking_uri=server.url, resume=True, verbose=0)
        assert code == 0 and counts["finished"] == 3, counts
        done = assert_one_finished_run_per_trial(client, "server-down", path)
        assert before in {r.info.run_id for r in done}
    finally:
        if driver is not None:
            driver.kill()
        server.stop()


# -- workers lost ---------------------------------------------------------------------------------
class Killer:
    """Kills (SIGKILL) every trial process that announces itself with a pid file in `pid_dir`."""

    def __init__(self, pid_dir: Path):
        self.pid_dir, self.killed = pid_dir, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.1):
            for f in sorted(self.pid_dir.glob("*.pid")):
                if f.name not in self.killed:
                    self.killed.append(f.name)
                    try:
                        os.kill(int(f.read_text()), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_a_lost_trial_is_rerun_by_plain_resume(tmp_path, ray_session, client,
                                                                               tracking_uri):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    path = write_sweep(tmp_path, "workers-lost", epochs=4, retries=1, grid={"label_noise": [0.0, 0.5, 1.0]})
    plan = expand(load_spec(path), path)
    once, twice, buggy = (t.name for t in plan.trials)
    faults = {once: {"hang_at": 2, "pid_dir": str(pid_dir), "times": 1},   # lost once: Ray's retry finishes it
              twice: {"hang_at": 2, "pid_dir": str(pid_dir), "times": 2},  # lost on its retry too: infrastructure
              buggy: 2}                                                     # its own code raises: a trial error
    with Killer(pid_dir) as killer:
        code, counts = run_sweep(plan, tracking_uri=tracking_uri, inject_failure=faults, verbose=0)
    assert sorted(killer.killed) == sorted([f"{once}.0.pid", f"{twice}.0.pid", f"{twice}.1.pid"])
    assert code == 1 and counts == {"trials": 3, "finished": 1, "failed": 1, "lost": 1, "killed": 0, "missing": 0}
    runs = {}
    for r in children(client, "workers-lost"):
        runs.setdefault(r.info.run_name, []).append(r)
    assert sorted(r.info.status for r in runs[once]) == ["FINISHED", "KILLED"]
    assert [r.data.tags["rgsweep.stop_reason"] for r in runs[once] if r.info.status == "KILLED"] == ["worker_lost"]
    assert sorted(r.info.status for r in runs[twice]) == ["FAILED", "KILLED"]
    (lost,) = [r for r in runs[twice] if r.info.status == "FAILED"]
    assert lost.data.tags["rgsweep.failure"] == "infrastructure" and "ActorDiedError" in lost.data.tags["rgsweep.error"]
    (bug,) = runs[buggy]
    assert bug.info.status == "FAILED" and bug.data.tags["rgsweep.failure"] == "trial"
    assert "injected failure at epoch 2" in bug.data.tags["rgsweep.error"]

    code, counts = run_sweep(plan, tracking_uri=tracking_uri, resume=True, verbose=0)  # the lost trial only
    assert code == 1 and counts == {"trials": 3, "finished": 2, "failed": 1, "lost": 0, "killed": 0, "missing": 0}
    assert [r.info.status for r in children(client, "workers-lost") if r.info.run_name == buggy] == ["FAILED"]
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, resume=True, rerun_failed=True, verbose=0)
    assert code == 0 and counts["finished"] == 3
    assert_one_finished_run_per_trial(client, "workers-lost", path)


# -- two drivers ----------------------------------------------------------------------------------
def test_a_lease_is_alive_while_its_holder_beats_and_dead_after_the_ttl():
    now = time.time()
    here, there = socket.gethostname(), "another-host"
    held = {"holder": "abc", "state": "held"}
    assert lifecycle.Lease.alive({**held, "host": here, "pid": str(os.getpid()), "heartbeat": str(now)})
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert not lifecycle.Lease.alive({**held, "host": here, "pid": dead_pid, "heartbeat": str(now)})  # at once
    assert lifecycle.Lease.alive({**held, "host": there, "pid": dead_pid, "heartbeat": str(now - 5)})
    assert not lifecycle.Lease.alive({**held, "host": there, "pid": "1", "heartbeat": str(now - 3600)})
    assert not lifecycle.Lease.alive({**held, "host": there, "pid": "1", "heartbeat": str(now), "state": "released"})
    assert not lifecycle.Lease.alive({})


@pytest.mark.slow
def test_tune_resume_while_the_study_runs_is_refused_and_marks_nothing_failed(tmp_path, ray_session, tracking_uri,
                                                                              capsys):
    import optuna

    tuning = tmp_path / "tune-busy.yaml"
    tuning.write_text(yaml.safe_dump({
        "name": "tune-busy", "base": {"dataset": "synthetic", "epochs": 5, "val_fraction": 0.2, "device": "cpu",
                                      "fit_threshold": None},
        "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}}, "n_trials": 2, "max_concurrent": 1,
        "pruning": {"enabled": False},
    }))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["tune", str(tuning), "--tracking-uri", tracking_uri, "--storage", storage,
            "--baseline-out", str(tmp_path / "best.yaml")]
    driver = Driver([*args, "--num-cpus", "1"], tmp_path)
    client = tracking.get_client(tracking_uri)
    try:
        wait_for(lambda: any(r.info.status == "RUNNING" for r in children(client, "tune-busy")), "a running trial")
        os.kill(driver.proc.pid, signal.SIGSTOP)  # the first driver holds still (alive) while the second tries
        try:
            assert main([*args, "--resume"]) == 2
        finally:
            os.kill(driver.proc.pid, signal.SIGCONT)
        err = capsys.readouterr().err
        assert "tune 'tune-busy' is being run by another driver" in err and f"pid {driver.proc.pid}" in err
        assert err.count("\n") == 1
        study = optuna.load_study(study_name="tune-busy", storage=storage)
        assert optuna.trial.TrialState.FAIL not in [t.state for t in study.trials]
        assert driver.wait_exit() == 0, driver.output[-3000:]
    finally:
        driver.kill()
    study = optuna.load_study(study_name="tune-busy", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(r.info.status for r in children(client, "tune-busy")) == ["FINISHED", "FINISHED"]


# -- make tune on a fresh clone -------------------------------------------------------------------
@pytest.mark.slow
def test_make_tune_on_a_fresh_clone_leaves_git_clean_and_records_no_absolute_path(tmp_path):
    """The clone runs this checkout's installed rgsweep (VENV points at it; `-o install` skips the install):
    what is checked is which files `make tune` writes in the clone and what they say."""
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git")
    if subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip():
        pytest.skip("the checkout has uncommitted changes: a clone would not hold them")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RGSWEEP_STORAGE")}
    env["RAY_ADDRESS"] = ""
    make = subprocess.run(
        ["make", "-o", "install", "tune", f"VENV={venv}", "ARGS=--n-trials 2 --set epochs=6 --num-cpus 2"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=900,
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout == ""
    written = clone / "mlruns" / "baselines" / "tune-demo.yaml"
    doc = yaml.safe_load(written.read_text())
    assert doc["source"]["storage"] == "sqlite:///mlruns/optuna.db"  # as given: relative to the clone
    assert doc["source"]["tuning_file"] == "sweeps/tune-demo.yaml"
    assert str(tmp_path) not in written.read_text()
