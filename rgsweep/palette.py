"""One colour per architecture, the same in every sweep: MLflow's run colour (`mlflow.runColor`, which
colours a run's row and its lines and points in every chart of the UI) and the report's figures.

Fixed rather than assigned in order of appearance, so `cnn` is the same orange in the demo, in the
label-noise sweep and in a notebook. Colours come from the Tableau 10 palette (distinct, colour-blind
tolerable); a model not listed gets one of them from a hash of its name (stable, possibly shared).
"""

from __future__ import annotations

import hashlib

TABLEAU10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf")
ARCH_COLORS: dict[str, str] = {
    "mlp1x512": "#1f77b4", "cnn": "#ff7f0e", "alexnet": "#2ca02c", "inception": "#d62728",
    "mlp3x512": "#9467bd", "inception-nobn": "#8c564b", "resnet18": "#e377c2", "wrn28-1": "#17becf",
}


def arch_color(arch: str) -> str:
    """'#rrggbb' for an architecture name."""
    if arch in ARCH_COLORS:
        return ARCH_COLORS[arch]
    return TABLEAU10[int(hashlib.sha1(arch.encode()).hexdigest(), 16) % len(TABLEAU10)]
