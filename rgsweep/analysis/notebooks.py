"""Execute the analysis notebooks headless (nbclient) against an export; executed copies go to out_dir.

The kernel is "python3" run by this interpreter (jupyter_client swaps the spec's `python` for
sys.executable), so it sees the same environment; RGSWEEP_EXPORT tells the notebooks where the export
is, and PYTHONPATH points at this checkout so `import rgsweep` works without an installed package.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import rgsweep
from rgsweep.analysis.export import AnalysisError


class NotebookError(AnalysisError):
    """A notebook raised while executing."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


SHIPPED = Path(rgsweep.__file__).resolve().parents[1] / "notebooks"  # the checkout's own notebooks/


def notebook_dir(nb_dir: str | Path | None) -> Path:
    """`--dir`, else ./notebooks when it holds notebooks, else the checkout's own: so `rgsweep notebooks`
    works from wherever the export was made, not only from the checkout."""
    if nb_dir is not None:
        return Path(nb_dir)
    here = Path("notebooks")
    return here if any(here.glob("*.ipynb")) else SHIPPED


def run_notebooks(
    nb_dir: str | Path | None = None,
    export_dir: str | Path = "exports",
    out_dir: str | Path = "notebooks/executed",
    *,
    timeout: int = 600,
    max_parallel: int = 5,
) -> list[Path]:
    """Run every notebook in nb_dir (sorted by name) from nb_dir as working directory. Every executed copy
    is written, failed ones too (they show the traceback); then AnalysisError names the failures."""
    nb_dir = notebook_dir(nb_dir)
    notebooks = sorted(nb_dir.glob("*.ipynb"))
    if not notebooks:
        raise AnalysisError(f"no notebooks in {nb_dir.resolve()}")
    if not (Path(export_dir) / "runs.parquet").exists():
        raise AnalysisError(f"no export in {export_dir}: run `rgsweep export` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source_root = str(Path(rgsweep.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "RGSWEEP_EXPORT": str(Path(export_dir).resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
    }
    # Kernels spend most of their time starting and waiting, so notebooks run side by side (~2x faster
    # than one after another on 2 cores); the semaphore bounds how many kernels exist at once.
    slots = asyncio.Semaphore(max_parallel)

    # Kernels talk over unix sockets in a private temp folder, not TCP on 127.0.0.1: no port for another
    # local user to reach, and no "running over TCP without encryption" warning per kernel on the terminal.
    # A socket's path must fit in 108 bytes: a long $TMPDIR falls back to /tmp.
    sockets = Path(tempfile.mkdtemp(prefix="rgsweep-kernels-", dir="/tmp" if len(tempfile.gettempdir()) > 60 else None))

    async def run_one(path: Path) -> str | None:
        nb = nbformat.read(path, as_version=4)
        km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / path.stem[:20]))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        failure = None
        async with slots:
            try:
                await client.async_execute(env=env)
            except CellExecutionError as e:
                last_line = _ANSI.sub("", str(e)).strip().splitlines()[-1]  # tracebacks come coloured
                failure = f"{path.name}: {last_line}"
            finally:  # a kernel manager given to nbclient is the giver's to shut down
                if km.has_kernel:
                    await km.shutdown_kernel()
        nbformat.write(nb, out / path.name)
        return failure

    async def run_all() -> list[str | None]:
        return await asyncio.gather(*(run_one(p) for p in notebooks))

    try:
        failures = [f for f in asyncio.run(run_all()) if f]
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    written = [out / p.name for p in notebooks]
    if failures:
        raise NotebookError("notebooks failed: " + "; ".join(failures) + f" (executed copies in {out})")
    return written
