"""A sweep on a real two-node Ray cluster, tracked by a real `mlflow server` on PostgreSQL.

The README's "Running on a Ray cluster" section is these steps: `ray start --head` and `ray start
--address` (token authentication), `mlflow server` on PostgreSQL with `--serve-artifacts`, a sweep run
from another directory with a relative `--data-dir`, then `--resume` and `export` against the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from datafiles import write_cifar10
from infra import MlflowServer, RayCluster, postgres  # noqa: F401 (a fixture)
from mlflow import MlflowClient

from rgsweep import tracking

pytestmark = pytest.mark.slow
RGSWEEP = str(Path(sys.executable).parent / "rgsweep")
EPOCHS = 2
SWEEP = {
    "name": "cluster",
    "base": {"dataset": "cifar10", "subset": 60, "arch": "mlp1x512", "width": 32, "epochs": EPOCHS,
             "batch_size": 32, "device": "cpu", "fit_threshold": None},
    "grid": {"label_noise": [0.0, 1.0]},
    "seeds": [0, 1],
    "resources": {"cpu": 1},
}


@pytest.fixture(scope="module")
def stack(postgres):  # noqa: F811
    """The two-node Ray cluster and an `mlflow server` on PostgreSQL, started side by side (~1 min saved
    on a loaded 2-core machine)."""
    root = Path(tempfile.mkdtemp(prefix="rgsweep-server-"))
    server = MlflowServer(postgres.create_database("mlflow_cluster"), root, database="mlflow_cluster").launch()
    cluster = RayCluster()
    try:
        cluster.start()
        server.wait()
        yield cluster, server
    finally:
        cluster.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# `rgsweep ARGS` in a driver that moves the data folder away as soon as it has loaded the data (its
# `preload` step), before Ray or any trial starts: a trial that opened a dataset file would find none.
HIDING_DRIVER = """
import os, shutil, sys
import rgsweep.sweep
from rgsweep.cli import main

load = rgsweep.sweep.preload
def load_then_hide(*args, **kwargs):
    data = load(*args, **kwargs)
    shutil.move("data", os.environ["HIDE_DATA_IN"])
    return data
rgsweep.sweep.preload = load_then_hide
sys.exit(main(sys.argv[1:]))
"""


def rgsweep(*args: str, cwd: Path, env: dict[str, str], hide_data_in: Path | None = None,
            ) -> subprocess.CompletedProcess:
    cmd = [RGSWEEP, *args] if hide_data_in is None else [sys.executable, "-c", HIDING_DRIVER, *args]
    env = env if hide_data_in is None else {**env, "HIDE_DATA_IN": str(hide_data_in)}
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    print(out.stdout[-3000:], out.stderr[-3000:], f"rgsweep {args[0]}: {time.monotonic() - t0:.0f} s", sep="\n")
    return out


def test_start_ray_never_joins_a_cluster_left_by_ray_start(stack):
    """With no address, a sweep starts its own Ray, although a bare `ray.init()` would join the cluster."""
    ray_cluster, _ = stack
    root = Path(tempfile.mkdtemp(prefix="rgsweep-rt-"))  # short: Ray's sockets go below it
    try:
        # Ray's record of "the latest cluster `ray start` made on this machine" points at our cluster.
        (root / "ray").mkdir()
        (root / "ray" / "ray_current_cluster").write_text(ray_cluster.address)
        env = {**os.environ, "RAY_TMPDIR": str(root)}
        env.pop("RAY_ADDRESS", None)
        code = (
            "import json, ray\n"
            "from ray._private.services import canonicalize_bootstrap_address\n"
            "from rgsweep import raytune\n"
            "bare = canonicalize_bootstrap_address(None)  # the address a bare ray.init() would join\n"
            "assert raytune.start_ray(num_cpus=1)\n"
            "print(json.dumps({'bare': bare, 'resources': ray.cluster_resources()}))\n"
            "ray.shutdown()\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert seen["bare"].endswith(f":{ray_cluster.port}")  # the trap is set
    assert "node_head" not in seen["resources"] and "node_worker" not in seen["resources"]
    assert seen["resources"]["CPU"] == 1  # a local instance of its own


def test_sweep_on_two_node_cluster_with_postgres_mlflow_server(tmp_path, stack, postgres):  # noqa: F811
    ray_cluster, server = stack
    count_runs = lambda: postgres.query(server.database, "SELECT count(*) FROM runs")[0][0]
    sweeps, work = tmp_path / "sweeps", tmp_path / "work"  # the sweep file lives elsewhere than the data
    sweeps.mkdir()
    (sweeps / "cluster.yaml").write_text(yaml.safe_dump(SWEEP))
    write_cifar10(work / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    sweep = ["sweep", "../sweeps/cluster.yaml", "--data-dir", "data", "--ray-address", ray_cluster.address]

    out = rgsweep(*sweep, cwd=work, env=env, hide_data_in=tmp_path / "away")
    assert out.returncode == 0
    assert not (work / "data").exists() and (tmp_path / "away" / "cifar-10-batches-py").is_dir()  # it was hidden
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("cluster")
    runs = tracking.search_children(client, exp.experiment_id)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    # Both nodes trained trials (each run names its Ray node; the cluster maps nodes to their resources).
    assert {r.data.tags["rgsweep.ray_node"] for r in runs} == set(ray_cluster.node_ids().values())
    # Artifacts went through the server into its --artifacts-destination; runs live in PostgreSQL.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    for r in runs:
        assert "learning_curve.png" in [a.path for a in client.list_artifacts(r.info.run_id)]
        assert list(server.artifacts.glob(f"**/{r.info.run_id}/artifacts/learning_curve.png"))
    assert count_runs() == 5  # 4 trials and the sweep's parent

    # --resume against the server: nothing left to run, nothing duplicated.
    shutil.move(tmp_path / "away", work / "data")  # the driver checks the data again
    out = rgsweep(*sweep, "--resume", cwd=work, env=env)
    assert out.returncode == 0 and "4 trials, 0 to run" in out.stdout
    again = tracking.search_children(client, exp.experiment_id)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert count_runs() == 5

    # export against the server: one row per trial, one per trial and epoch.
    out = rgsweep("export", "--experiment", "cluster", "--out", "exports", cwd=work, env=env)
    assert out.returncode == 0
    table = pd.read_parquet(work / "exports" / "runs.parquet")
    history = pd.read_parquet(work / "exports" / "history.parquet")
    assert sorted(table["run_id"]) == sorted(r.info.run_id for r in runs)
    assert set(table["status"]) == {"FINISHED"}
    assert len(history) == 4 * EPOCHS and set(history["run_id"]) == set(table["run_id"])
