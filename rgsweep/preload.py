"""The driver's data step: each dataset of a sweep resolved, downloaded, checked and decoded once.

Ray Tune runs every trial in its own working directory, on whichever node has room, so a trial must not
look for data itself: a relative path would resolve inside Ray's session folder, `--download` would
fetch the dataset once per trial, and each node would need its own copy. So the driver (`rgsweep
sweep`, `rgsweep tune`), in the directory where the user ran the command and before Ray starts:

1. resolves every location (`--data-dir`, `$RGSWEEP_DATA`, `./data`, `imagefolder:PATH`, `~`) against
   that directory (`cwd`);
2. downloads what is missing when `download` is set, once;
3. loads each distinct dataset once (from the decode cache when it can). This is also the data check,
   the same with or without a Ray cluster: a missing location fails here with one line naming the
   resolved path (ConfigError: exit 2, nothing started, no MLflow run);
4. hands the uint8 tensors to `raytune.run_trials(datasets=...)`, which puts them in Ray's object
   store; trials read them without a copy on the driver's node, and no trial opens a dataset file.

Trial identity does not change: a trial's config keeps the dataset as the user wrote it
(`imagefolder:cifar`, `data_dir: data`), and `TrialConfig.key()` hashes that, so stores written before
this step existed still recognise their trials on `--resume`. The absolute location is recorded beside
it, as the run tag `rgsweep.data_path` (tracking.trial_tags). The trade-off: the same relative path run
from two directories is the same trial to `--resume`, exactly as `data_dir` has never been part of the
key; the tag tells such runs apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rgsweep.config import ConfigError, TrialConfig
from rgsweep.data.sources import (
    IDX_DATASETS,
    IMAGEFOLDER,
    Dataset,
    DatasetError,
    data_location,
    load_dataset,
    take_subset,
)


@dataclass
class SweepData:
    """The decoded datasets of a sweep (uint8 CPU tensors) by data key, and the folder they were resolved from."""

    cwd: Path
    datasets: dict[str, Dataset] = field(default_factory=dict)

    def source(self, config: TrialConfig) -> str:
        """The dataset and its absolute location."""
        return f"{config.dataset} @ {data_location(config.dataset, config.data_dir, self.cwd) or 'built-in'}"

    def key(self, config: TrialConfig) -> str:
        """Which data a trial trains on: the source and the subset."""
        return f"{self.source(config)} subset={config.subset}"

    def select(self, configs: Iterable[TrialConfig]) -> dict[str, Dataset]:
        """The datasets these trials use, by key (what a trial looks its data up by)."""
        out = {}
        for c in configs:
            k = self.key(c)
            if k not in self.datasets:
                raise ConfigError(f"the preloaded data has no {k!r}: preload the same trials that run")
            out[k] = self.datasets[k]
        return out


def preload(configs: Iterable[TrialConfig], cwd: str | Path | None = None, quiet: bool = False) -> SweepData:
    """Resolve, download (where asked), check and load every distinct dataset of `configs` once.

    Raises ConfigError (one line, the resolved path and the fix) when a dataset is missing or unreadable.
    """
    configs = list(configs)
    data = SweepData(Path(cwd or os.getcwd()).resolve())
    whole: dict[str, Dataset] = {}  # dataset @ location -> all of it; subsets are cut from it, sharing the test split
    for c in configs:
        key = data.key(c)
        if key in data.datasets:
            continue
        t0 = time.perf_counter()
        source = data.source(c)
        try:
            if source not in whole:
                download = any(o.download for o in configs if data.source(o) == source)
                whole[source] = load_dataset(c.dataset, c.data_dir, download, cwd=data.cwd)
            ds = whole[source] if c.subset is None else take_subset(whole[source], c.subset)
        except DatasetError as e:
            raise ConfigError(_with_hint(str(e), c, data.cwd)) from None
        ds.fingerprint()  # hashed once here; trials receive it with the data
        data.datasets[key] = ds
        if not quiet:
            shape = "x".join(map(str, ds.input_shape))
            print(f"data: {key}: {len(ds.y_train):,} train / {len(ds.y_test):,} test images of {shape} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return data


def _with_hint(msg: str, config: TrialConfig, cwd: Path) -> str:
    """Say where a relative location was taken from: the usual surprise when a path does not exist."""
    raw = config.dataset[len(IMAGEFOLDER):] if config.dataset.startswith(IMAGEFOLDER) else config.data_dir
    if raw is None and config.dataset in ("cifar10", *IDX_DATASETS):
        raw = os.environ.get("RGSWEEP_DATA") or "./data"
    if raw is not None and not Path(raw).expanduser().is_absolute():
        return f"{msg} (relative paths are taken from the directory rgsweep runs in: {cwd})"
    return msg
