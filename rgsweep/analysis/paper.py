"""Reference numbers from Zhang et al. (ICLR 2017), Table 1: CIFAR-10 train % / test % accuracy.

Keys are rgsweep's architecture names; settings are Table 1's columns. Cells the paper left empty are absent.
"""

from __future__ import annotations

SETTINGS = ("crop+wd", "crop only", "wd only", "neither", "random labels")

TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "inception": {
        "crop+wd": (100.0, 89.05), "crop only": (100.0, 89.31), "wd only": (100.0, 86.03),
        "neither": (100.0, 85.75), "random labels": (100.0, 9.78),
    },
    "inception-nobn": {"wd only": (100.0, 83.00), "neither": (100.0, 82.00), "random labels": (100.0, 10.12)},
    "alexnet": {
        "crop+wd": (99.90, 81.22), "crop only": (99.82, 79.66), "wd only": (100.0, 77.36),
        "neither": (100.0, 76.07), "random labels": (99.82, 9.86),
    },
    "mlp3x512": {"wd only": (100.0, 53.35), "neither": (100.0, 52.39), "random labels": (100.0, 10.48)},
    "mlp1x512": {"wd only": (99.80, 50.39), "neither": (100.0, 50.51), "random labels": (99.34, 10.61)},
}
DATASET = "cifar10"


def table1(arch: str, setting: str) -> tuple[float, float] | None:
    """(train %, test %) the paper reports for this architecture and setting, or None."""
    return TABLE1.get(arch, {}).get(setting)
