"""A tuning file -> its study plan: load and validate the file (the search space, the objective, pruning),
resolve the base and check every searched key's range against it. The first half of `rgsweep tune`;
tune.py runs the study.

Imports no torch, MLflow, Ray or Optuna (tests/test_walls.py): a bad file, key or option is refused in
well under a second. The file's format: tune.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rgsweep.config import ConfigError, TrialConfig, load_yaml, make_config
from rgsweep.jobfile import DEFAULT_RETRIES, DEFAULT_SMOKE, Resources, check_run_args, overrides_from_args
from rgsweep.stores import absolute_uri, artifact_root, given_uri, sqlite_file

if TYPE_CHECKING:
    import optuna

DEFAULT_VAL_FRACTION = 0.1
# Keys that define the objective's data or the trial budget, or only where/how a trial runs: tuning
# them would compare trials on different validation sets (the split depends on dataset, subset and
# corruption_seed) or fight the pruner over epochs.
NOT_TUNABLE = {
    "dataset": "it defines the data", "data_dir": "it is where the data lives", "download": "it is not a setting",
    "subset": "it changes the validation split", "val_fraction": "it changes the validation split",
    "corruption_seed": "it draws the validation split", "epochs": "the budget belongs to the pruner",
    "device": "it is where a trial runs", "eval_batch_size": "it does not change results",
    "eval_every": "it does not change results (val_acc is evaluated every epoch)",
}
OBJECTIVES = {"val_acc": "max", "val_loss": "min"}


# -- the tuning file ------------------------------------------------------------------------------
class ParamSpec(BaseModel):
    """One searched key: a float or int range (linear or log, optional step) or a list of choices."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("type categorical takes only 'choices' (not low, high, log, step)")
            if not self.choices:
                raise ValueError("type categorical needs a non-empty 'choices' list")
            for c in self.choices:
                if c is not None and not isinstance(c, (str, int, float, bool)):
                    raise ValueError(f"choice {c!r}: choices must be numbers, strings, booleans or null "
                                     "(write a list such as augment as a comma-separated string)")
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} has duplicates")
            return self
        if self.choices is not None:
            raise ValueError(f"type {self.type} takes low, high, log, step (not 'choices')")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs both 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples log ranges continuously)")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and v != int(v):
                    raise ValueError(f"type int needs an integer {k}, got {v}")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step}")
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-9:
                raise ValueError(f"high - low ({self.high - self.low:g}) must be a multiple of step ({self.step:g})")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        import optuna  # here, not at the top: a tuning file is checked before Optuna loads

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        if self.type == "categorical":
            return f"categorical{json.dumps(self.choices)}"
        extra = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.type}[{self.low:g}, {self.high:g}]{extra}"

    def probes(self) -> list[Any]:
        """Values every sample lies between (the ends) plus an interior non-round one: together they check
        that any sampled value gives a valid TrialConfig (types, and ranges, which are intervals)."""
        if self.type == "categorical":
            return list(self.choices)
        lo, hi = self.low, self.high
        if self.type == "int":
            return [int(lo), int(hi)]
        mid = math.exp(math.log(lo) + 0.37 * (math.log(hi) - math.log(lo))) if self.log else lo + 0.37 * (hi - lo)
        return [lo, hi, mid]


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["val_acc", "val_loss"] = "val_acc"  # validation metrics only: the test set is never tuned on
    mode: Literal["max", "min"] | None = None  # default: max for val_acc, min for val_loss

    @model_validator(mode="after")
    def _mode(self) -> Objective:
        natural = OBJECTIVES[self.metric]
        if self.mode is None:
            self.mode = natural
        elif self.mode != natural:
            raise ValueError(f"mode {self.mode!r} for {self.metric} would search for the worst model; "
                             f"allowed: {natural}")
        return self


class Pruning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    grace_period: int = Field(5, ge=1)  # epochs before ASHA may stop a trial (its first rung)
    reduction_factor: float = Field(3.0, gt=1)  # rungs at grace * rf**k; ~1/rf of trials pass each rung


class TuningSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    experiment: str | None = None
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpec] = Field(min_length=1)
    objective: Objective = Field(default_factory=Objective)
    n_trials: int = Field(20, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    pruning: Pruning = Field(default_factory=Pruning)
    retries: int = Field(DEFAULT_RETRIES, ge=0, le=100)  # a trial whose worker or node is lost is run again
    seed: int = Field(0, ge=0)
    startup_trials: int = Field(10, ge=0)
    smoke: dict[str, Any] = Field(default_factory=dict)

    @field_validator("space", mode="before")
    @classmethod
    def _space_keys(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space
        for key in space:
            if key not in TrialConfig.model_fields:
                raise ValueError(f"unknown space key {key!r}; allowed: the trial keys "
                                 f"({', '.join(k for k in TrialConfig.model_fields if k not in NOT_TUNABLE)})")
            if key in NOT_TUNABLE:
                raise ValueError(f"space key {key!r} cannot be tuned: {NOT_TUNABLE[key]}; set it in base")
        return space


_MODELS = {"space": ParamSpec, "objective": Objective, "pruning": Pruning, "resources": Resources}


def _format(err: ValidationError, path: Path) -> str:
    msgs = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc)
        if e["type"] == "extra_forbidden":
            model = _MODELS.get(loc[0]) if len(loc) > 1 else TuningSpec
            model = ParamSpec if loc[0] == "space" and len(loc) == 3 else model
            msgs.append(f"unknown key {where!r}; allowed keys: {', '.join((model or TuningSpec).model_fields)}")
        else:
            msgs.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return f"invalid tuning file {path}: " + "; ".join(msgs)


def load_spec(path: str | Path) -> TuningSpec:
    data = load_yaml(path)
    try:
        return TuningSpec(**data)
    except ValidationError as e:
        raise ConfigError(_format(e, Path(path))) from None


@dataclass
class TuningPlan:
    spec: TuningSpec
    path: Path
    base: TrialConfig  # every trial is this plus its sampled values
    study: str  # the Optuna study's name
    experiment: str
    n_trials: int  # trials to run in this invocation
    grace_period: int | None  # None: no pruning
    smoke: bool = False

    @property
    def space(self) -> dict[str, ParamSpec]:
        return self.spec.space

    @property
    def metric(self) -> str:
        return self.spec.objective.metric

    @property
    def mode(self) -> str:
        return self.spec.objective.mode or OBJECTIVES[self.metric]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {k: p.distribution() for k, p in self.space.items()}

    def rungs(self) -> list[int]:
        """ASHA's milestones (epochs), as `raytune.asha` sets it up: max_t = epochs - 1."""
        if self.grace_period is None:
            return []
        rf, max_t = self.spec.pruning.reduction_factor, self.base.epochs - 1
        n = int(math.log(max_t / self.grace_period) / math.log(rf) + 1)
        return [round(self.grace_period * rf**k) for k in range(n)]


def plan_tuning(
    spec: TuningSpec, path: Path, overrides: dict[str, Any] | None = None, smoke: bool = False,
    n_trials: int | None = None,
) -> TuningPlan:
    """Resolve and validate everything before anything runs: the base, and every key's range against it."""
    base = dict(spec.base)
    base.setdefault("val_fraction", DEFAULT_VAL_FRACTION)
    trials = spec.n_trials
    if smoke:
        extra = dict(spec.smoke)
        trials = int(extra.pop("n_trials", 2))
        base.update({**DEFAULT_SMOKE, **extra})
    searched = sorted(set(overrides or {}) & set(spec.space))
    if searched:
        k = searched[0]
        raise ConfigError(f"command line sets {k!r}, which the study searches (space.{k}): Optuna's value would "
                          f"replace it in every trial; remove {k} from space in {path}, or do not set it")
    base.update(overrides or {})
    cfg = make_config(base, where=f"{path} (base)")

    if cfg.val_fraction <= 0:
        raise ConfigError(f"invalid tuning file {path}: base.val_fraction must be > 0 (got {cfg.val_fraction}): "
                          "the objective is measured on a validation split held out from the clean training set, "
                          "never on the test set")
    for key, p in spec.space.items():
        for v in p.probes():
            make_config({**base, key: v}, where=f"{path} (space.{key} = {v!r}, {p.describe()})")
    if n_trials is not None:
        if n_trials < 1:
            raise ConfigError(f"--n-trials must be >= 1, got {n_trials}")
        trials = n_trials
    grace: int | None = None
    pr = spec.pruning
    if pr.enabled and cfg.epochs >= 2:
        grace = pr.grace_period
        if grace >= cfg.epochs:
            if not smoke:
                given = " (from the command line)" if "epochs" in (overrides or {}) else ""
                raise ConfigError(f"invalid tuning file {path}: pruning.grace_period={grace} must be < base.epochs="
                                  f"{cfg.epochs}{given} (ASHA's first rung must come before the last epoch)")
            grace = cfg.epochs - 1
    study = f"{spec.name}-smoke" if smoke else spec.name
    experiment = spec.experiment or spec.name
    return TuningPlan(spec, path, cfg, study, f"{experiment}-smoke" if smoke else experiment, trials, grace, smoke)


# -- the command's first half ------------------------------------------------------------------------
def default_optuna_storage(tracking_uri: str) -> str:
    """The study beside the MLflow SQLite store (mlruns/optuna.db), else ./mlruns/optuna.db. Built from the
    URI as the user gave it, so a relative store gives a relative study URL (recorded as such)."""
    db = sqlite_file(tracking_uri)
    if db is not None:
        return f"sqlite:///{db.parent / 'optuna.db'}"
    return "sqlite:///mlruns/optuna.db"


def baseline_path(plan: TuningPlan, tracking_uri: str) -> Path:
    """Beside the store (mlruns/baselines/<name>.yaml), never in the sources: tuning results belong to the
    machine that ran them, and `make tune` leaves a clone's `git status` clean."""
    root = artifact_root(tracking_uri)
    base = Path(root[len("file://"):]) if root else Path("mlruns")
    return base / "baselines" / f"{plan.spec.name}.yaml"


def describe(plan: TuningPlan, storage_url: str, tracking_uri: str) -> str:
    """What --dry-run prints: the resolved plan, without touching Ray or the storage."""
    base = plan.base.model_dump()
    lines = [
        f"study {plan.study!r} in {storage_url}, MLflow experiment {plan.experiment!r}",
        f"{plan.n_trials} trials, objective {plan.metric} ({plan.mode}) on val_fraction={plan.base.val_fraction} "
        "of the clean training set",
        f"sampler: TPE seed={plan.spec.seed} startup_trials={plan.spec.startup_trials}",
        "pruning: " + (f"ASHA rungs at epochs {plan.rungs()} of {plan.base.epochs}, reduction factor "
                       f"{plan.spec.pruning.reduction_factor:g}" if plan.grace_period else "off"),
        "space:",
        *(f"  {k}: {p.describe()}" for k, p in plan.space.items()),
        "base: " + " ".join(f"{k}={v}" for k, v in base.items() if k not in plan.space),
        f"baseline file: {baseline_path(plan, tracking_uri)}" + (" (not written by --smoke)" if plan.smoke else ""),
    ]
    return "\n".join(lines)


def cmd_tune(args: argparse.Namespace) -> int:
    path = Path(args.file)
    spec = load_spec(path)
    overrides = overrides_from_args(args)
    plan = plan_tuning(spec, path, overrides, smoke=args.smoke, n_trials=args.n_trials)
    check_run_args(args)
    if args.resume and args.restart:
        raise ConfigError("--resume and --restart exclude each other")
    if args.resume and args.smoke:  # a smoke study is deleted first: --resume would be ignored
        raise ConfigError("--smoke runs a throwaway study, deleted before it starts: it cannot be resumed; "
                          "drop --resume or --smoke")
    if args.dry_run:  # the plan, without touching the store, Ray or the study's storage
        given = given_uri(args.tracking_uri)
        print(describe(plan, args.storage or default_optuna_storage(given), absolute_uri(given)))
        return 0
    from rgsweep.tune import run_from_cli  # torch, MLflow, Ray and Optuna load from here on

    return run_from_cli(plan, args)
