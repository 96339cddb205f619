"""The MLflow server `rgsweep ui` starts (same command) serves a sweep's runs over its REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow_fixtures import shared_store

from rgsweep.analysis.commands import server_command, server_env, warn_if_exposed

START_TIMEOUT_S = 60
CLI_TIMEOUT_S = 60  # `rgsweep` imports torch, Ray and MLflow before it starts anything
STOP_TIMEOUT_S = 45  # `rgsweep ui` gives its server 15 s to stop before killing it, then exits itself


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"  # a file, not a pipe nobody drains
    # Own session: the whole process group (mlflow's launcher and its uvicorn child) is ours to stop.
    with log.open("w") as out:
        proc = subprocess.Popen(server_command(store.uri, host="127.0.0.1", port=port), env=server_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # bounded poll of the health endpoint; the wait below also notices a crashed server
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not up after {START_TIMEOUT_S}s"
            try:
                proc.wait(timeout=0.25)
                pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            except subprocess.TimeoutExpired:
                pass
        yield base
    finally:
        proc.terminate()  # mlflow forwards it to uvicorn and waits for it
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_server_lists_the_sweeps_runs_with_params_and_metrics(store, server):
    found = _post(f"{server}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [store.experiment_id], "max_results": 100,
        "filter": f"tags.mlflow.parentRunId = '{store.parent_id}'",
    })["runs"]
    assert {r["info"]["run_id"] for r in found} == set(store.children.values())
    by_name = {r["info"]["run_name"]: r for r in found}
    run = by_name["mlp1x512-noise0.5-seed1"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert params["label_noise"] == "0.5" and params["arch"] == "mlp1x512"
    assert metrics["final_test_acc"] == pytest.approx(0.5) and metrics["epochs_to_fit"] == 4.0
    assert by_name["cnn-noise0.5-seed0"]["info"]["status"] == "FAILED"


def test_server_filters_by_gen_gap_and_serves_the_ui(store, server):
    # What a user does in the UI's runs table: compare the trials by generalization gap.
    found = _post(f"{server}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [store.experiment_id], "filter": "metrics.final_gen_gap > 0.8",
        "order_by": ["metrics.final_gen_gap DESC"],
    })["runs"]
    assert [r["info"]["run_name"] for r in found] == ["mlp1x512-noise1.0-seed0", "cnn-noise1.0-seed0"]
    with urllib.request.urlopen(f"{server}/", timeout=10) as response:
        assert response.status == 200 and "<html" in response.read().decode().lower()


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc), read while they run."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = {int(k) for k in f.read().split()}
            except OSError:
                continue
            todo += sorted(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, only not yet reaped
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Whether a new server could listen on the port. As servers do (uvicorn too), with SO_REUSEADDR: the
    health checks' closed connections may linger in TIME_WAIT, which blocks a plain bind but no server."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process tree from Linux's /proc")
def test_sigterm_to_rgsweep_ui_stops_its_server_and_frees_the_port(store, tmp_path):
    port = _free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "rgsweep.cli", "ui", "--port", str(port), "--tracking-uri",
                               store.uri], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server: set[int] = set()
    try:
        # The command's own start (imports) first, then the server's, each within its bound.
        for ready, limit in ((lambda: "Ctrl-C stops the server" in log.read_text(), CLI_TIMEOUT_S),
                             (lambda: _healthy(port), START_TIMEOUT_S)):
            deadline = time.monotonic() + limit
            while not ready():
                assert ui.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, f"rgsweep ui not ready after {limit}s: {log.read_text()}"
                time.sleep(0.25)
        server = _descendants(ui.pid)
        assert server and not _port_free(port)
        ui.send_signal(signal.SIGTERM)  # as a service manager or `kill` would stop it
        assert ui.wait(timeout=STOP_TIMEOUT_S) == 0, log.read_text()[-2000:]
        assert [p for p in server if _alive(p)] == [], "server processes left running"
        assert _port_free(port)
        assert "no authentication" not in log.read_text()  # loopback: no warning
    finally:  # whatever failed, leave nothing behind
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        for pid in [p for p in server if _alive(p)]:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("host,warned", [("0.0.0.0", True), ("192.168.1.7", True), ("myhost.example", True),
                                         ("127.0.0.1", False), ("::1", False), ("localhost", False)])
def test_a_host_beyond_loopback_is_warned_about(host, warned, capsys):
    warn_if_exposed(host, 5000)
    err = capsys.readouterr().err
    assert ("has no authentication" in err and f"--host {host}" in err) == warned


def test_a_port_in_use_exits_2_before_printing_addresses_that_lead_elsewhere(store, capsys):
    """An earlier `make ui` (over another store, say) still holds the port: the server would fail to bind
    only after rgsweep printed addresses that lead to that other server, and rgsweep exited 0."""
    from rgsweep.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", store.uri]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"rgsweep ui: error: 127.0.0.1:{port} is not free (Address already in use)")
    assert f"--port (make ui PORT={port + 1})" in captured.err and captured.err.count("\n") == 1


def test_server_over_a_store_written_by_a_real_sweep(sweep_store, tmp_path):
    from infra import MlflowServer

    server = MlflowServer(sweep_store.uri, tmp_path).start()
    try:
        with urllib.request.urlopen(
            f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={sweep_store.experiment}",
            timeout=10,
        ) as response:
            exp = json.load(response)["experiment"]
        found = _post(f"{server.url}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp["experiment_id"]], "filter": "tags.`rgsweep.kind` = 'trial'",
            "order_by": ["metrics.gen_gap DESC"],
        })["runs"]
        assert sorted(r["info"]["run_name"] for r in found) == sorted(sweep_store.trials)
        for run in found:
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert run["info"]["status"] == "FINISHED" and params["epochs"] == "3"
            assert {"test_acc", "gen_gap", "train_acc", "epochs_run"} <= set(metrics)
        gaps = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "gen_gap") for r in found]
        assert gaps == sorted(gaps, reverse=True)
        with urllib.request.urlopen(f"{server.url}/", timeout=10) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
    finally:
        server.stop()
