"""Session-wide real components: one SQLite MLflow store (schema made once, ~3 s) and one local Ray
instance (~5 s), shared by every test that needs them (one of each per pytest-xdist worker). Caches and
stores live in a temp dir."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="rgsweep-tests-"))
os.environ.setdefault("RGSWEEP_CACHE", str(_TMP / "cache"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP / 'mlruns' / 'mlflow.db'}"  # never the repo's store
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray's raylet prints "... is over 95% full" to every driver's stderr each 10 s once the disk's free share
# falls under 5%. CI hosts share a large disk: the run of 68554ca failed 4 tests that assert exact stderr
# (10 GB free of 252 GB). The tests spill nothing, so they warn only above 99% (Ray reads RAY_<config>).
os.environ.setdefault("RAY_local_fs_capacity_threshold", "0.99")
# `make test` runs the files in pytest-xdist workers (Makefile: TEST_WORKERS). Two processes that each
# spread torch over every core spin against each other: gpu-check's CPU smoke took 219 s instead of 31 s.
# So a worker's torch (and its children's, trials included) uses one thread; set before torch loads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-mini"


def pytest_sessionfinish(session, exitstatus) -> None:
    """The session's store, caches and Ray folders (about 60 MB) go when every test passed; after a
    failure they stay for a look, and the path is printed. (They piled up at 60 MB a run before.)"""
    if exitstatus == 0:
        shutil.rmtree(_TMP, ignore_errors=True)
    else:
        print(f"\nthe session's MLflow store, caches and Ray folders are kept in {_TMP}", file=sys.stderr)


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    """A real SQLite MLflow store, created once for the session."""
    from rgsweep import tracking

    uri = tracking.resolve_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    tracking.get_client(uri)
    return uri


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance with 2 CPUs, started once."""
    import ray

    from rgsweep import raytune

    started = raytune.start_ray(num_cpus=2)
    yield ray
    raytune.stop_ray(started)


@pytest.fixture
def client(tracking_uri):
    from rgsweep import tracking

    return tracking.get_client(tracking_uri)


@pytest.fixture(scope="session")
def sweep_store(ray_session, tmp_path_factory):
    """A store written by a real sweep (Ray, the trainables, the driver's tracker), not built by hand:
    4 trials (label noise 0 and 1, clean and shuffled pixels), 3 epochs each, in experiment `real-sweep`."""
    from types import SimpleNamespace

    import yaml

    from rgsweep.sweep import run_sweep
    from rgsweep.sweepfile import expand, load_spec

    root = tmp_path_factory.mktemp("real-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    path = root / "real-sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "real-sweep",
        "base": {"dataset": "synthetic", "arch": "mlp1x512", "epochs": 3, "lr": 0.05, "device": "cpu",
                 "fit_threshold": None},
        "grid": {"label_noise": [0.0, 1.0], "corruption": ["none", "shuffled_pixels"]},
    }))
    plan = expand(load_spec(path), path)
    code, counts = run_sweep(plan, tracking_uri=uri, verbose=0)
    assert code == 0 and counts["finished"] == 4, counts
    return SimpleNamespace(uri=uri, root=root, experiment="real-sweep", trials=[t.name for t in plan.trials])
