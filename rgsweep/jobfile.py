"""What a sweep file and a tuning file share before anything runs: per-trial resources, the smoke
defaults, the retry count, and the trial keys and Ray options given on the command line.

Imports no torch, MLflow, Ray or Optuna (tests/test_walls.py): `sweep` and `tune` validate their file
and options with it and refuse bad input in a fraction of a second, before those imports start.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rgsweep.config import ConfigError

DEFAULT_SMOKE = {"dataset": "synthetic", "data_dir": None, "subset": None, "epochs": 2, "download": False}
DEFAULT_RETRIES = 2  # infrastructure failures (a worker or node lost) retried per trial


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)  # CPU cores per trial; also the trial's torch thread count
    gpu: float = Field(0.0, ge=0)  # GPUs per trial; 0.25 packs four trials on one GPU (no memory isolation)


def parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def check_run_args(args: argparse.Namespace) -> None:
    """The Ray options of `sweep` and `tune`, checked before anything starts: out of range, or ignored."""
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.num_cpus is None:
        return
    if args.num_cpus < 1:
        raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:  # joining a cluster, Ray would ignore it
        source = "--ray-address" if args.ray_address else "$RAY_ADDRESS"
        raise ConfigError(
            f"--num-cpus sizes a local Ray instance, but this command joins the cluster at {address} ({source}): "
            "the cluster's nodes have their CPUs (`ray start --num-cpus`); cap the trials with --max-concurrent")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Trial keys set on the command line (`--set`, `--dataset`, `--data-dir`, `--download`)."""
    overrides = parse_set(args.set)
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.download:
        overrides["download"] = True
    return overrides
