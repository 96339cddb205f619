"""Data reaches trials from the driver: relative locations resolved where the command runs, each dataset
loaded once and handed to real Ray trials through the object store, bad locations refused before Ray.

Every sweep here runs from a temporary directory holding its data in the real on-disk formats
(tests/datafiles.py), the way a user runs rgsweep from a project folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datafiles import write_cifar10, write_image_folder

from rgsweep import tracking
from rgsweep.cli import main
from rgsweep.config import ConfigError, make_config
from rgsweep.data.sources import Dataset, data_location, load_dataset, resolve_data_dir
from rgsweep.preload import preload
from rgsweep.sweep import run_sweep
from rgsweep.sweepfile import expand, load_spec
from rgsweep.train import prepare_data

BASE = {"arch": "mlp1x512", "epochs": 2, "lr": 0.05, "device": "cpu", "fit_threshold": None}


def write_sweep(directory: Path, name: str, base: dict, **spec) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, **base}, **spec}))
    return path


def finished_runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    runs = tracking.search_children(client, exp.experiment_id)
    assert runs and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    return runs


def assert_data_from_driver(runs, data_path: Path, fingerprint: str) -> None:
    """Each run names the absolute location its data came from, the data's fingerprint, and how long the
    trial took to read it from the object store and prepare it."""
    for r in runs:
        assert r.data.tags["rgsweep.data_path"] == str(data_path.resolve())
        assert r.data.tags["rgsweep.dataset_fingerprint"] == fingerprint
        assert r.data.metrics["data_fetch_s"] >= 0 and r.data.metrics["data_prep_s"] > 0


# -- resolution (no Ray) --------------------------------------------------------------------------
def test_locations_resolve_against_the_given_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("RGSWEEP_DATA", raising=False)
    assert resolve_data_dir(None, tmp_path) == tmp_path.resolve() / "data"
    assert resolve_data_dir("d", tmp_path) == tmp_path.resolve() / "d"
    assert resolve_data_dir("/abs/d", tmp_path) == Path("/abs/d")
    assert resolve_data_dir("~/d", tmp_path) == Path.home().resolve() / "d"
    monkeypatch.setenv("RGSWEEP_DATA", "rel")
    assert resolve_data_dir(None, tmp_path) == tmp_path.resolve() / "rel"
    assert data_location("cifar10", None, tmp_path) == tmp_path.resolve() / "rel" / "cifar-10-batches-py"
    assert data_location("mnist", "m", tmp_path) == tmp_path.resolve() / "m" / "MNIST" / "raw"
    assert data_location("imagefolder:imgs", "ignored", tmp_path) == tmp_path.resolve() / "imgs"
    assert data_location("digits", None, tmp_path) is None


def test_trial_identity_keeps_the_dataset_as_written(tmp_path, monkeypatch):
    """The key of a trial with a relative image folder is the one existing stores hold: resolving the
    location in the driver changes no key, so `--resume` still recognises the trials."""
    write_image_folder(tmp_path / "imgs")
    cfg = make_config({"dataset": "imagefolder:imgs", "arch": "mlp1x512"})
    key = cfg.key()
    monkeypatch.chdir(tmp_path)
    data = preload([cfg], quiet=True)
    assert cfg.dataset == "imagefolder:imgs" and cfg.key() == key
    assert data.key(cfg) == f"imagefolder:imgs @ {tmp_path.resolve() / 'imgs'} subset=None"
    assert data.select([cfg])[data.key(cfg)].name == "imagefolder:imgs"


def test_subsets_of_one_dataset_load_it_once_and_share_its_test_split(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    configs = [make_config({"dataset": "cifar10", "data_dir": "data", "subset": n}) for n in (20, 40, None)]
    data = preload(configs + configs, cwd=tmp_path, quiet=True)
    sets = [data.datasets[data.key(c)] for c in configs]
    assert len(data.datasets) == 3 and [len(d.y_train) for d in sets] == [20, 40, 100]
    assert sets[0].x_test is sets[1].x_test is sets[2].x_test


@pytest.mark.parametrize("setting", [
    {},
    {"label_noise": 0.5, "corruption": "shuffled_pixels", "val_fraction": 0.2},
    {"corruption": "random_pixels", "corrupt_fraction": 0.5, "pixel_fraction": 0.5, "preprocess": "standard"},
    {"corruption": "gaussian", "preprocess": "none", "val_fraction": 0.1},
    {"corruption": "gaussian", "corrupt_fraction": 0.5},
], ids=["plain", "noise-shuffled-val", "random-partial-standard", "gaussian-none", "gaussian-partial"])
def test_prepare_data_only_reads_a_read_only_dataset(setting, tmp_path):
    """Trials on one node share the object store's read-only arrays: preparing a trial must write nothing
    into them (torch cannot tell, so compare the bytes), and must not warn either."""
    write_cifar10(tmp_path / "data", per_batch=8, n_test=12)
    ds = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    arrays = {k: v.copy() for k, v in ds.arrays().items()}
    for a in arrays.values():
        a.flags.writeable = False  # as ray.get returns them
    expected = {k: v.copy() for k, v in arrays.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning reaches the user
        shared = Dataset.from_arrays("cifar10", arrays, ds.classes, ds.fingerprint())
        cfg = make_config({"dataset": "cifar10", "arch": "mlp1x512", **setting})
        data = prepare_data(cfg, torch.device("cpu"), shared)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], expected[k], err_msg=k)
    assert data.fingerprint == ds.fingerprint() and len(data.y_test) == 12


def test_prepare_data_refuses_another_trials_dataset(tmp_path):
    ds = load_dataset("synthetic")
    with pytest.raises(ValueError, match="'synthetic' for a trial of 'digits'"):
        prepare_data(make_config({"dataset": "digits"}), torch.device("cpu"), ds)


# -- sweeps through real Ray workers, from another directory ---------------------------------------
def test_cifar10_with_a_relative_data_dir_through_the_real_cli(tmp_path, client, tracking_uri):
    """The bug this fixes: `--data-dir data` made every trial look in its own Ray trial folder. Run the
    command itself, in a fresh process, from a directory holding data/cifar-10-batches-py."""
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    write_sweep(tmp_path, "paths-cifar", {"dataset": "cifar10", "subset": 50}, grid={"label_noise": [0.0, 0.5]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_ADDRESS": "",
           "RGSWEEP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "rgsweep.cli", "sweep", "paths-cifar.yaml", "--data-dir", "data", "--num-cpus", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"data: cifar10 @ {tmp_path.resolve() / 'data' / 'cifar-10-batches-py'} subset=50" in proc.stdout
    runs = finished_runs(client, "paths-cifar")
    assert len(runs) == 2
    expected = preload([make_config({"dataset": "cifar10", "data_dir": "data", "subset": 50})], cwd=tmp_path,
                       quiet=True)
    fp = next(iter(expected.datasets.values())).fingerprint()
    assert_data_from_driver(runs, tmp_path / "data" / "cifar-10-batches-py", fp)


def test_packed_image_folder_sweep_with_a_relative_path(tmp_path, monkeypatch, ray_session, client, tracking_uri):
    """`--dataset imagefolder:imgs`, run from the folder holding imgs/; the two trials are packed into one
    Ray trial, which gets the data the same way."""
    arrays = write_image_folder(tmp_path / "imgs", n_train=6, n_test=2, size=(9, 7))
    write_sweep(tmp_path, "paths-folder", {"dataset": "synthetic"}, grid={"label_noise": [0.0, 0.5]}, pack=2)
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "paths-folder.yaml", "--dataset", "imagefolder:imgs", "--tracking-uri", tracking_uri])
    assert code == 0
    runs = finished_runs(client, "paths-folder")
    assert len(runs) == 2 and {r.data.metrics["pack_size"] for r in runs} == {2}
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    np.testing.assert_array_equal(ds.x_train.numpy(), arrays["x_train"])
    assert_data_from_driver(runs, tmp_path / "imgs", ds.fingerprint())


def test_default_data_folder_is_the_one_where_the_command_runs(tmp_path, monkeypatch, ray_session, client,
                                                               tracking_uri):
    """No --data-dir and no $RGSWEEP_DATA: ./data of the directory the command runs in."""
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30, seed=3)
    write_sweep(tmp_path, "paths-default", {"dataset": "cifar10", "subset": 40}, seeds=[0, 1])
    monkeypatch.delenv("RGSWEEP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "paths-default.yaml", "--tracking-uri", tracking_uri]) == 0
    runs = finished_runs(client, "paths-default")
    assert len(runs) == 2
    assert {r.data.params["data_dir"] for r in runs} == {"None"}  # the config as written; the tag says where
    for r in runs:
        assert r.data.tags["rgsweep.data_path"] == str(tmp_path.resolve() / "data" / "cifar-10-batches-py")


def test_tune_trials_get_the_data_from_the_driver(tmp_path, monkeypatch, ray_session, client, tracking_uri):
    write_image_folder(tmp_path / "imgs", n_train=10, n_test=2)
    (tmp_path / "tune-paths.yaml").write_text(yaml.safe_dump({
        "name": "tune-paths", "base": {**BASE, "dataset": "imagefolder:imgs", "val_fraction": 0.2},
        "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "n_trials": 2, "startup_trials": 2, "max_concurrent": 2, "pruning": {"enabled": False},
    }))
    monkeypatch.chdir(tmp_path)
    code = main(["tune", "tune-paths.yaml", "--tracking-uri", tracking_uri, "--storage",
                 f"sqlite:///{tmp_path / 'optuna.db'}", "--baseline-out", str(tmp_path / "best.yaml")])
    assert code == 0
    runs = finished_runs(client, "tune-paths")
    assert len(runs) == 2
    assert_data_from_driver(runs, tmp_path / "imgs", load_dataset(f"imagefolder:{tmp_path / 'imgs'}").fingerprint())


def test_trials_open_no_dataset_file(tmp_path, monkeypatch, ray_session, client, tracking_uri):
    """The driver in stages: load the data, take the data folder and the decode cache away, run the trials."""
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    monkeypatch.setenv("RGSWEEP_CACHE", str(tmp_path / "cache"))
    path = write_sweep(tmp_path, "paths-staged", {"dataset": "cifar10", "data_dir": "data", "subset": 30},
                       grid={"corruption": ["none", "shuffled_pixels"]})
    monkeypatch.chdir(tmp_path)
    plan = expand(load_spec(path), path)
    data = preload(t.config for t in plan.trials)
    shutil.move(tmp_path / "data", tmp_path / "moved-away")
    shutil.rmtree(tmp_path / "cache")
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, data=data, verbose=0)
    assert code == 0 and counts["finished"] == 2
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()
    finished_runs(client, "paths-staged")


# -- bad input: exit 2 before Ray starts, no MLflow run --------------------------------------------
@pytest.mark.parametrize(("args", "needles"), [
    (["--dataset", "cifar10", "--data-dir", "nowhere"],
     ["nowhere/cifar-10-batches-py", "--download", "relative paths are taken from"]),
    (["--dataset", "cifar10", "--data-dir", "empty"], ["empty/cifar-10-batches-py", "pass --download"]),
    (["--dataset", "imagefolder:no-such-folder"], ["no-such-folder/train not found", "<class>/<image>"]),
], ids=["missing-dir", "no-download", "missing-image-folder"])
def test_bad_data_location_exits_2_before_ray_and_creates_no_run(args, needles, tmp_path, client, tracking_uri):
    """Run as a user would, with RAY_ADDRESS pointing at a cluster that does not exist: the data check
    still runs first (it used to be skipped when joining a cluster, and the sweep went on to create its
    runs), so the answer is the data error, not a connection error."""
    (tmp_path / "empty").mkdir()
    name = "paths-bad-" + args[-1].replace(":", "-")
    write_sweep(tmp_path, name, {"dataset": "synthetic"}, grid={"label_noise": [0.0]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_ADDRESS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "rgsweep.cli", "sweep", f"{name}.yaml", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rgsweep sweep: error: "), proc.stderr
    assert str(tmp_path.resolve()) in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert client.get_experiment_by_name(name) is None


def test_tune_with_a_missing_dataset_exits_2_and_creates_no_run(tmp_path, monkeypatch, client, tracking_uri,
                                                               capsys):
    (tmp_path / "tune-missing.yaml").write_text(yaml.safe_dump({
        "name": "tune-missing", "base": {**BASE, "dataset": "imagefolder:gone", "val_fraction": 0.2},
        "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}}, "n_trials": 1, "pruning": {"enabled": False},
    }))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert main(["tune", "tune-missing.yaml", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path.resolve() / "gone" / "train") in err
    assert client.get_experiment_by_name("tune-missing") is None


def test_preload_error_is_a_config_error_naming_the_resolved_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        preload([make_config({"dataset": "mnist", "data_dir": "~/definitely-not-here-rgsweep"})], cwd=tmp_path)
    assert str(Path.home().resolve() / "definitely-not-here-rgsweep" / "MNIST" / "raw") in str(e.value)
    assert "relative paths" not in str(e.value)  # `~` is not relative to the working directory
