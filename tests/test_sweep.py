"""Grid sweeps on a real local Ray instance with a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweep_helpers import children, wait_for, write_sweep

from rgsweep import tracking
from rgsweep.cli import main
from rgsweep.config import ConfigError
from rgsweep.sweep import run_sweep
from rgsweep.sweepfile import expand, load_spec

REPO = Path(__file__).resolve().parents[1]


def test_grid_gives_one_child_run_per_trial_with_params_and_parent(tmp_path, ray_session, client, tracking_uri):
    path = write_sweep(tmp_path, "grid-basic", grid={"label_noise": [0.0, 0.5]}, seeds=[0, 1])
    plan = expand(load_spec(path), path)
    assert [t.name for t in plan.trials] == [
        "mlp1x512-noise0.0-seed0", "mlp1x512-noise0.0-seed1", "mlp1x512-noise0.5-seed0", "mlp1x512-noise0.5-seed1"]
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, verbose=0)
    assert code == 0 and counts["finished"] == 4
    runs = children(client, "grid-basic")
    assert len(runs) == 4
    parent_ids = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parent_ids) == 1
    parent = client.get_run(parent_ids.pop())
    assert parent.data.tags["rgsweep.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["n_finished"] == 4 and parent.data.metrics["n_failed"] == 0
    assert "grid-basic.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {t.name for t in plan.trials}
    for t in plan.trials:
        r = by_name[t.name]
        assert r.info.status == "FINISHED"
        assert r.data.params["label_noise"] == str(t.config.label_noise)
        assert r.data.params["seed"] == str(t.config.seed)
        assert r.data.tags["rgsweep.trial_key"] == t.key
        assert len(client.get_metric_history(r.info.run_id, "test_acc")) == 2
        assert "gen_gap" in r.data.metrics and "final_gen_gap" not in r.data.metrics  # one column, the series'


def test_failing_and_diverging_trials_are_failed_while_others_finish(tmp_path, ray_session, client, tracking_uri,
                                                                      capsys):
    path = write_sweep(
        tmp_path, "grid-failures",
        grid={"setting": [{"lr": 0.05}, {"lr": 0.01}, {"lr": 10.0, "momentum": 0.99, "arch": "mlp3x512",
                                                        "preprocess": "none", "epochs": 20}]},
    )
    plan = expand(load_spec(path), path)
    names = [t.name for t in plan.trials]
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, inject_failure={names[1]: 1}, verbose=0)
    assert code == 1
    assert counts == {"trials": 3, "finished": 1, "failed": 2, "lost": 0, "killed": 0, "missing": 0}
    runs = {r.info.run_name: r for r in children(client, "grid-failures")}
    assert runs[names[0]].info.status == "FINISHED"
    failed = runs[names[1]]
    assert failed.info.status == "FAILED" and "injected failure" in failed.data.tags["rgsweep.error"]
    diverged = runs[names[2]]
    assert diverged.info.status == "FAILED" and diverged.data.tags["rgsweep.diverged"] == "true"
    table = capsys.readouterr().out
    assert "DIVERGED" in table and "FAILED" in table and "1 finished, 2 failed" in table


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ({"grid": {"label_noise": [0.0, 1.5]}}, ["label_noise", "1.5", "less than or equal to 1"]),
        ({"grid": {"arch": ["mlp1x512", "vgg"]}}, ["arch", "vgg", "allowed", "alexnet"]),
        ({"grid": {"learning_rate": [0.1]}}, ["unknown grid key 'learning_rate'", "label_noise"]),
        ({"gird": {"label_noise": [0.1]}}, ["unknown key 'gird'", "grid", "seeds"]),
        ({"resources": {"cpus": 2}}, ["resources.cpus", "unknown key"]),
        ({"base": {"dataset": "synthetic", "corruption": "blur"}}, ["corruption", "blur", "gaussian"]),
    ],
)
def test_invalid_sweep_file_fails_before_ray_and_creates_no_run(doc, needles, tmp_path, client, tracking_uri,
                                                                 capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad-sweep", **doc}))
    code = main(["sweep", str(path), "--tracking-uri", tracking_uri])
    assert code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert client.get_experiment_by_name("bad-sweep") is None


def test_missing_dataset_fails_before_any_run(tmp_path, client, tracking_uri, capsys):
    path = write_sweep(tmp_path, "no-data", grid={"label_noise": [0.0]})
    code = main(["sweep", str(path), "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"),
                 "--tracking-uri", tracking_uri])
    assert code == 2
    assert "--download" in capsys.readouterr().err
    assert client.get_experiment_by_name("no-data") is None


def test_dry_run_lists_trials_and_count(tmp_path, capsys):
    path = write_sweep(tmp_path, "dry", grid={"arch": ["mlp1x512", "cnn"], "label_noise": [0.0, 0.5, 1.0]})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials" in out and "cnn-noise1.0 " in out and "seed0" not in out  # one seed: not in the names


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"])
def test_killed_sweep_resumes_without_duplicates(sig, tmp_path, ray_session, client, tracking_uri, capsys):
    name = f"resume-{sig.name.lower()}"
    path = write_sweep(tmp_path, name, grid={"label_noise": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]},
                       max_concurrent=1)
    spec = yaml.safe_load(path.read_text())
    spec["base"]["epochs"] = 25
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rgsweep.cli", "sweep", str(path), "--num-cpus", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in children(client, name)))
        if sig == signal.SIGKILL:  # a second driver on the live sweep is refused and changes nothing
            statuses = sorted(r.info.status for r in children(client, name))
            proc.send_signal(signal.SIGSTOP)  # the first driver holds still (alive) meanwhile
            try:
                assert main(["sweep", str(path), "--resume", "--tracking-uri", tracking_uri]) == 2
            finally:
                proc.send_signal(signal.SIGCONT)
            err = capsys.readouterr().err
            assert f"sweep {name!r} is being run by another driver" in err and f"pid {proc.pid}" in err, err
            assert sorted(r.info.status for r in children(client, name)) == statuses
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)  # reaped: its pid is gone, so its lease is dead at once
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    runs = children(client, name)
    finished_before = [r for r in runs if r.info.status == "FINISHED"]
    running_before = {r.info.run_id for r in runs if r.info.status == "RUNNING"}  # the dead driver's
    assert 1 <= len(finished_before) < 6
    if sig != signal.SIGKILL:  # a clean stop (Ctrl-C, a scheduler's SIGTERM): exit 130, nothing left RUNNING
        assert proc.returncode == 130, out[-3000:]
        assert not [r for r in runs if r.info.status == "RUNNING"]
        assert "Traceback" not in out

    plan = expand(load_spec(path), path)
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, resume=True, verbose=0)
    assert code == 0, counts
    runs = children(client, name)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = [r.data.tags["rgsweep.trial_key"] for r in finished]
    assert sorted(keys) == sorted(t.key for t in plan.trials)  # exactly one FINISHED run per trial
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the finished runs from before the kill were kept, not rerun
    assert {r.info.run_id for r in finished_before} <= {r.info.run_id for r in finished}
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1  # resume continues the same parent
    # A dead driver's runs are closed by the driver that took its lease over (none when it died between trials).
    for r in runs:
        if r.info.run_id in running_before:
            assert r.info.status == "KILLED" and r.data.tags["rgsweep.stop_reason"] == "driver_lost"


def test_every_shipped_sweep_file_expands(capsys):
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    sweep_files = [f for f in files if not f.name.startswith("tune-")]
    assert sweep_files, "no sweep files shipped"
    for f in sweep_files:
        spec = load_spec(f)
        plan = expand(spec, f)
        assert plan.trials, f
        smoke = expand(spec, f, smoke=True)
        assert 0 < len(smoke.trials) <= len(plan.trials)


def test_smoke_variant_of_every_sweep_file_runs(ray_session, client, tracking_uri, tmp_path):
    """CI runs every shipped sweep file in its smoke form (tiny data, 1 epoch, extremes of each grid)."""
    for f in sorted((REPO / "sweeps").glob("*.yaml")):
        if f.name.startswith("tune-"):
            continue
        spec = load_spec(f)
        spec.experiment = f"smoke-{spec.name}"
        plan = expand(spec, f, overrides={"epochs": 1}, smoke=True)
        code, counts = run_sweep(plan, tracking_uri=tracking_uri, verbose=0)
        assert code == 0, (f.name, counts)
        assert counts["finished"] == len(plan.trials)


def test_expand_rejects_bad_trial_with_its_values(tmp_path):
    path = write_sweep(tmp_path, "bad-trial", grid={"setting": [{"lr": 0.1}, {"lr": -1.0}]})
    with pytest.raises(ConfigError) as e:
        expand(load_spec(path), path)
    assert "lr=-1.0" in str(e.value) and "greater than 0" in str(e.value)


def test_a_file_without_a_grid_names_its_base_when_it_is_invalid(tmp_path):
    path = write_sweep(tmp_path, "bad-base")
    path.write_text(path.read_text().replace("arch: mlp1x512", "arch: nosuch"))
    with pytest.raises(ConfigError) as e:
        expand(load_spec(path), path)
    msg = str(e.value)
    assert f"{path} (base): arch='nosuch'" in msg and "allowed: mlp1x512" in msg and "(trial )" not in msg


def test_packed_sweep_gives_each_trial_its_own_run(tmp_path, ray_session, client, tracking_uri):
    path = write_sweep(tmp_path, "grid-packed", grid={"label_noise": [0.0, 0.5, 1.0]}, seeds=[0, 1], pack=4)
    plan = expand(load_spec(path), path)
    broken = plan.trials[1].name  # one packed trial fails; its pack-mates must still finish
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, inject_failure={broken: 2}, verbose=0)
    assert code == 1 and counts["finished"] == 5 and counts["failed"] == 1
    runs = children(client, "grid-packed")
    assert sorted(r.info.run_name for r in runs) == sorted(t.name for t in plan.trials)
    ray_ids = {r.data.tags["rgsweep.ray_trial_id"] for r in runs}
    assert len(ray_ids) == 2  # 6 trials in packs of at most 4
    for r in runs:
        if r.info.run_name == broken:
            assert r.info.status == "FAILED" and "injected failure" in r.data.tags["rgsweep.error"]
            continue
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "train_acc")) == 2
        assert r.data.params["label_noise"] in {"0.0", "0.5", "1.0"}


def test_epoch_buffer_sends_the_first_epoch_then_batches_until_flush():
    from rgsweep.trials import EPOCHS_KEY, EpochBuffer

    sent: list[dict] = []
    buf = EpochBuffer("t", sent.append, interval=3600)
    for e in range(1, 6):
        buf({"epoch": e, "train_acc": e / 10})
    assert len(sent) == 1 and [m["epoch"] for m in json.loads(sent[0][EPOCHS_KEY])] == [1]
    buf.flush()
    assert len(sent) == 2 and sent[1]["member"] == "t" and sent[1]["epoch"] == 5  # newest on top
    assert [m["epoch"] for m in json.loads(sent[1][EPOCHS_KEY])] == [2, 3, 4, 5]
    buf.flush()
    assert len(sent) == 2  # nothing pending, nothing sent
    every = EpochBuffer("u", sent.append, interval=0)
    every({"epoch": 1})
    every({"epoch": 2})
    assert len(sent) == 4
    failing = EpochBuffer("v", sent.append, fail_at=3, interval=3600)
    failing({"epoch": 1})
    failing({"epoch": 2})
    with pytest.raises(RuntimeError, match="injected failure at epoch 3"):
        failing({"epoch": 3})
    failing.flush()
    assert [m["epoch"] for m in json.loads(sent[-1][EPOCHS_KEY])] == [2]  # the epoch before the failure


def test_fast_epochs_batched_to_the_driver_are_each_a_step(tmp_path, ray_session, client, tracking_uri):
    # 40 digits epochs of a tiny MLP take well under the report interval: they reach the driver in a few
    # batches, and MLflow still has every epoch as its own step, also for a trial that fails midway.
    path = write_sweep(tmp_path, "grid-fast", grid={"label_noise": [0.0, 1.0]})
    plan = expand(load_spec(path), path, overrides={"epochs": 40, "dataset": "digits"})
    broken = plan.trials[1].name
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, inject_failure={broken: 31}, verbose=0)
    assert code == 1 and counts["finished"] == 1 and counts["failed"] == 1
    for r in children(client, "grid-fast"):
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        expected = list(range(1, 31)) if r.info.run_name == broken else list(range(1, 41))
        assert sorted(steps) == expected, r.info.run_name


def test_pack_option_is_checked_and_overrides_the_file(tmp_path, capsys, client, tracking_uri):
    path = write_sweep(tmp_path, "cli-pack", grid={"label_noise": [0.0, 0.5, 1.0]}, seeds=[0, 1])
    assert main(["sweep", str(path), "--pack", "0", "--tracking-uri", tracking_uri]) == 2
    assert "--pack must be between 1 and 256" in capsys.readouterr().err
    assert children(client, "cli-pack") == []
    assert main(["sweep", str(path), "--pack", "4", "--dry-run"]) == 0
    assert "packing: 6 trials in 2 Ray trials (pack: 4)" in capsys.readouterr().out
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "packing:" not in capsys.readouterr().out  # the file says pack: 1


def test_command_line_values_win_over_grid_axes_and_say_which_collapsed(tmp_path, capsys):
    path = write_sweep(tmp_path, "set-grid", grid={"lr": [0.01, 0.1, 0.5], "label_noise": [0.0, 1.0],
                                                   "setting": [{"momentum": 0.0}, {"momentum": 0.9, "lr": 0.2}]},
                       seeds=[0, 1])
    assert main(["sweep", str(path), "--dry-run", "--set", "lr=0.05", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "command line lr=0.05 replaces grid axis 'lr' (3 values -> 1)" in out
    assert "command line lr=0.05 replaces lr in every value of grid bundle 'setting'" in out
    assert "command line seed=7 replaces seeds [0, 1] (2 values -> 1)" in out
    assert "4 trials" in out  # label_noise x momentum; lr and the seeds collapsed
    plan = expand(load_spec(path), path, overrides={"lr": 0.05, "seed": 7})
    assert {t.config.lr for t in plan.trials} == {0.05} and {t.config.seed for t in plan.trials} == {7}
    assert "lr" not in plan.swept_keys and "seed" not in plan.swept_keys
    assert sorted((t.config.label_noise, t.config.momentum) for t in plan.trials) == [
        (0.0, 0.0), (0.0, 0.9), (1.0, 0.0), (1.0, 0.9)]


def test_smoke_runs_have_their_own_experiment_then_resume_and_report_see_only_real_runs(
    tmp_path, ray_session, client, tracking_uri,
):
    path = write_sweep(tmp_path, "smoke-apart", grid={"label_noise": [0.0, 0.5, 1.0]}, smoke={"epochs": 1})
    assert main(["sweep", str(path), "--smoke", "--tracking-uri", tracking_uri]) == 0
    smoke = children(client, "smoke-apart-smoke")
    assert len(smoke) == 2 and children(client, "smoke-apart") == []  # the extremes, in their own experiment
    # --resume finds no real sweep to continue (never the smoke parent): every trial runs, at full size.
    assert main(["sweep", str(path), "--resume", "--tracking-uri", tracking_uri]) == 0
    real = children(client, "smoke-apart")
    assert len(real) == 3 and {r.data.params["epochs"] for r in real} == {"2"}
    assert {r.data.tags["mlflow.parentRunId"] for r in real}.isdisjoint(
        {r.data.tags["mlflow.parentRunId"] for r in smoke})
    assert main(["report", "--experiment", "smoke-apart", "--out", str(tmp_path / "r"), "--no-log",
                 "--tracking-uri", tracking_uri]) == 0
    assert "- trials: 3 (" in (tmp_path / "r" / "smoke-apart" / "report.md").read_text()


def test_quotes_and_slashes_in_names_reach_mlflow_intact(tmp_path, ray_session, client, tracking_uri):
    name = """o'neil's "quoted" sweep/v1"""
    path = tmp_path / "quoted.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {"dataset": "synthetic", "epochs": 1, "device": "cpu"},
                                    "grid": {"label_noise": [0.0]}}))
    plan = expand(load_spec(path), path)
    assert run_sweep(plan, tracking_uri=tracking_uri, verbose=0)[0] == 0
    exp = client.get_experiment_by_name(name)
    assert exp.artifact_location.endswith("/o_neil_s_quoted_sweep_v1")  # one safe folder of the store
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, resume=True, verbose=0)  # finds its parent
    assert code == 0 and counts["finished"] == 1
    (run,) = tracking.search_children(client, exp.experiment_id)
    assert run.data.tags["rgsweep.sweep"] == name
    parents = tracking.search_tagged(client, [exp.experiment_id], {"rgsweep.sweep": name, "rgsweep.kind": "sweep"})
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
