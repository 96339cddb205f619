"""A real `mlflow server` for tests, stoppable and restartable on the same port (a store that goes away
mid-sweep and comes back). Minimal on purpose: the cluster tests' fixtures (tests/infra.py, PostgreSQL
and Ray clusters) cover more; this one only needs SQLite and one port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from rgsweep.analysis.commands import server_command, server_env

START_TIMEOUT_S = 120  # ~15 s on an idle machine; the bound only stops a test that would hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, backend_uri: str, log_dir: Path, port: int | None = None):
        self.backend_uri = backend_uri
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> MlflowServer:
        """Start and wait until /health answers (bounded; a crashed server fails at once with its log)."""
        self.starts += 1
        log = self.log_dir / f"server-{self.starts}.log"  # a file, not a pipe nobody drains
        with log.open("w") as out:
            # Own session: the launcher and its uvicorn child are one process group, ours to stop.
            self.proc = subprocess.Popen(server_command(self.backend_uri, host="127.0.0.1", port=self.port),
                                         env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")
            try:
                self.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        """Stop the whole process group and wait for it (the port is free when this returns)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:  # uvicorn's worker may outlive the launcher by a moment
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
