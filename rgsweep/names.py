"""The names a trial config may use, without torch: datasets, corruptions, preprocessing presets,
augmentations and architectures; and the readable name of a trial's run (`cnn-noise0.4`).

config.py validates against these, and cli.py imports config.py, so `rgsweep --help` and a bad
option answer in a fraction of a second instead of after torch's 3 s import. The modules that
implement each name import their list from here; tests/test_walls.py checks that the model
registry (rgsweep/models) builds exactly MODEL_NAMES and that config.py still imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DATASET_NAMES = ("cifar10", "mnist", "fashion-mnist", "digits", "synthetic")
IMAGEFOLDER = "imagefolder:"
CORRUPTIONS = ("none", "shuffled_pixels", "random_pixels", "gaussian")
PREPROCESS = ("paper", "standard", "none")
CROP_SIZE = 28  # the paper's window (Appendix A: the centre 28x28 of CIFAR's 32x32)
AUGMENTATIONS = ("crop", "padcrop", "flip", "erase", "rotate", "affine", "jitter", "perspective")
MODEL_NAMES = ("mlp1x512", "mlp3x512", "alexnet", "inception", "inception-nobn", "resnet18", "wrn28-1", "cnn")
MLP_NAMES = ("mlp1x512", "mlp3x512")  # every other architecture is a convnet (tests/test_walls.py checks)


def check_augmentations(names: list[str]) -> None:
    """Raise ValueError naming the first unknown augmentation and the allowed ones, or a conflict."""
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if "crop" in names and "padcrop" in names:
        raise ValueError("crop (the paper's random 28x28 window) and padcrop (a padded random crop) are two "
                         "random crops: use one of them")


def is_convnet(arch: str) -> bool:
    """As rgsweep.models.is_convnet, without torch (the driver's packing decision: rgsweep/packing.py)."""
    return arch not in MLP_NAMES


_ABBREV = {"label_noise": "noise", "weight_decay": "wd", "dropout": "drop", "corrupt_fraction": "cfrac",
           "pixel_fraction": "pfrac", "batch_size": "bs", "lr": "lr", "batch_norm": "bn"}


def run_name(config: Any, keys: Iterable[str] = ("label_noise",), seed: bool = True) -> str:
    """Readable child-run name from the values a trial was given, e.g. `cnn-noise0.4`, `cnn-gaussian`;
    `-seed1` at the end when asked (a sweep with several seeds)."""
    parts = [config.arch]
    for k in keys:
        if k in ("arch", "seed"):
            continue
        v = getattr(config, k, None)
        if k == "corruption":
            parts.append(v if v != "none" else "clean")
        elif k == "augment":
            parts.append("+".join(v) if v else "noaug")
        elif k == "dataset":
            parts.append(str(v).split(":")[0])
        else:
            parts.append(f"{_ABBREV.get(k, k)}{v}")
    if seed:
        parts.append(f"seed{config.seed}")
    return "-".join(parts)
