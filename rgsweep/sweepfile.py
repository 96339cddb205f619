"""A sweep file -> its trials: load and validate the file, expand the grid, apply the command line, and
print the plan (`--dry-run`). The first half of `rgsweep sweep`; sweep.py runs the plan.

Imports no torch, MLflow or Ray (tests/test_walls.py): a bad file, key or option is refused, and
`--dry-run` answers, in well under a second, where importing those took 5-7 s before anything was checked.

Sweep file (sweeps/*.yaml):

    name: demo                      # also the default MLflow experiment
    experiment: demo                # optional
    baseline: baselines/tune-demo.yaml   # optional, written by `rgsweep tune` (path relative to the file)
    base: {dataset: digits, arch: mlp1x512, epochs: 60}     # a TrialConfig, shared by every trial
    grid:                           # cartesian product of these lists
      arch: [mlp1x512, cnn]
      label_noise: [0.0, 0.2, 0.4]
      setting:                      # a *bundle*: any key whose values are mappings of TrialConfig keys
        - {corruption: none}
        - {corruption: shuffled_pixels}
    seeds: [0, 1]
    resources: {cpu: 1, gpu: 0.25}  # per trial; fractions allowed
    max_concurrent: 4
    pack: 1                         # >1: train this many same-shape trials together in one process
    retries: 2                      # a trial whose worker or node is lost is run again this many times
    smoke: {epochs: 2, subset: 200} # overrides used by --smoke (CI runs every sweep file this way)

Precedence: baseline < base < grid values < seed < the command line (`--set`, `--dataset`,
`--data-dir`): a command-line key that is also a grid axis collapses that axis, and the sweep says so.
`--smoke` runs go to their own experiment, `<experiment>-smoke`. Run names: `_name_trials`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rgsweep.config import ConfigError, TrialConfig, load_yaml, make_config
from rgsweep.jobfile import DEFAULT_RETRIES, DEFAULT_SMOKE, Resources, check_run_args, overrides_from_args
from rgsweep.names import run_name
from rgsweep.packing import pack_groups

if TYPE_CHECKING:
    from rgsweep.preload import SweepData

PACK_MAX = 256  # trials trained together in one Ray trial, at most


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    experiment: str | None = None
    description: str = ""
    baseline: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    pack: int = Field(1, ge=1, le=PACK_MAX)
    retries: int = Field(DEFAULT_RETRIES, ge=0, le=100)
    smoke: dict[str, Any] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has an empty list of values")
            bundles = [isinstance(v, dict) for v in values]
            if any(bundles) and not all(bundles):
                raise ValueError(f"grid key {key!r}: mix of mappings and plain values")
            if not any(bundles) and key not in TrialConfig.model_fields:
                raise ValueError(
                    f"unknown grid key {key!r}; allowed: the trial keys ({', '.join(TrialConfig.model_fields)}) "
                    "or a bundle name whose values are mappings of trial keys"
                )
        return grid


@dataclass
class Trial:
    config: TrialConfig
    key: str
    name: str
    swept: dict[str, Any] = field(default_factory=dict)  # the grid values this trial took


@dataclass
class Plan:
    spec: SweepSpec
    path: Path
    experiment: str
    trials: list[Trial]
    swept_keys: list[str]
    notes: list[str] = field(default_factory=list)  # grid axes the command line collapsed
    smoke: bool = False
    baseline: str | None = None  # the baseline file the trials start from


# -- loading and expansion ------------------------------------------------------------------------
def load_spec(path: str | Path) -> SweepSpec:
    data = load_yaml(path)
    try:
        return SweepSpec(**data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                msgs.append(f"unknown key {loc!r}; allowed keys: {', '.join(SweepSpec.model_fields)}")
            else:
                msgs.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid sweep file {path}: " + "; ".join(msgs)) from None


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def expand(
    spec: SweepSpec, path: Path, overrides: dict[str, Any] | None = None, smoke: bool = False,
    seeds: list[int] | None = None, baseline: Path | None = None,
) -> Plan:
    """Every trial of the sweep as a validated TrialConfig. Raises ConfigError naming the bad trial.
    `overrides` (the command line) win over everything, grid values included: an axis they set collapses.
    `seeds` (from --seeds) replaces the file's, and --smoke keeps them all: they were asked for.
    `baseline` (the command line's, relative to the working directory) replaces the file's `baseline:`."""
    overrides = dict(overrides or {})
    base: dict[str, Any] = {}
    bpath = baseline or ((path.parent / spec.baseline) if spec.baseline else None)
    if bpath is not None:
        bdata = load_yaml(bpath)
        base.update(bdata.get("params", bdata))
    base.update(spec.base)
    grid = dict(spec.grid)
    if smoke:
        base.update({**DEFAULT_SMOKE, **spec.smoke})
        # First and last value of every grid list: the extremes, at a fraction of the cost.
        grid = {k: (v if len(v) <= 2 else [v[0], v[-1]]) for k, v in grid.items()}
    base.update(overrides)
    seeds = seeds or (spec.seeds[:1] if smoke else spec.seeds)
    notes = collapsed_axes(grid, seeds, overrides)
    if "seed" in overrides:
        seeds = [overrides["seed"]]

    keys = list(grid)
    swept: list[str] = []
    for k in keys:
        names = [kk for v in grid[k] for kk in v] if isinstance(grid[k][0], dict) else [k]
        swept += [kk for kk in dict.fromkeys(names) if kk not in swept and kk not in overrides]
    if len(seeds) > 1:
        swept.append("seed")

    trials: list[Trial] = []
    shown: list[tuple[list[str], list[str]]] = []  # per trial: the keys its name shows, those only if they vary
    seen: set[str] = set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(base)
        chosen: dict[str, Any] = {}
        named: list[str] = []  # the keys the run name shows
        setup: list[str] = []  # keys of a bundle that picks the architecture: shown where they vary within it
        for k, v in zip(keys, combo):
            point = v if isinstance(v, dict) else {k: v}
            values.update(point)
            chosen.update({kk: vv for kk, vv in point.items() if kk not in overrides})
            if isinstance(v, dict):
                (setup if "arch" in v else named).extend(kk for kk in v if kk not in overrides)
            elif k not in overrides:
                named.append(k)
        values.update(overrides)  # the command line wins over the grid
        for seed in seeds:
            values_s = {**values, "seed": seed}
            # A file without a grid has one trial, its base: "(trial )" would name nothing.
            where = f"{path} (trial {', '.join(f'{k}={_fmt_value(v)}' for k, v in chosen.items())})" if chosen \
                else f"{path} (base)"
            cfg = make_config(values_s, where=where)
            key = cfg.key()
            if key in seen:  # two grid points that resolve to the same trial run once
                continue
            seen.add(key)
            trials.append(Trial(cfg, key, "", {**chosen, "seed": seed}))
            shown.append((named, setup))
    _name_trials(trials, shown, several_seeds=len(seeds) > 1)
    experiment = spec.experiment or spec.name
    return Plan(spec, path, f"{experiment}-smoke" if smoke else experiment, trials, swept, notes, smoke,
                str(bpath) if bpath is not None else None)


def _name_trials(trials: list[Trial], shown: list[tuple[list[str], list[str]]], several_seeds: bool) -> None:
    """Readable, unique run names (what the MLflow UI, the progress line and the report show).

    A plain grid axis or a bundle without `arch` is always in the name. A bundle that picks the
    architecture may carry that architecture's setup (architectures.yaml: its lr) or the condition it
    runs (paper-cpu.yaml: `{arch: alexnet, corruption: gaussian}`): its keys are shown where they vary
    among the sweep's trials of that architecture, so the first reads `alexnet-noise0.0` and the
    second `alexnet-gaussian`. Two trials left with one name get their trial key's first 6 digits.
    """
    setup_keys = list(dict.fromkeys(k for _, setup in shown for k in setup))
    values: dict[tuple[str, str], set[str]] = {}  # (arch, key) -> the values its trials take
    for t in trials:
        for k in setup_keys:
            values.setdefault((t.config.arch, k), set()).add(repr(getattr(t.config, k, None)))
    for t, (named, setup) in zip(trials, shown):
        varying = [k for k in setup if k != "arch" and len(values[(t.config.arch, k)]) > 1]
        name = run_name(t.config, list(dict.fromkeys(named + varying)), seed=several_seeds)
        if any(other.name == name for other in trials):  # same swept values, other base: keep names unique
            name = f"{name}-{t.key[:6]}"
        t.name = name


def collapsed_axes(grid: dict[str, list[Any]], seeds: list[int], overrides: dict[str, Any]) -> list[str]:
    """One line per grid axis (or bundle key, or the seeds) that a command-line value replaces."""
    notes = []
    for axis, values in grid.items():
        if isinstance(values[0], dict):
            for k in dict.fromkeys(kk for v in values for kk in v):
                if k in overrides:
                    notes.append(f"command line {k}={_fmt_value(overrides[k])} replaces {k} in every value of "
                                 f"grid bundle {axis!r}")
        elif axis in overrides:
            notes.append(f"command line {axis}={_fmt_value(overrides[axis])} replaces grid axis {axis!r} "
                         f"({len(values)} values -> 1)")
    if "seed" in overrides and len(seeds) > 1:
        notes.append(f"command line seed={overrides['seed']} replaces seeds {seeds} ({len(seeds)} values -> 1)")
    return notes


def seeds_override(flag: str | None, overrides: dict[str, Any]) -> list[int] | None:
    """`--seeds 0,1,2` (or `--set seeds=[0,1,2]`): the sweep's seeds, replacing the file's `seeds`.
    `seeds` is a sweep key, not a trial key, so it is taken out of the trial overrides here."""
    raw = overrides.pop("seeds", None) if flag is None else flag
    if raw is None:
        return None
    parts = [x.strip() for x in raw.split(",")] if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
    if not parts or any(isinstance(x, bool) or not str(x).lstrip("-").isdigit() for x in parts):
        raise ConfigError(f"--seeds: expected integers separated by commas, such as 0,1,2; got {raw!r}")
    seeds = [int(x) for x in parts]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {raw!r} repeats a seed; each seed runs every trial once")
    return seeds


# -- packing and the command's first half --------------------------------------------------------------
PACK_SEP = "|"  # a packed Ray trial is named by its members' names joined with this


def make_payloads(
    todo: list[Trial], pack: int, gpu_share: float, inject_failure: dict[str, int] | None = None,
    data: SweepData | None = None,
) -> dict[str, dict[str, Any]]:
    """One payload per Ray trial: a single trial, or (pack > 1) a pack of compatible trials, for trials
    granted `gpu_share` of a GPU each (packing.pack_groups); with `data`, each names the dataset it trains
    on (`data`: its key; a pack's members share dataset and subset)."""
    groups = [[i] for i in range(len(todo))]
    if pack > 1:
        groups = pack_groups([t.config for t in todo], pack, gpu_share)
    payloads: dict[str, dict[str, Any]] = {}
    for group in groups:
        members = []
        for i in group:
            t = todo[i]
            m: dict[str, Any] = {"config": t.config.model_dump(), "key": t.key, "name": t.name}
            if inject_failure and t.name in inject_failure:
                m["inject_failure"] = inject_failure[t.name]
            members.append(m)
        payload: dict[str, Any] = {"members": members}
        if data is not None:
            payload["data"] = data.key(todo[group[0]].config)
        payloads[PACK_SEP.join(m["name"] for m in members)] = payload
    return payloads


def packing_line(n_trials: int, n_ray: int, pack: int) -> str:
    return f"packing: {n_trials} trials in {n_ray} Ray trials (pack: {pack})"


def dry_run_packing(plan: Plan) -> str:
    """The packing line of `--dry-run`: packs as planned for trials with the file's GPU share. The run packs
    by what Ray grants, and a cluster without GPUs drops the share (then `auto` convnets go alone)."""
    gpu, pack = plan.spec.resources.gpu, plan.spec.pack
    planned, on_cpu = (len(make_payloads(plan.trials, pack, share)) for share in (gpu, 0.0))
    line = packing_line(len(plan.trials), planned, pack)
    if gpu and on_cpu != planned:
        line += f", with gpu={gpu} per trial; {on_cpu} on a cluster without GPUs (convnets run unpacked on CPUs)"
    return line


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.rerun_failed and not args.resume:  # alone it would start a new sweep, the flag ignored
        raise ConfigError("--rerun-failed runs the FAILED trials of a resumed sweep again: add --resume "
                          f"(rgsweep sweep {args.file} --resume --rerun-failed)")
    path = Path(args.file)
    spec = load_spec(path)
    overrides = overrides_from_args(args)
    seeds = seeds_override(args.seeds, overrides)
    plan = expand(spec, path, overrides, smoke=args.smoke, seeds=seeds,
                  baseline=Path(args.baseline) if args.baseline else None)
    if args.cpus_per_trial is not None or args.gpus_per_trial is not None:  # 0 is refused, not ignored
        try:
            plan.spec.resources = Resources(
                cpu=plan.spec.resources.cpu if args.cpus_per_trial is None else args.cpus_per_trial,
                gpu=plan.spec.resources.gpu if args.gpus_per_trial is None else args.gpus_per_trial,
            )
        except ValidationError as e:
            raise ConfigError(f"--cpus-per-trial/--gpus-per-trial: {e.errors()[0]['msg']}") from None
    check_run_args(args)
    if args.pack is not None:
        if not 1 <= args.pack <= PACK_MAX:
            raise ConfigError(f"--pack must be between 1 and {PACK_MAX} (trials trained together), got {args.pack}")
        plan.spec.pack = args.pack
    if args.dry_run:
        for t in plan.trials:
            print(f"{t.name:<48} {t.key}  " + " ".join(f"{k}={_fmt_value(v)}" for k, v in t.swept.items()))
        print(f"{len(plan.trials)} trials (experiment {plan.experiment!r}, swept: {', '.join(plan.swept_keys)})")
        for note in plan.notes:
            print(note)
        if plan.baseline:
            print(f"baseline: {plan.baseline}")
        if plan.spec.pack > 1:
            print(dry_run_packing(plan))
        return 0
    from rgsweep.sweep import run_from_cli  # torch, MLflow and Ray load from here on

    return run_from_cli(plan, args)
