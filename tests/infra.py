"""Real servers for tests, each started by the test and stopped by it: a PostgreSQL server (Debian's
binaries), a real `mlflow server`, and a two-node Ray cluster. Importable helpers plus pytest fixtures;
a test module uses a fixture by importing it (`from infra import mlflow_server  # noqa: F401`).

The machine is shared with other Ray users, so everything here stops only the processes it started
(by their process group), never `ray stop`; every server binds 127.0.0.1 on a free port; waits poll a
readiness check with a deadline and fail with the process's log tail.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's `mlflow` and `ray`
PG_BIN = Path(os.environ.get("RGSWEEP_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    """A port nobody listens on now (the OS picks it). Another process could take it before we bind it:
    an accepted, tiny race on a test machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for(check: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll `check` until it holds; fail early if `proc` died, and at `timeout` with the log's tail."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}\n{tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{tail(log) if log else ''}")
        time.sleep(0.2)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server in its own process group (so `stop` ends it and every child it forked, nothing else)."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM to the process group we started, then SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- PostgreSQL -----------------------------------------------------------------------------------
class Postgres:
    """A throw-away PostgreSQL server: `initdb` in a temp folder, `pg_ctl start` on a free port of
    127.0.0.1 (its unix socket in the same folder), trust authentication, fsync off (a test's data).
    initdb refuses to run as root, so as root the server runs as the `postgres` user, which must own the
    folder (it is made under /tmp, not under pytest's root-only tmp_path)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rgsweep-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self.running = False

    @staticmethod
    def available() -> str | None:
        """None when the server binaries are there, else why not (the reason a test skips with)."""
        missing = [b for b in ("initdb", "pg_ctl", "createdb") if not (PG_BIN / b).exists()]
        if missing:
            return f"PostgreSQL server binaries not found in {PG_BIN} ({', '.join(missing)}): " \
                   "apt-get install postgresql, or set RGSWEEP_PG_BIN"
        return None

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._as_owner(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                                      "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"),
                       check=True, capture_output=True)
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                      "-o", opts, "-w", "-t", "60", "start"),
                       check=True, capture_output=True)
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            subprocess.run(self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                          "stop"), capture_output=True)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URI (psycopg 3 driver) for `mlflow server`."""
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[tuple]:
        """Rows of one SQL statement (to check what a server really stored)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as conn:
            return conn.execute(sql).fetchall()


# -- mlflow server --------------------------------------------------------------------------------
class MlflowServer:
    """`mlflow server` on 127.0.0.1:<free port> with proxied artifacts (`--serve-artifacts`) and one
    worker. `stop()` and `start()` again reuse the same port, for tests of a server that goes away."""

    def __init__(self, backend_uri: str, root: Path, port: int | None = None, database: str | None = None) -> None:
        self.backend_uri, self.database = backend_uri, database  # database: its PostgreSQL name, if any
        self.artifacts = Path(root) / "artifacts"
        self.log = Path(root) / "mlflow-server.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.artifacts.mkdir(parents=True, exist_ok=True)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 180) -> MlflowServer:
        return self.launch().wait(timeout)

    def launch(self) -> MlflowServer:
        """Start the process and return at once (`wait` for it later: start something else meanwhile)."""
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri, "--serve-artifacts",
               "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        # The server's job runner (GenAI jobs, extra processes at start) is of no use to sweeps.
        self.proc = spawn(cmd, self.log, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        return self

    def wait(self, timeout: float = 180) -> MlflowServer:
        wait_for(self.healthy, f"mlflow server on {self.url}", timeout, self.proc, self.log)
        return self

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def restart(self, timeout: float = 180) -> MlflowServer:
        self.stop()
        return self.start(timeout)


# -- Ray cluster ----------------------------------------------------------------------------------
class RayCluster:
    """Two Ray nodes on this machine: `ray start --head` and `ray start --address`, each `--block` in its
    own process group (terminating it stops that node and only that node), one CPU each, each with a
    custom resource naming it (`node_head`, `node_worker`). Token authentication as Ray sets it up:
    `RAY_AUTH_MODE=token` in every process, sharing the token in ~/.ray/auth_token (Ray writes it if
    missing). Each node has its own `--temp-dir`, so the cluster is not recorded as the machine's
    "latest cluster" (which a bare `ray.init()` elsewhere would join). Fixed default ports (dashboard
    8265, dashboard agent, metrics, runtime-env agent) are replaced by free ones: other clusters run here."""

    NODES = ("head", "worker")

    def __init__(self, cpus: int = 1, object_store_mb: int = 200) -> None:
        # Under /tmp, not pytest's deep tmp_path: Ray's unix sockets live below it (108-byte path limit).
        self.root = Path(tempfile.mkdtemp(prefix="rgsweep-ray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus, self.store_bytes = cpus, object_store_mb * 2**20
        self.procs: dict[str, subprocess.Popen] = {}
        # Trials inherit the nodes' environment, not the driver's: like the nodes of a real cluster, they
        # get a decode cache of their own (empty), so a trial that opened dataset files would find none.
        # A node drains for 30 s on SIGTERM by default (for Ray Serve); nothing here needs it.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RGSWEEP_CACHE": str(self.root / "cache"),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.env.pop("RAY_ADDRESS", None)

    def _cmd(self, node: str) -> list[str]:
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(self.cpus), "--num-gpus", "0",
               "--resources", json.dumps({f"node_{node}": 1}), "--object-store-memory", str(self.store_bytes),
               "--temp-dir", str(self.root / node), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port())]
        if node == "head":
            return cmd + ["--head", "--port", str(self.port), "--include-dashboard", "false",
                          "--dashboard-port", str(free_port())]
        return cmd + ["--address", self.address]

    def nodes(self) -> list[dict]:
        """`ray.nodes()` of the cluster, read by a short driver process (this process may hold its own Ray)."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))")
        out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                             text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def node_ids(self) -> dict[str, str]:
        """Node name (head, worker) -> Ray node id, from each node's custom resource."""
        out = {}
        for n in self.nodes():
            for name in self.NODES:
                if n["alive"] and f"node_{name}" in n["resources"]:
                    out[name] = n["id"]
        return out

    def start(self, timeout: float = 180) -> RayCluster:
        # One node after the other: `ray start` gives a node's raylet 30 s (hard-coded) to register, which
        # two nodes starting at once on a loaded 2-core machine can miss.
        for node in self.NODES:
            log = self.root / f"{node}.log"
            self.procs[node] = spawn(self._cmd(node), log, self.env)
            wait_for(lambda log=log: "Ray runtime started" in log.read_text(errors="replace"),
                     f"ray {node} node", timeout, self.procs[node], log)
        ids = self.node_ids()
        if len(ids) != 2:
            raise RuntimeError(f"expected the nodes {self.NODES} in the cluster, found {ids}")
        return self

    def stop(self) -> None:
        for node in reversed(self.NODES):
            stop(self.procs.pop(node, None))
        shutil.rmtree(self.root, ignore_errors=True)


# -- pytest fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the test session; tests create their own databases on it."""
    reason = Postgres.available()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    pg = Postgres()
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[MlflowServer]:
    """A real `mlflow server` on a fresh SQLite store (start ~10-15 s here); `.restart()` for fault tests."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def mlflow_server_pg(postgres, tmp_path) -> Iterator[MlflowServer]:
    """A real `mlflow server` backed by a fresh PostgreSQL database."""
    name = f"mlflow_{tmp_path.name.lower().replace('-', '_')[:40]}"
    server = MlflowServer(postgres.create_database(name), tmp_path, database=name)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (one CPU per node) for the test module."""
    cluster = RayCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
