"""Pictures of the data: sample training images per condition a sweep uses, as its trials train on them.

One row per condition: the clean data, one label-noise level (changed labels in red, `old→new`), each
pixel corruption, each augmentation pipeline, each other preprocessing. Every row is drawn from the
tensors a trial trains on: `rgsweep.train.prepare_data` (load, corrupt, preprocess; on the CPU) and, for
augmentation, the trial's pipeline (`make_augment`) applied to a batch of the images its batches are cut
from (the full-size ones for the paper's crop, which then yields whitened 28x28 windows), then each image
min-max rescaled to [0, 1] for display (whitened pixels have no fixed range). The same training-set
positions appear in every column (one image per class, first of each in training order), so a column
shows one image under each condition.

Used by `rgsweep show` (one trial), and for the trials of an export by `rgsweep report` (so also the
sweep's page on its parent run, rgsweep/analysis/page.py) and notebooks/00_data.ipynb. No MLflow here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rgsweep.config import ConfigError, TrialConfig, make_config

# The keys that decide what a trial's training images and labels are (the rest: model and optimisation).
DATA_KEYS = ("dataset", "data_dir", "subset", "val_fraction", "label_noise", "corruption", "corrupt_fraction",
             "pixel_fraction", "corruption_seed", "preprocess", "augment", "seed")
SHOWN = 10  # images per row
GAP = 0.12  # between images, in image widths


@dataclass
class SampleRow:
    title: str
    config: TrialConfig
    images: torch.Tensor  # [K,C,H,W] float: the trial's training images (after augmentation when it has one)
    labels: torch.Tensor  # [K] the labels trained on
    original: torch.Tensor  # [K] the labels before label noise
    noisy: torch.Tensor  # [K] bool: the trial's `noisy` mask (label changed)
    index: torch.Tensor  # [K] positions in the trial's training set
    changed: float = 0.0  # share of the trial's whole training set whose label changed


def clean(config: TrialConfig) -> TrialConfig:
    return config.model_copy(update={"label_noise": 0.0, "corruption": "none", "augment": []})


def _data_key(c: TrialConfig) -> tuple:
    return tuple(str(getattr(c, k)) for k in DATA_KEYS if k != "seed" or c.augment)


def _changes(c: TrialConfig) -> int:
    """How far a trial is from the clean data (fewest first, so a row isolates its condition)."""
    return int(c.label_noise > 0) + int(c.corruption != "none") + int(bool(c.augment))


def describe(c: TrialConfig, ref: TrialConfig) -> str:
    parts = []
    if c.corruption != "none":
        frac = f", {c.corrupt_fraction:.0%} of images" if c.corrupt_fraction < 1 else ""
        pix = f", {c.pixel_fraction:.0%} of positions" if c.pixel_fraction < 1 else ""
        parts.append(f"{c.corruption.replace('_', ' ')}{frac}{pix}")
    if c.label_noise > 0:
        parts.append(f"label noise {c.label_noise:g} (changed labels in red, old→new)")
    if c.augment:
        parts.append("augment " + "+".join(c.augment) + f" (one draw, seed {c.seed})")
    for k in ("dataset", "subset", "val_fraction", "preprocess", "corruption_seed"):
        if getattr(c, k) != getattr(ref, k):
            parts.append(f"{k} {getattr(c, k)}")
    return "; ".join(parts) or "clean"


def slug(c: TrialConfig) -> str:
    """A file-name part for a trial's data condition, e.g. `digits-noise0.4-shuffled_pixels-crop+flip`."""
    parts = [c.dataset.split(":")[0]]
    parts += [f"noise{c.label_noise:g}"] if c.label_noise > 0 else []
    parts += [c.corruption] if c.corruption != "none" else []
    parts += ["+".join(c.augment)] if c.augment else []
    return "-".join(parts if len(parts) > 1 else [*parts, "clean"])


def conditions(configs: Iterable[TrialConfig]) -> list[TrialConfig]:
    """The conditions worth a row: clean, the median nonzero label-noise level, each pixel corruption, each
    augmentation pipeline, the clean data of each other dataset or preprocessing; each from the trial
    nearest to clean that has it."""
    configs = sorted(configs, key=_changes)  # stable: the sweep's order among equals
    if not configs:
        return []
    rows = [clean(configs[0])]
    seen = {_data_key(rows[0])}

    def add(found: list[TrialConfig]) -> None:
        if found and _data_key(found[0]) not in seen:
            rows.append(found[0])
            seen.add(_data_key(found[0]))

    levels = sorted({c.label_noise for c in configs if c.label_noise > 0})
    if levels:
        add([c for c in configs if c.label_noise == levels[(len(levels) - 1) // 2]])
    for c in configs:
        if c.corruption != "none":
            add([d for d in configs if (d.corruption, d.corrupt_fraction, d.pixel_fraction)
                 == (c.corruption, c.corrupt_fraction, c.pixel_fraction)])
    for c in configs:
        if c.augment:
            add([d for d in configs if d.augment == c.augment])
    for c in configs:  # the clean data of trials that differ in dataset, preprocessing, subset, ...
        add([clean(c)])
    return rows


def pick(labels: torch.Tensor, num_classes: int, n: int = SHOWN) -> torch.Tensor:
    """n training-set positions: the first image of each class, then the second of each, ..."""
    per_class = [torch.nonzero(labels == k).flatten().tolist() for k in range(num_classes)]
    out: list[int] = []
    for rank in range(max(map(len, per_class), default=0)):
        out += [idx[rank] for idx in per_class if rank < len(idx)]
        if len(out) >= n:
            break
    return torch.tensor(out[:n], dtype=torch.long)


def sample_rows(configs: Iterable[TrialConfig], n: int = SHOWN) -> list[SampleRow]:
    """One row per condition (see `conditions`), each from its trial's own tensors, on the CPU."""
    from rgsweep.train import make_augment, prepare_data

    cpu = torch.device("cpu")
    cache: dict[tuple, Any] = {}

    def data(c: TrialConfig) -> Any:
        key = tuple(str(getattr(c, k)) for k in DATA_KEYS if k != "seed")
        if key not in cache:
            cache[key] = prepare_data(c.model_copy(update={"device": "cpu"}), cpu)
        return cache[key]

    todo = conditions(configs)
    rows = []
    for c in todo:
        d, ref = data(c), data(clean(c))
        idx = pick(ref.y_train, ref.num_classes, n)
        images = d.x_train[idx]
        if c.augment:  # as train() does: its pipeline on a batch cut from its source (full-size for the crop)
            source = d.x_crop if d.x_crop is not None else d.x_train
            images = make_augment(c, d)(source[idx], torch.Generator().manual_seed(c.seed))
        changed = float(d.noisy.float().mean()) if len(d.noisy) else 0.0
        title = describe(c, todo[0]) + (f"; {changed:.0%} of the training labels changed" if changed else "")
        rows.append(SampleRow(title, c, images, d.y_train[idx], ref.y_train[idx], d.noisy[idx], idx, changed))
    return rows


def displayable(images: torch.Tensor) -> np.ndarray:
    """[K,C,H,W] -> [K,H,W] (one channel) or [K,H,W,C] in [0, 1], each image min-max rescaled (a constant
    image becomes mid-grey)."""
    x = images.detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    x = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.full_like(x, 0.5))
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


def draw(rows: list[SampleRow], title: str = "") -> Figure:
    """The rows as one figure: a strip of images per condition, each labelled with its training label
    (changed labels in red, `old→new`, framed in red).

    One axes per row, its images placed side by side with `extent` (unit squares one `GAP` apart), laid out
    by hand: 50 axes under matplotlib's constrained layout took seconds, and this runs in the sweep driver."""
    n = max(len(r.index) for r in rows)
    cell, head, label, top = 0.9, 0.3, 0.25, 0.35  # inches: image, row title, label, figure title
    width, row_h = n * cell * (1 + GAP) + 0.2, head + cell + label
    height = top + len(rows) * row_h
    fig = Figure(figsize=(width, height))
    fig.suptitle(title or "Training images as the trials see them (each image min-max rescaled)", fontsize=10,
                 y=1 - 0.12 / height)
    for r, row in enumerate(rows):
        y0 = height - top - r * row_h  # the row's top edge, inches from the bottom
        ax = fig.add_axes((0.1 / width, (y0 - head - cell) / height, (width - 0.2) / width, cell / height))
        ax.set_title(row.title, fontsize=9, loc="left", pad=4)
        ax.set(xlim=(-GAP / 2, n * (1 + GAP) - GAP / 2), ylim=(0, 1))
        ax.set_axis_off()
        for i, img in enumerate(displayable(row.images)):
            x0 = i * (1 + GAP)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
                      extent=(x0, x0 + 1, 0, 1))
            changed = bool(row.noisy[i])
            text = f"{int(row.original[i])}→{int(row.labels[i])}" if changed else str(int(row.labels[i]))
            ax.text(x0 + 0.5, -0.04, text, ha="center", va="top", fontsize=8, color="red" if changed else "black")
            ax.add_patch(Rectangle((x0, 0), 1, 1, fill=False, edgecolor="red" if changed else "0.6",
                                   linewidth=2 if changed else 0.5))
        ax.set_aspect("equal", adjustable="datalim")
    return fig


def figure(configs: Iterable[TrialConfig], n: int = SHOWN, title: str = "") -> Figure:
    rows = sample_rows(configs, n)
    datasets = ", ".join(dict.fromkeys(Path(r.config.dataset.removeprefix("imagefolder:")).name for r in rows))
    return draw(rows, title or f"Training images per condition ({datasets}; as the trials train on them, "
                               "each image min-max rescaled)")


def save(configs: Iterable[TrialConfig], path: str | Path, n: int = SHOWN, title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(configs, n, title).savefig(path, dpi=110)
    return path


# -- from an export ----------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    if v is None or (not isinstance(v, (list, tuple, str)) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def configs_from_runs(runs: pd.DataFrame) -> list[TrialConfig]:
    """The data part of each exported trial's config (params columns); trials whose params do not make a
    valid config are left out. Raises ConfigError when none does."""
    configs, errors = [], []
    keys = [k for k in DATA_KEYS if k in runs.columns]
    for record in runs[keys].to_dict("records"):
        values = {k: v for k, v in ((k, _plain(record[k])) for k in keys) if v is not None}
        try:
            configs.append(make_config(values, where="an exported run"))
        except ConfigError as e:
            errors.append(str(e))
    if not configs:
        raise ConfigError(errors[0] if errors else "no trial runs with data params")
    return configs


def figure_from_runs(runs: pd.DataFrame, n: int = SHOWN) -> Figure:
    """The data figure for the trials of an export; a figure with a note when the data cannot be loaded
    here (for example a dataset that lives on the cluster only)."""
    from rgsweep.data.sources import DatasetError

    try:
        return figure(configs_from_runs(runs), n)
    except (ConfigError, DatasetError, ValueError) as e:
        fig = Figure(figsize=(6.0, 1.5), layout="constrained")
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no data: {e}", ha="center", va="center", transform=ax.transAxes, color="gray",
                wrap=True)
        return fig
