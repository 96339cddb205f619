"""Session-wide real components: one SQLite MLflow store (schema made once, ~3 s) and one local Ray
instance (~5 s), shared by every test that needs them. Caches and stores live in a temp dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="rgsweep-tests-"))
os.environ.setdefault("RGSWEEP_CACHE", str(_TMP / "cache"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP / 'mlruns' / 'mlflow.db'}"  # never the repo's store
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-mini"


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
