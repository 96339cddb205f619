"""Subcommands `rgsweep export | report | notebooks | ui`, added to the main parser by `register`.

Heavy imports (mlflow, pandas, matplotlib) happen inside the command functions, so `rgsweep --help`
and the other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from rgsweep.stores import sqlite_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _error(command: str, message: object) -> int:
    print(f"rgsweep {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlruns/mlflow.db)")


def cmd_export(args: argparse.Namespace) -> int:
    from rgsweep.analysis.export import AnalysisError, export_runs, load_export

    try:
        paths = export_runs(args.tracking_uri, experiment=args.experiment, parent_run_id=args.sweep,
                            out_dir=args.out, csv=args.csv)
    except AnalysisError as e:
        return _error("export", e)
    runs, history = load_export(args.out)
    print(f"exported {len(runs)} trial runs, {len(history)} epoch rows")
    for path in paths.values():
        print(f"  {path}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from rgsweep.analysis.export import AnalysisError, experiment_id, get_client
    from rgsweep.analysis.report import build_report, latest_sweep_parent

    try:
        path = build_report(args.tracking_uri, experiment=args.experiment, out_dir=args.out,
                            log_to_parent=not args.no_log)
    except AnalysisError as e:
        return _error("report", e)
    print(f"report: {path}")
    if not args.no_log:
        client = get_client(args.tracking_uri)
        parent = latest_sweep_parent(client, experiment_id(client, args.experiment))
        print(f"logged as artifacts report/ of sweep run {parent}" if parent
              else "no sweep parent run: report not logged to MLflow")
    return check_claims(path.parent) if args.check else EXIT_OK


def check_claims(folder: Path) -> int:
    """`report --check`: the claims of the report just written, one line each; 1 when a judged one fails."""
    from rgsweep.analysis import claims
    from rgsweep.analysis.export import load_export

    judged, _ = claims.judge(*load_export(folder / "data"))
    for line in claims.check_lines(judged):
        print(line)
    bad = claims.failed(judged)
    print(f"claims: {len(bad)} FAILED ({', '.join(c.id for c in bad)})" if bad
          else "claims: none failed (NOT RUN ones lacked the runs they need)")
    return EXIT_FAILED if bad else EXIT_OK


def cmd_notebooks(args: argparse.Namespace) -> int:
    from rgsweep.analysis.export import AnalysisError
    from rgsweep.analysis.notebooks import NotebookError, run_notebooks

    try:
        written = run_notebooks(args.dir, args.export, args.out)
    except NotebookError as e:  # a notebook raised: the run failed, not the command line
        print(f"rgsweep notebooks: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except AnalysisError as e:
        return _error("notebooks", e)
    for path in written:
        print(f"executed: {path}")
    return EXIT_OK


def artifacts_dir(uri: str) -> Path:
    """Where a UI-created experiment's artifacts go: beside a SQLite database (mlruns/), else ./mlruns."""
    db = sqlite_file(uri)
    return db.parent if db is not None else Path.cwd() / "mlruns"


def server_command(uri: str, *, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """`mlflow server` over the store, from this interpreter's mlflow. One worker: a local UI needs no more,
    and it starts in half the time of the default four."""
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
        "--artifacts-destination", str(artifacts_dir(uri)), "--host", host, "--port", str(port),
        "--workers", str(workers),
    ]


def server_env() -> dict[str, str]:
    """The server's environment. MLflow 3.17 also starts job-runner processes (GenAI judges, trace rollups)
    by default: seven extra processes, twice the start-up time, and orphans when the server is killed.
    A UI over sweep runs needs none of it; setting the variable yourself turns it back on."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def runs_table_urls(uri: str, host: str, port: int) -> list[tuple[str, str]]:
    """(experiment name, address of its runs table in the training view): the 3.17 UI opens experiments on
    a GenAI overview of traces (rgsweep.tracking.runs_url)."""
    from rgsweep import tracking
    from rgsweep.analysis.export import get_client

    return [(e.name, tracking.runs_url(f"http://{host}:{port}", e.experiment_id))
            for e in get_client(uri).search_experiments()]


def cmd_ui(args: argparse.Namespace) -> int:
    from rgsweep.analysis.export import AnalysisError, resolve_uri

    try:
        uri = resolve_uri(args.tracking_uri)
        check_port_free(args.host, args.port)
        urls = runs_table_urls(uri, args.host, args.port)
    except AnalysisError as e:
        return _error("ui", e)
    print(f"MLflow UI over {uri}")
    for name, url in urls:
        print(f"  {name}: {url}")
    print("(Ctrl-C stops the server)", flush=True)
    warn_if_exposed(args.host, args.port)
    return serve(server_command(uri, host=args.host, port=args.port), server_env())


def check_port_free(host: str, port: int) -> None:
    """AnalysisError when host:port is taken. The server would fail to bind only after we printed its
    addresses, and they would lead to whatever holds the port: often an earlier `make ui` over another store."""
    import socket

    from rgsweep.analysis.export import AnalysisError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise AnalysisError(f"--host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            raise AnalysisError(
                f"{host}:{port} is not free ({e.strerror}): another `rgsweep ui` or `mlflow server` may still run "
                f"there; stop it, or pick another port with --port (make ui PORT={port + 1})") from None


def warn_if_exposed(host: str, port: int) -> None:
    """A server bound beyond this machine is open to anyone who can reach it: say so."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: --host {host} serves the MLflow UI to the network, and the server has no authentication: "
              f"anyone who can reach port {port} can read, change and delete every run. Bind 127.0.0.1 (the "
              "default) and use an SSH tunnel, or put an authenticating proxy in front.", file=sys.stderr, flush=True)


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop the server as for Ctrl-C."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def serve(command: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits, or until Ctrl-C, SIGTERM or SIGHUP reaches us; then stop it and wait
    for it, so that its port is free and no process of it is left when we return (exit 0 after a stop).

    The server runs in a process group of its own (mlflow's launcher and its uvicorn worker), so a stop
    reaches all of it whichever signal reached us, and a server that ignores SIGTERM for 15 s is killed
    whole. A terminal's Ctrl-C reaches only us, and we stop the group."""
    import signal

    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    server = None
    try:
        server = subprocess.Popen(command, env=env, start_new_session=True)
        return server.wait()
    except (KeyboardInterrupt, _Stop):
        return EXIT_OK
    finally:
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stop short
        if server is not None:
            _stop_group(server)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stop_group(server: subprocess.Popen) -> None:
    import signal

    def kill(sig: int) -> None:
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the whole group is gone already
            pass

    kill(signal.SIGTERM)  # uvicorn shuts down gracefully; mlflow's launcher exits with it
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    kill(signal.SIGKILL)  # anything of it still there after 15 s, or left behind by the launcher
    server.wait()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export trial runs to runs.parquet and history.parquet")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", metavar="NAME", help="every trial of this experiment (default: all)")
    which.add_argument("--sweep", metavar="PARENT_RUN_ID", help="only the trials of this sweep parent run")
    p.add_argument("--out", default="exports", metavar="DIR", help="output folder (default: exports/)")
    p.add_argument("--csv", action="store_true", help="also write runs.csv and history.csv")
    _tracking_arg(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("report", help="Markdown report with the paper's figures and tables")
    p.add_argument("--experiment", required=True, metavar="NAME")
    p.add_argument("--out", default="reports", metavar="DIR", help="output folder (default: reports/)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a claim of the paper that the runs can judge FAILs (NOT RUN does not fail)")
    _tracking_arg(p)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("notebooks", help="execute the analysis notebooks headless on an export")
    p.add_argument("--export", default="exports", metavar="DIR", help="export folder (default: exports/)")
    p.add_argument("--out", default="notebooks/executed", metavar="DIR",
                   help="where executed copies go (default: notebooks/executed/)")
    p.add_argument("--dir", metavar="DIR",
                   help="notebooks to run (default: notebooks/ here if it has any, else rgsweep's own)")
    p.set_defaults(func=cmd_notebooks)

    p = subparsers.add_parser("ui", help="the MLflow UI over the tracking store")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    _tracking_arg(p)
    p.set_defaults(func=cmd_ui)
