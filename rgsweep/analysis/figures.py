"""The paper's Figure 1 and companions, drawn from exported frames.

Each function takes frames (see export.py), draws only what exists, and returns a matplotlib Figure
(built without pyplot, so nothing global is touched and nothing needs closing; `fig.savefig` renders
with Agg). A selection with no data gives a figure with a "no data" note instead of an error:
`has_data(fig)` tells them apart. Curves average over seeds; where a point averages several runs
(seeds), a vertical bar spans +- one standard deviation (n - 1 in the denominator) and a note in the
corner says n. Architectures keep the colours they have in the MLflow UI (rgsweep/palette.py). Pass a
filtered `runs` frame to choose what goes in (e.g. one dataset).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rgsweep.analysis.frames import CORRUPTION_TYPES, col, corruption_type, pick_arch
from rgsweep.palette import arch_color

# Class counts of the datasets rgsweep knows, for the chance line of Figure 1c.
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}


def _figure(title: str, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _no_data(fig: Figure, ax: Axes, why: str) -> Figure:
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", transform=ax.transAxes, color="gray")
    return fig


def has_data(fig: Figure) -> bool:
    """False for a figure that only carries a "no data" note."""
    return any(ax.has_data() for ax in fig.axes)


def _clean_label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose inputs are intact (label noise is the only corruption), with a known noise level."""
    corruption = col(runs, "corruption", "none").fillna("none")
    noise = pd.to_numeric(col(runs, "label_noise"), errors="coerce")
    return runs[(corruption == "none") & noise.notna()].assign(label_noise=noise)


def _join(history: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """History rows of the selected runs, with some of their run columns."""
    if "run_id" not in history.columns or "run_id" not in runs.columns:
        return pd.DataFrame(columns=["run_id", "epoch", *columns])
    return history.merge(runs[["run_id", *columns]], on="run_id")


def _first_column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns and df[n].notna().any()), None)


def fig1a_loss_curves(history: pd.DataFrame, runs: pd.DataFrame, *, arch: str | None = None) -> Figure:
    """Training loss against optimizer steps, one line per corruption type (Figure 1a)."""
    kind = corruption_type(runs)
    selected, arch = pick_arch(runs[kind.notna()], arch)
    fig, ax = _figure(f"Figure 1a: training loss ({arch or 'no runs'})")
    ax.set_ylabel("average training loss")
    h = _join(history, selected.assign(kind=kind), ["kind"])
    # Steps (the paper's axis) when every row has them; epochs otherwise.
    x = "steps" if "steps" in h.columns and h["steps"].notna().all() else "epoch"
    ax.set_xlabel("optimizer steps" if x == "steps" else "epoch")
    if h.empty or "train_loss" not in h.columns or h["train_loss"].isna().all():
        return _no_data(fig, ax, "no train_loss history for true/random labels or pixel corruptions")
    for name in CORRUPTION_TYPES:
        mean = h[h["kind"] == name].groupby(x)["train_loss"].mean().dropna()
        if not mean.empty:
            ax.plot(mean.index, mean.to_numpy(), label=name)
    ax.legend()
    return fig


def fig1b_time_to_fit(runs: pd.DataFrame, *, measure: str = "epochs_to_fit") -> Figure:
    """Time to fit the training set against label noise, relative to clean labels, per architecture
    (Figure 1b). A noise level where no seed fitted is marked with an x at the top of the axes."""
    fig, ax = _figure("Figure 1b: convergence slow-down")
    ax.set_xlabel("label corruption")
    ax.set_ylabel(f"time to fit ({measure}), relative to clean labels")
    sel = _clean_label_runs(runs)
    if sel.empty or measure not in sel.columns or "arch" not in sel.columns:
        return _no_data(fig, ax, f"no runs with label_noise, arch and {measure}")
    fitted = sel[measure].notna() & (pd.to_numeric(col(sel, "fitted", 1.0), errors="coerce").fillna(0) > 0)
    skipped, counts = [], []
    for arch, g in sel.groupby("arch", sort=True):
        stats = g[fitted[g.index]].groupby("label_noise")[measure].agg(["mean", "std", "count"])
        mean = stats["mean"]
        clean = mean.get(0.0)
        if clean is None or not clean > 0:
            skipped.append(str(arch))
            continue
        ratio = mean / clean
        (line,) = ax.plot(ratio.index, ratio.to_numpy(), marker="o", label=str(arch), color=arch_color(str(arch)))
        _error_bars(ax, ratio.index, ratio.to_numpy(), stats["std"] / clean, stats["count"], line.get_color())
        counts += stats["count"].tolist()
        unfitted = sorted(set(g["label_noise"]) - set(mean.index))
        if unfitted:  # drawn in axes coordinates vertically: there is no y value to plot
            ax.plot(unfitted, [0.97] * len(unfitted), linestyle="none", marker="x", color=line.get_color(),
                    transform=ax.get_xaxis_transform(), label=f"{arch}: not fitted")
    if not ax.lines:
        return _no_data(fig, ax, "no architecture fitted its clean-label runs")
    if skipped:
        ax.text(0.01, 0.01, f"no clean-label fit: {', '.join(skipped)}", transform=ax.transAxes, fontsize=8)
    _runs_per_point(ax, counts)
    ax.legend()
    return fig


def _error_bars(ax: Axes, x: object, y: object, std: pd.Series, counts: pd.Series, color: str) -> None:
    """+- one standard deviation where a point averages several runs (no caps: caps would be extra lines)."""
    if (counts.to_numpy() > 1).any():
        ax.errorbar(x, y, yerr=np.nan_to_num(std.to_numpy(dtype=float)), fmt="none", ecolor=color, elinewidth=1.2,
                    capsize=0)


def _runs_per_point(ax: Axes, counts: list[int]) -> None:
    """A note in the corner when points average several runs: how many."""
    n = sorted({int(c) for c in counts if c > 0})
    if n and n != [1]:
        ax.text(0.99, 0.01, f"mean ± std over n = {n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} runs per point",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="gray")


def _mean_by_arch(ax: Axes, sel: pd.DataFrame, values: pd.Series) -> None:
    counts: list[int] = []
    for arch, g in sel.assign(_y=values).groupby("arch", sort=True):
        stats = g.groupby("label_noise")["_y"].agg(["mean", "std", "count"]).dropna(subset=["mean"])
        if not stats.empty:
            (line,) = ax.plot(stats.index, stats["mean"].to_numpy(), marker="o", label=str(arch),
                              color=arch_color(str(arch)))
            _error_bars(ax, stats.index, stats["mean"].to_numpy(), stats["std"], stats["count"], line.get_color())
            counts += stats["count"].tolist()
    _runs_per_point(ax, counts)


def fig1c_test_error(runs: pd.DataFrame, *, num_classes: int | None = None) -> Figure:
    """Test error (1 - final test accuracy) against label noise, per architecture (Figure 1c),
    with the chance level 1 - 1/num_classes when it is known."""
    fig, ax = _figure("Figure 1c: test error")
    ax.set_xlabel("label corruption")
    ax.set_ylabel("test error (1 - final test accuracy)")
    sel = _clean_label_runs(runs)
    metric = _first_column(sel, ("final_test_acc", "test_acc"))
    if sel.empty or metric is None or "arch" not in sel.columns:
        return _no_data(fig, ax, "no runs with label_noise, arch and test accuracy")
    _mean_by_arch(ax, sel, 1.0 - sel[metric])
    if num_classes is None:
        known = {NUM_CLASSES.get(str(d)) for d in col(sel, "dataset").dropna().unique()}
        num_classes = known.pop() if len(known) == 1 else None
    if num_classes:
        ax.axhline(1 - 1 / num_classes, color="gray", linestyle="--", label="chance")
    ax.set_ylim(0, 1)
    ax.legend()
    return fig


def gen_gap_vs_label_noise(runs: pd.DataFrame) -> Figure:
    """Final generalization gap (train_acc - test_acc) against label noise, per architecture."""
    fig, ax = _figure("Generalization gap against label noise")
    ax.set_xlabel("label corruption")
    ax.set_ylabel("generalization gap (train acc - test acc)")
    sel = _clean_label_runs(runs)
    metric = _first_column(sel, ("final_gen_gap", "gen_gap"))
    if sel.empty or metric is None or "arch" not in sel.columns:
        return _no_data(fig, ax, "no runs with label_noise, arch and gen_gap")
    _mean_by_arch(ax, sel, sel[metric])
    ax.legend()
    return fig


def _tick(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def gen_gap_heatmap(runs: pd.DataFrame, x: str, y: str, *, value: str | None = None) -> Figure:
    """Mean generalization gap over two swept factors, one annotated cell per combination."""
    fig, ax = _figure(f"Generalization gap: {y} x {x}")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    value = value or _first_column(runs, ("final_gen_gap", "gen_gap"))
    if value is None or x not in runs.columns or y not in runs.columns:
        return _no_data(fig, ax, f"no {value or 'gen_gap'} over {x} and {y}")
    table = runs.pivot_table(index=y, columns=x, values=value, aggfunc="mean")
    if table.empty:
        return _no_data(fig, ax, f"no {value} over {x} and {y}")
    im = ax.imshow(np.ma.masked_invalid(table.to_numpy(dtype=float)), cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [_tick(v) for v in table.columns])
    ax.set_yticks(range(table.shape[0]), [_tick(v) for v in table.index])
    cells = table.to_numpy(dtype=float)
    middle = np.nanmean(cells)
    for (i, j), v in np.ndenumerate(cells):
        if not np.isnan(v):  # a combination the sweep never ran stays blank
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < middle else "black")
    fig.colorbar(im, ax=ax, label=f"mean {value}")
    return fig


def memorisation_curves(history: pd.DataFrame, runs: pd.DataFrame, *, arch: str | None = None) -> Figure:
    """Training accuracy on the clean (solid) and the relabelled (dashed) subsets against epochs,
    one colour per label-noise level: how the noisy labels get memorised after the clean ones."""
    selected, arch = pick_arch(_clean_label_runs(runs), arch)
    fig, ax = _figure(f"Memorisation ({arch or 'no runs'})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy")
    keys = [k for k in ("train_acc_clean", "train_acc_noisy") if k in history.columns]
    h = _join(history, selected, ["label_noise"])
    if h.empty or not keys or h[keys].isna().all().all():
        return _no_data(fig, ax, "no train_acc_clean / train_acc_noisy history")
    colours = {p: f"C{i}" for i, p in enumerate(sorted(h["label_noise"].unique()))}
    for p, g in h.groupby("label_noise", sort=True):
        for key, style, subset in (("train_acc_clean", "-", "clean"), ("train_acc_noisy", "--", "noisy")):
            if key not in g.columns:
                continue
            mean = g.groupby("epoch")[key].mean().dropna()
            if not mean.empty:
                ax.plot(mean.index, mean.to_numpy(), style, color=colours[p], label=f"p={p:g} {subset}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return fig


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Every run's test accuracy (solid) and training accuracy (dashed) against epochs, overlaid: one panel
    per architecture, one colour per condition (label noise from light to dark, pixel corruptions apart)."""
    archs = sorted(map(str, col(runs, "arch").dropna().unique()))
    fig = Figure(figsize=(6.0, 2.6 * max(1, len(archs)) + 0.6), layout="constrained")
    axes = fig.subplots(max(1, len(archs)), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle("Learning curves: test_acc (solid), train_acc (dashed)")
    h = _join(history, runs.assign(_cond=_condition(runs)), ["arch", "_cond"])
    if h.empty or not {"train_acc", "test_acc"} & set(h.columns):
        return _no_data(fig, axes[0], "no train_acc / test_acc history")
    conds = sorted(h["_cond"].unique(), key=_condition_order)
    noise = [c for c in conds if c.startswith("noise")]
    colour = {c: _noise_cmap(i / max(1, len(noise) - 1)) for i, c in enumerate(noise)}
    colour |= {c: f"C{3 + k}" for k, c in enumerate(c for c in conds if c not in colour)}
    for ax, arch in zip(axes, archs):
        ax.set_title(arch, fontsize=9, color=arch_color(arch))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        shown = set()
        for _, g in h[h["arch"] == arch].groupby("run_id", sort=False):
            cond = g["_cond"].iloc[0]
            for key, style in (("test_acc", "-"), ("train_acc", "--")):
                if key in g.columns:
                    label = cond if key == "test_acc" and cond not in shown else None
                    ax.plot(g["epoch"], g[key], style, color=colour[cond], linewidth=1, label=label)
            shown.add(cond)
        ax.legend(fontsize=7, ncols=2, loc="lower right")
    axes[-1].set_xlabel("epoch")
    return fig


def _noise_cmap(x: float) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 - 0.8 * x)  # clean labels light, random labels dark


def _condition(runs: pd.DataFrame) -> pd.Series:
    """'noise 0.4' for intact inputs, else the input corruption ('shuffled pixels')."""
    corruption = col(runs, "corruption", "none").fillna("none").astype(str)
    noise = pd.to_numeric(col(runs, "label_noise", 0.0), errors="coerce").fillna(0.0)
    return pd.Series([f"noise {p:g}" if c == "none" else c.replace("_", " ") for c, p in zip(corruption, noise)],
                     index=runs.index)


def _condition_order(cond: str) -> tuple[int, float, str]:
    return (0, float(cond.split()[1]), "") if cond.startswith("noise") else (1, 0.0, cond)
