"""The progress line of sweeps and studies: unit tests on a fake clock, then a real sweep without a terminal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import yaml

from rgsweep.progress import Progress, fmt_duration

SUMMARY = "rgsweep_summary"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def summary(status: str = "finished", epochs_run: int | None = None, **metrics) -> dict:
    """A trial's last result: its metrics, and its summary as the trainables send it (JSON)."""
    counted = {} if epochs_run is None else {"epochs_run": epochs_run}
    return {**metrics, SUMMARY: json.dumps({"status": status, **counted})}


def make(total: int = 3, live: bool = False, **kw) -> tuple[Progress, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    p = Progress(total, stream=out, live=live, clock=clock, interval=30.0, **kw)
    return p, out, clock


def test_plain_lines_on_each_trial_end_and_a_heartbeat_without_control_characters():
    p, out, clock = make(3, epochs=lambda name: 10)
    p.trial_started("r1", {})
    p.trial_started("r2", {})
    first = out.getvalue()  # a plain line is written when due (the first one at once), not on every event
    clock.t = 10
    p.trial_result("r1", {"epoch": 5})
    p.tick()
    assert out.getvalue() == first  # nothing new within the 30 s interval
    clock.t = 40
    p.tick()  # heartbeat
    assert out.getvalue().count("\n") == 2
    assert "trials 0/3 done, 2 running" in out.getvalue().splitlines()[-1]
    # r1 ran 5 of its 10 epochs in its first 10 s: 2 s an epoch. Left: r1's 5 epochs (10 s), r2's 10 (20 s) and
    # the third trial's 10 (20 s), two at a time: 25 s.
    assert "40s elapsed, ~25s left" in out.getvalue().splitlines()[-1]
    clock.t = 41
    p.trial_result("r1", summary(test_acc=0.8, gen_gap=0.2))  # a trial end: a line at once
    p.trial_errored("r2", "boom")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("progress: trials ") for line in lines)
    assert lines[-1].startswith("progress: trials 2/3 done (1 finished, 1 failed), 0 running | 41s elapsed")
    assert lines[-1].endswith("| best test_acc 0.800 gen_gap 0.200 (r1)")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    p.close()  # the same state as the last line: not written twice
    assert out.getvalue().splitlines() == lines


def test_the_estimate_learns_how_long_trials_run_from_those_that_stopped_at_fit():
    p, out, clock = make(4, epochs=lambda name: 100)
    p.trial_started("a", {})
    p.trial_started("b", {})
    clock.t = 15
    p.trial_result("b", {"epoch": 5})
    p.trial_result("a", summary(test_acc=0.5, epochs_run=10))  # fitted at epoch 10 of its 100
    # 15 epochs in 30 trial-seconds: 2 s an epoch. A trial runs 10 epochs (a's), so b has 5 left (10 s) and the two
    # trials not started 10 each (20 s each), two at a time: 25 s. (Counting each trial as its 100 epochs: 42 s.)
    assert "15s elapsed, ~25s left" in p.line()
    # b runs past that length: half of what is left to its max, (100 - 30) / 2 epochs at 55 s / 40 epochs.
    clock.t = 40
    p.trial_result("b", {"epoch": 30})
    assert "~48s left" in p.line()
    p.trial_result("b", summary(test_acc=0.5, epochs_run=30))
    p.trial_started("c", {})
    p.trial_result("c", summary("failed", epochs_run=1))  # a failure's epochs cost time; they are no length
    assert p.lengths == {"": [10, 30]} and p.cost == {"": [55.0, 41]}
    # One trial left, of the mean length (20 epochs) at 55 / 41 s an epoch, alone: 27 s, not halved for 2 slots.
    assert "~27s left" in p.line()


def test_each_architecture_has_its_own_time_per_epoch_and_the_queue_is_known():
    names = ["cnn-a", "cnn-b", "mlp-a", "mlp-b"]
    p, out, clock = make(4, epochs=lambda name: 50, group=lambda name: name.split("-")[0], queued=names)
    p.trial_started("cnn-a", {})
    clock.t = 20
    p.trial_result("cnn-a", summary(epochs_run=10))  # 2 s an epoch
    p.trial_started("mlp-a", {})
    clock.t = 21
    p.trial_result("mlp-a", summary(epochs_run=10))  # 0.1 s an epoch
    # cnn-b: 10 epochs x 2 s, mlp-b: 10 x 0.1 s, one at a time (never two seen running): 21 s.
    assert "~21s left" in p.line()
    p.trial_started("mlp-b", {})
    p.trial_started("cnn-b", {})
    # Two at once now: the longest trial alone bounds it, cnn-b's 20 s.
    assert "~20s left" in p.line()


def test_best_is_the_best_finished_trial_and_failures_do_not_count():
    p, out, clock = make(4, metric="val_loss", mode="min", also=())
    for rid in ("a", "b", "c", "d"):
        p.trial_started(rid, {})
    p.trial_result("a", summary(val_loss=0.5))
    p.trial_result("b", summary("diverged", val_loss=0.01))  # diverged: failed, never best
    p.trial_result("c", summary(val_loss=0.3))
    p.trial_result("d", summary(val_loss=0.4))
    assert p.ended == {"finished": 3, "failed": 1, "stopped": 0}
    assert p.line().endswith("best val_loss 0.300 (c)")


def test_a_packed_ray_trial_counts_each_member_and_a_pruned_trial_is_named_so():
    names = lambda ray_id, config: config["trial"].split("|")
    p, out, clock = make(3, names=names, stopped="pruned")
    p.trial_started("r1", {"trial": "x|y"})
    p.trial_started("r2", {"trial": "z"})
    assert p.line().startswith("trials 0/3 done, 3 running")
    p.trial_result("r1", {"member": "y", "epoch": 1})
    p.trial_result("r1", summary(member="y", test_acc=0.9))
    p.trial_result("r1", summary("failed", member="x"))
    p.trial_completed("r1")  # both members already ended: nothing more
    p.trial_completed("r2")  # no summary: stopped by the scheduler
    assert p.line().startswith("trials 3/3 done (1 finished, 1 failed, 1 pruned), 0 running")
    assert "0s left" in p.line() and p.line().endswith("(y)")


def test_live_line_redraws_in_place_and_ends_with_a_newline():
    p, out, clock = make(2, live=True)
    p.trial_started("a", {})
    clock.t = 0.1
    p.tick()  # within the redraw interval: not drawn again
    clock.t = 1.0
    p.tick()
    p.trial_result("a", summary(test_acc=1.0, gen_gap=0.0))
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")  # close: same text, not redrawn
    assert text.split("\r")[-1].startswith("trials 1/2 done (1 finished), 0 running | 1s elapsed")


def test_progress_pickles_without_its_stream():
    """Tune pickles its callbacks (with Ray's cloudpickle); a captured stream (pytest's, a notebook's) does not."""
    from ray import cloudpickle as pickle

    stream = io.StringIO()
    progress = Progress(3, stream=stream, live=False)
    progress.start("a")
    copy = pickle.loads(pickle.dumps(progress))
    assert copy.stream is sys.stderr and list(copy.running) == ["a"] and progress.stream is stream


def test_durations_read_like_a_clock():
    assert [fmt_duration(s) for s in (0, 59.4, 61, 3600 + 125)] == ["0s", "59s", "1m01s", "1h02m"]


def test_sweep_without_a_terminal_prints_progress_lines_and_no_status_table(tmp_path, tracking_uri, client):
    """A real sweep, its output piped (as in CI): the progress lines are there, Ray's table is not.
    The sweep's parent run also carries the data figure."""
    doc = {
        "name": "progress-pipe",
        "base": {"dataset": "synthetic", "arch": "mlp1x512", "epochs": 2, "lr": 0.05, "device": "cpu",
                 "fit_threshold": None},
        "grid": {"setting": [{"lr": 0.05}, {"lr": 10.0, "momentum": 0.99, "arch": "mlp3x512", "preprocess": "none",
                                              "epochs": 20}]},
    }
    path = tmp_path / "progress-pipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-m", "rgsweep.cli", "sweep", str(path), "--num-cpus", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # the diverging trial fails the sweep
    lines = [line for line in out.splitlines() if line.startswith("progress: ")]
    assert lines, out[-3000:]
    assert any(line.startswith("progress: trials 1/2 done") for line in lines), lines
    assert lines[-1].startswith("progress: trials 2/2 done (1 finished, 1 failed), 0 running"), lines
    assert "best test_acc" in lines[-1] and "mlp1x512" in lines[-1]
    # No status table, no redraws, no slow-step warnings, nothing about Ray's own result files (off).
    for needle in ("Trial status", "== Status ==", "+--", "Current time", "\r", "\x1b[", "performance bottleneck",
                   "Failed to fetch metrics", "Traceback"):
        assert needle not in out, (needle, out[-3000:])
    exp = client.get_experiment_by_name("progress-pipe")
    parent = client.search_runs([exp.experiment_id], "tags.`rgsweep.kind` = 'sweep'")[0]
    assert "report/data_samples.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]


def test_ray_tunes_own_loggers_are_off_unless_the_user_turns_them_on(monkeypatch):
    """MLflow holds every result; Tune's result.json/progress.csv/TensorBoard copies are off by default, and
    the warning Tune then gives at the end ("Failed to fetch metrics") is dropped only while they are off."""
    import logging

    from rgsweep import raytune

    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "Failed to fetch metrics for 2 trial(s)",
                               None, None)
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    raytune._tune_loggers()
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" and not logger.filter(record)
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    raytune._tune_loggers()
    assert logger.filter(record)
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    raytune._tune_loggers()  # back to the default for the tests that follow
    assert not logger.filter(record)
