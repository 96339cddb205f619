"""Optuna tuning on a real local Ray instance, a real SQLite MLflow store and a real Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from rgsweep import raytune, tracking
from rgsweep.cli import main
from rgsweep.config import ConfigError
from rgsweep.sweep import run_sweep
from rgsweep.sweepfile import expand
from rgsweep.sweepfile import load_spec as load_sweep
from rgsweep.tune import prepare_study
from rgsweep.tunefile import load_spec, plan_tuning

REPO = Path(__file__).resolve().parents[1]
S = optuna.trial.TrialState
SPACE = {
    # From hopeless (1e-5: ~chance after an epoch) to good: ASHA always finds trials to stop at its rungs.
    "lr": {"type": "float", "low": 1e-5, "high": 0.5, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.9},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}


def write_tuning(directory: Path, name: str, **over) -> Path:
    doc = {
        "name": name,
        # Digits rather than `synthetic`, which is so easy that validation and test accuracy both reach 1.0.
        "base": {"dataset": "digits", "subset": 400, "arch": "mlp1x512", "epochs": 6, "val_fraction": 0.2,
                 "device": "cpu", "fit_threshold": None, "lr_schedule": "constant"},
        "space": SPACE, "n_trials": 6, "startup_trials": 6, "seed": 0,
        # One trial at a time: ASHA sees the rungs in a fixed order, so which trials it prunes is reproducible.
        "max_concurrent": 1,
        "pruning": {"enabled": True, "grace_period": 1, "reduction_factor": 3},
        **over,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- the tuning file: parsing and its errors (nothing runs) ---------------------------------------
@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("tune-*.yaml")), ids=lambda p: p.name)
def test_shipped_tuning_files_are_valid(path):
    spec = load_spec(path)
    for smoke in (False, True):
        plan = plan_tuning(spec, path, smoke=smoke)
        assert plan.base.val_fraction > 0 and plan.metric == "val_acc" and plan.mode == "max"
        assert plan.rungs() and max(plan.rungs()) < plan.base.epochs
    assert plan.study == f"{spec.name}-smoke" and plan.base.dataset in ("digits", "synthetic")


def test_val_fraction_defaults_to_a_validation_split(tmp_path):
    path = write_tuning(tmp_path, "defaults", base={"dataset": "synthetic", "epochs": 4})
    plan = plan_tuning(load_spec(path), path)
    assert plan.base.val_fraction == 0.1
    assert plan.distributions()["lr"] == optuna.distributions.FloatDistribution(1e-5, 0.5, log=True)
    assert plan.distributions()["batch_size"] == optuna.distributions.CategoricalDistribution([32, 64])


BAD = [
    ({"space": {**SPACE, "lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, ["unknown space key 'lrr'", "momentum"]),
    ({"space": {"val_fraction": {"type": "float", "low": 0.1, "high": 0.2}}},
     ["space key 'val_fraction' cannot be tuned", "validation split"]),
    ({"space": {"epochs": {"type": "int", "low": 2, "high": 9}}}, ["'epochs' cannot be tuned", "pruner"]),
    ({"space": {"lr": {"type": "gaussian", "low": 0.1, "high": 0.2}}},
     ["space.lr.type", "'float', 'int' or 'categorical'"]),
    ({"space": {"lr": {"type": "float", "low": 0.3, "high": 0.001}}}, ["space.lr: low must be < high"]),
    ({"space": {"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, ["space.lr: log: true needs low > 0"]),
    ({"space": {"lr": {"type": "float", "lo": 0.1, "high": 0.2}}},
     ["unknown key 'space.lr.lo'", "allowed keys: type, low, high, log, step, choices"]),
    ({"space": {"batch_size": {"type": "categorical", "choices": []}}}, ["space.batch_size", "non-empty 'choices'"]),
    ({"space": {"lr_step": {"type": "int", "low": 1, "high": 10, "step": 4}}}, ["space.lr_step", "multiple of step"]),
    ({"space": {"momentum": {"type": "float", "low": 0.5, "high": 1.5}}},
     ["space.momentum = 1.5", "momentum=1.5", "less than 1"]),
    ({"space": {"batch_size": {"type": "float", "low": 32, "high": 256}}}, ["space.batch_size", "integer"]),
    ({"space": {"arch": {"type": "categorical", "choices": ["mlp1x512", "vgg"]}}},
     ["space.arch = 'vgg'", "unknown arch 'vgg'", "mlp3x512"]),
    ({"objective": {"metric": "test_acc"}}, ["objective.metric", "'val_acc' or 'val_loss'"]),
    ({"objective": {"metric": "val_acc", "mode": "min"}}, ["objective", "allowed: max"]),
    ({"base": {"dataset": "synthetic", "val_fraction": 0.0}}, ["val_fraction must be > 0", "never on the test set"]),
    ({"pruning": {"grace_period": 6}}, ["pruning.grace_period=6 must be < base.epochs=6"]),
    ({"pruning": {"reduction_factor": 1}}, ["pruning.reduction_factor", "greater than 1"]),
    ({"trials": 5}, ["unknown key 'trials'", "allowed keys: name, experiment", "n_trials"]),
    ({"space": {}}, ["space", "at least 1"]),
]


@pytest.mark.parametrize(("over", "needles"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_invalid_tuning_file_exits_2_naming_key_and_allowed_values(tmp_path, over, needles, capsys, client,
                                                                  tracking_uri):
    name = f"bad-{tmp_path.name}"
    path = write_tuning(tmp_path, name, **over)
    code = main(["tune", str(path), "--tracking-uri", tracking_uri, "--storage", f"sqlite:///{tmp_path / 'o.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    for needle in needles:
        assert needle in err
    assert client.get_experiment_by_name(name) is None  # nothing ran, nothing was logged
    assert not (tmp_path / "o.db").exists()


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, capsys, monkeypatch):
    # Run from an empty folder with the default store: the plan names ./mlruns/optuna.db and the baseline
    # beside the store, and no folder or file is created (the store is not opened, let alone made).
    path = write_tuning(tmp_path, "dry")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["tune", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study 'dry' in sqlite:///mlruns/optuna.db" in out
    assert f"baseline file: {work / 'mlruns' / 'baselines' / 'dry.yaml'}" in out
    assert list(work.iterdir()) == []
    assert main(["tune", str(path), "--dry-run", "--tracking-uri", "file:///x"]) == 2
    assert "file store is refused" in capsys.readouterr().err


def test_epochs_set_under_the_grace_period_on_the_command_line_is_named_as_such(tmp_path, capsys):
    path = write_tuning(tmp_path, "short", pruning={"grace_period": 5})
    assert main(["tune", str(path), "--set", "epochs=3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "pruning.grace_period=5 must be < base.epochs=3 (from the command line)" in err


def test_missing_dataset_exits_2_before_anything_runs(tmp_path, capsys, tracking_uri):
    path = write_tuning(tmp_path, "nodata")
    code = main(["tune", str(path), "--dataset", "cifar10", "--data-dir", str(tmp_path), "--tracking-uri", tracking_uri,
                 "--storage", f"sqlite:///{tmp_path / 'o.db'}"])
    assert code == 2 and "cifar" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o.db").exists()


# -- a real study ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study_run(tmp_path_factory, ray_session, tracking_uri):
    """6 trials on synthetic data, run once through the CLI; what it left is snapshotted for the tests."""
    root = tmp_path_factory.mktemp("tune")
    path = write_tuning(root / "sweeps", "tune-study")
    storage = f"sqlite:///{root / 'optuna.db'}"
    code = main(["tune", str(path), "--tracking-uri", tracking_uri, "--storage", storage])
    client = tracking.get_client(tracking_uri)
    exp = client.get_experiment_by_name("tune-study")
    children = tracking.search_children(client, exp.experiment_id)
    study = optuna.load_study(study_name="tune-study", storage=storage)
    return {"code": code, "path": path, "storage": storage, "client": client, "exp": exp,
            "children": {int(r.data.tags["optuna.trial_number"]): r for r in children}, "trials": study.trials,
            "best": study.best_trial}


def test_study_runs_every_trial_in_mlflow_under_one_parent_with_some_pruned(study_run):
    trials, children, client = study_run["trials"], study_run["children"], study_run["client"]
    assert study_run["code"] == 0
    assert len(trials) == 6 and set(children) == {t.number for t in trials}
    states = [t.state for t in trials]
    assert states.count(S.PRUNED) >= 1 and states.count(S.COMPLETE) >= 1 and S.RUNNING not in states
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in children.values()}
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rgsweep.kind"] == "tune" and parent.data.tags["rgsweep.sweep"] == "tune-study"
    assert parent.data.params["space.lr"] == "float[1e-05, 0.5] log"
    m = parent.data.metrics
    assert m["n_trials"] == 6 and m["n_pruned"] == states.count(S.PRUNED)
    assert m["n_complete"] == states.count(S.COMPLETE)
    best = study_run["best"]
    assert m["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best.lr"] == str(best.params["lr"])
    assert {"best_params.yaml", "tune-study.yaml"} <= {a.path for a in client.list_artifacts(parent_id)}

    for t in trials:
        run = children[t.number]
        state = {S.COMPLETE: "complete", S.PRUNED: "pruned", S.FAIL: "failed"}[t.state]
        assert run.info.status == "FINISHED"  # pruned trials too: pruning is a normal end, never RUNNING
        assert run.data.tags["optuna.state"] == state and run.data.tags["rgsweep.kind"] == "trial"
        assert run.data.params["lr"] == str(t.params["lr"])
        assert run.data.params["batch_size"] == str(t.params["batch_size"])
        assert run.data.params["val_fraction"] == "0.2" and run.data.params["dataset"] == "digits"
        epochs = len(client.get_metric_history(run.info.run_id, "train_loss"))
        if t.state == S.PRUNED:
            assert epochs < 6 and run.data.tags["rgsweep.stop_reason"] == "pruned"
            assert epochs in (1, 3)  # ASHA's rungs for 6 epochs, grace 1, factor 3: never the last epoch
        else:
            assert epochs == 6 and run.data.metrics["epochs_run"] == 6


def test_the_study_parent_carries_its_page_and_children_what_the_ui_reads(study_run, tmp_path):
    client, children = study_run["client"], study_run["children"]
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in children.values()}
    parent = client.get_run(parent_id)
    note = parent.data.tags["mlflow.note.content"]
    best = study_run["best"]
    assert note.startswith("**Study `tune-study` ended: 6 trials") and f"Best: trial {best.number}, val_acc" in note
    assert "| trial | state | val_acc | epochs | lr | momentum | batch_size |" in note and "CPU core-seconds" in note
    files = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.md", "report/results.md", "report/results.csv", "report/learning_curves.png"} <= files
    total = sum(r.data.metrics.get("device_s", 0.0) for r in children.values())
    assert parent.data.metrics["device_s/cpu"] == pytest.approx(total) and total > 0
    for run in children.values():
        tags = run.data.tags
        assert tags["mlflow.runColor"] == "#1f77b4" and tags["mlflow.source.name"].endswith("tune-study.yaml")
        assert tags["mlflow.note.content"].startswith("mlp1x512, noise 0.0, clean: ")
        if tags["optuna.state"] == "pruned":
            assert "pruned by ASHA after epoch" in tags["mlflow.note.content"]
        else:
            assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"digits/train", "digits/test"}


def test_the_objective_is_validation_accuracy_never_test_data(study_run):
    client = study_run["client"]
    seen, val_acc, test_acc = [], [], []  # every trial's epochs, in order
    for t in study_run["trials"]:
        run_id = study_run["children"][t.number].info.run_id
        val = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}
        test = {m.step: m.value for m in client.get_metric_history(run_id, "test_acc")}
        assert list(t.intermediate_values) == list(val) == list(test)  # one value per epoch, steps = epochs
        assert t.value == val[max(val)]  # complete: the last epoch's val_acc; pruned: where it was stopped
        seen += [*t.intermediate_values.values(), t.value]
        val_acc += [*val.values(), val[max(val)]]
        test_acc += [*test.values(), test[max(test)]]
    assert seen == val_acc  # what Optuna (and ASHA, which reads the same results) saw is the validation split's
    assert seen != test_acc  # (one epoch may tie by chance: 6/80 == 27/360; a whole study does not)


def test_best_params_are_handed_to_a_grid_sweep_as_its_baseline(study_run, tracking_uri, client):
    sweeps = study_run["path"].parent
    best = study_run["best"]
    # Written beside the store (mlruns/baselines by default), never among the sources: git stays clean.
    written = Path(tracking_uri[len("sqlite:///"):]).parent / "baselines" / "tune-study.yaml"
    assert not (sweeps / "baselines").exists()
    baseline = yaml.safe_load(written.read_text())
    assert baseline["params"] == best.params and set(baseline["params"]) == set(SPACE)
    assert baseline["source"]["study"] == "tune-study" and baseline["source"]["n_trials"] == 6
    assert baseline["source"]["best_value"] == pytest.approx(best.value)
    assert baseline["source"]["storage"] == study_run["storage"]  # as the user gave it

    (sweeps / "baselines").mkdir()
    (sweeps / "baselines" / "tune-study.yaml").write_text(written.read_text())
    sweep = sweeps / "handoff.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "handoff", "baseline": "baselines/tune-study.yaml",
        "base": {"dataset": "synthetic", "epochs": 1, "device": "cpu"}, "grid": {"momentum": [0.0]},
    }))
    (trial,) = expand(load_sweep(sweep), sweep, baseline=written).trials  # --baseline: the same values
    assert trial.config.lr == best.params["lr"]
    (trial,) = expand(load_sweep(sweep), sweep).trials
    assert trial.config.lr == best.params["lr"] and trial.config.batch_size == best.params["batch_size"]
    assert trial.config.momentum == 0.0 != best.params["momentum"]  # grid keys override the baseline
    code, counts = run_sweep(expand(load_sweep(sweep), sweep), tracking_uri=tracking_uri, verbose=0)
    assert code == 0 and counts["finished"] == 1
    (run,) = tracking.search_children(client, client.get_experiment_by_name("handoff").experiment_id)
    assert run.data.params["lr"] == str(best.params["lr"]) and run.data.params["momentum"] == "0.0"
    assert run.data.params["batch_size"] == str(best.params["batch_size"])


def test_a_second_run_is_refused_and_resume_adds_trials_to_the_same_study(study_run, tracking_uri, capsys):
    path, storage, client = study_run["path"], study_run["storage"], study_run["client"]
    args = ["tune", str(path), "--tracking-uri", tracking_uri, "--storage", storage, "--baseline-out",
            str(path.parent / "resumed.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "study 'tune-study' already has 6 trials" in err and "--resume" in err
    assert main([*args, "--resume", "--n-trials", "2", "--max-concurrent", "2"]) == 0

    assert optuna.study.get_all_study_names(storage) == ["tune-study"]
    study = optuna.load_study(study_name="tune-study", storage=storage)
    assert [t.number for t in study.trials] == list(range(8))
    children = tracking.search_children(client, study_run["exp"].experiment_id)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(8))
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in children}  # the same parent run, reopened
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == 8
    assert [m.value for m in client.get_metric_history(parent_id, "n_trials")] == [6, 8]
    assert yaml.safe_load((path.parent / "resumed.yaml").read_text())["source"]["n_trials"] == 8


def test_a_diverging_trial_is_failed_in_optuna_and_mlflow(tmp_path, ray_session, tracking_uri, client):
    path = write_tuning(
        tmp_path, "tune-diverge", n_trials=1, pruning={"enabled": False},
        base={"dataset": "synthetic", "arch": "mlp3x512", "preprocess": "none", "momentum": 0.99, "epochs": 20,
              "val_fraction": 0.2, "device": "cpu", "fit_threshold": None},
        space={"lr": {"type": "categorical", "choices": [10.0]}},
    )
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["tune", str(path), "--tracking-uri", tracking_uri, "--storage", storage]) == 1  # nothing complete
    (trial,) = optuna.load_study(study_name="tune-diverge", storage=storage).trials
    assert trial.state == S.FAIL
    (run,) = tracking.search_children(client, client.get_experiment_by_name("tune-diverge").experiment_id)
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "failed"
    assert run.data.tags["rgsweep.diverged"] == "true"
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"
    store_dir = Path(tracking_uri[len("sqlite:///"):]).parent
    assert not (store_dir / "baselines" / "tune-diverge.yaml").exists()  # no best trial, no baseline


@pytest.mark.parametrize("demo", sorted((REPO / "sweeps").glob("tune-*.yaml")), ids=lambda p: p.name)
def test_smoke_variant_of_every_tuning_file_runs_in_a_throwaway_study_and_keeps_the_baseline(
    demo, tmp_path, ray_session, tracking_uri,
):
    name = load_spec(demo).name
    baseline = REPO / "sweeps" / "baselines" / f"{name}.yaml"
    before = baseline.read_text() if baseline.exists() else None
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["tune", str(demo), "--smoke", "--tracking-uri", tracking_uri, "--storage", storage]) == 0
    assert optuna.study.get_all_study_names(storage) == [f"{name}-smoke"]
    assert len(optuna.load_study(study_name=f"{name}-smoke", storage=storage).trials) >= 1
    assert (baseline.read_text() if baseline.exists() else None) == before  # smoke never overwrites a baseline


# -- pieces, without Ray --------------------------------------------------------------------------
def test_prepare_study_restarts_on_request_and_fails_stale_running_trials_on_resume(tmp_path):
    path = write_tuning(tmp_path, "prep")
    plan = plan_tuning(load_spec(path), path)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="prep", storage=storage, direction="maximize")
    study.tell(study.ask(), 0.5)
    study.ask()  # left RUNNING, as by a driver that died
    with pytest.raises(ConfigError, match="already has 2 trials"):
        prepare_study(plan, storage, url, resume=False, restart=False)
    assert prepare_study(plan, storage, url, resume=True, restart=False) == 2
    assert [t.state for t in optuna.load_study(study_name="prep", storage=storage).trials] == [S.COMPLETE, S.FAIL]
    assert prepare_study(plan, storage, url, resume=False, restart=True) == 0
    assert "prep" not in optuna.study.get_all_study_names(storage)
    smoke = plan_tuning(load_spec(path), path, smoke=True)
    optuna.create_study(study_name="prep-smoke", storage=storage).ask()
    assert prepare_study(smoke, storage, url, resume=False, restart=False) == 0  # smoke studies start over
    assert "prep-smoke" not in optuna.study.get_all_study_names(storage)


@pytest.mark.parametrize(("epochs", "grace", "rf", "rungs"), [(6, 1, 3, [1, 3]), (10, 1, 3, [1, 3, 9]),
                                                              (40, 5, 3, [5, 15]), (30, 3, 3, [3, 9, 27])])
def test_asha_rungs_come_before_the_last_epoch_and_match_the_plan(tmp_path, epochs, grace, rf, rungs):
    path = write_tuning(tmp_path, "rungs", base={"dataset": "synthetic", "epochs": epochs},
                        pruning={"grace_period": grace, "reduction_factor": rf})
    plan = plan_tuning(load_spec(path), path)
    asha = raytune.asha("val_acc", "max", epochs, grace, rf)
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == plan.rungs() == rungs


def test_the_dashboard_line_says_how_to_get_optuna_dashboard_when_it_is_missing(tmp_path, monkeypatch):
    from rgsweep.tune import dashboard_command

    url = "sqlite:///mlruns/optuna.db"
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    fake_python = tmp_path / "venv" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    monkeypatch.setattr("sys.executable", str(fake_python))
    assert dashboard_command(url) == f"optuna-dashboard {url} (not installed: pip install optuna-dashboard)"
    beside = fake_python.with_name("optuna-dashboard")
    beside.write_text("#!/bin/sh\n")
    assert dashboard_command(url) == f"{beside} {url}"  # a venv not activated, as make runs it
    on_path = tmp_path / "optuna-dashboard"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert dashboard_command(url) == f"optuna-dashboard {url}"
