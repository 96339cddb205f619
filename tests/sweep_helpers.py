"""Small sweep files and store queries shared by the sweep and fault-injection tests."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from rgsweep import tracking


def write_sweep(directory: Path, name: str, epochs: int = 2, **spec) -> Path:
    """A sweep file of tiny synthetic trials (mlp1x512, no early stop at fit) with `spec` on top."""
    doc = {"name": name, "base": {"dataset": "synthetic", "arch": "mlp1x512", "epochs": epochs, "lr": 0.05,
                                  "device": "cpu", "fit_threshold": None}, **spec}
    path = directory / f"{name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def children(client, experiment: str) -> list:
    """Every trial run of an experiment (none when it does not exist)."""
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else tracking.search_children(client, exp.experiment_id)


def wait_for(predicate, what: str = "the sweep to make progress", timeout: float = 300.0) -> None:
    """Poll an observable condition (the store, a file) until it holds; the bound only stops a hung test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
