"""Typed configs: one `TrialConfig` per trial, validated before anything runs.

Unknown keys and out-of-range values are refused with a `ConfigError` whose message names the
key and the allowed values; the CLI turns it into exit code 2. Names (datasets, architectures,
corruptions, augmentations) are checked against the registries of the modules that implement
them, so a new model is allowed the moment it is registered.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rgsweep.names import CORRUPTIONS, CROP_SIZE, DATASET_NAMES, MODEL_NAMES, PREPROCESS, check_augmentations


class ConfigError(ValueError):
    """A user-facing configuration error (exit code 2)."""


def _one_of(key: str, value: str, allowed: list[str] | tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; allowed: {', '.join(allowed)}")
    return value


class TrialConfig(BaseModel):
    """Everything that defines one training run. Units are in the comments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    dataset: str = "digits"  # digits | cifar10 | mnist | fashion-mnist | synthetic | imagefolder:<path>
    data_dir: str | None = None  # where torchvision-format files live (default $RGSWEEP_DATA or ./data)
    download: bool = False  # fetch cifar10/mnist when missing
    subset: int | None = Field(None, ge=10)  # class-balanced subset of the training set (images)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # held out from the CLEAN training set, before noise

    # corruption (paper section 2.1); the corruption seed is separate from the training seed
    label_noise: float = Field(0.0, ge=0.0, le=1.0)  # probability a train label is redrawn uniformly
    corruption: str = "none"  # none | shuffled_pixels | random_pixels | gaussian
    corrupt_fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of images whose pixels are corrupted
    pixel_fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of pixel positions a shuffle permutes
    corruption_seed: int = Field(0, ge=0)

    # inputs
    preprocess: str = "paper"  # paper (crop 28 + per-image whitening) | standard | none
    augment: list[str] = Field(default_factory=list)  # regularizers, applied on the device per batch
    # (crop: the paper's random 28x28 window + whitening, needs preprocess paper; padcrop: 4-pixel padded crop)

    # model
    arch: str = "mlp1x512"
    width: int | None = Field(None, ge=1)  # MLP hidden units (None: the name's default)
    depth: int | None = Field(None, ge=1)  # MLP hidden layers (None: the name's default)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool | None = None  # None: the architecture's default

    # optimisation
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0.0, le=10.0)  # initial learning rate
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)  # L2, coupled (torch SGD/Adam semantics)
    lr_schedule: Literal["exponential", "step", "cosine", "plateau", "constant"] = "exponential"
    lr_decay: float = Field(0.95, gt=0.0, le=1.0)  # exponential: factor per epoch; step/plateau: factor
    lr_step: int = Field(30, ge=1)  # step schedule: epochs between decays; plateau: patience
    epochs: int = Field(50, ge=1, le=100_000)  # maximum epochs
    batch_size: int = Field(128, ge=1, le=65_536)
    fit_threshold: float | None = Field(0.999, gt=0.0, le=1.0)  # stop once train_acc reaches it
    early_stopping: int | None = Field(None, ge=1)  # patience in epochs on val_acc (needs val_fraction)
    seed: int = Field(0, ge=0)  # training seed: init, batch order, augmentation

    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # forward-only batches for the per-epoch evaluation; None: 2048 on CUDA, on the CPU 128 for convnets and
    # 512 for MLPs (where larger batches' activations leave the cache: train.eval_batch_size says what was measured)
    eval_batch_size: int | None = Field(None, ge=1)
    # full test-set evaluation every N epochs, and always at the run's last; "auto": N from the data sizes, so
    # that the test images evaluated per epoch are at most a tenth of the training set (train.test_every)
    eval_every: int | Literal["auto"] = 1

    @field_validator("eval_every", mode="before")
    @classmethod
    def _eval_every(cls, v: Any) -> int | str:
        if v == "auto":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        raise ValueError(f"eval_every must be an integer greater than or equal to 1, or 'auto'; got {v!r}")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v.startswith("imagefolder:") and len(v) > len("imagefolder:"):
            return v
        return _one_of("dataset", v, [*DATASET_NAMES, "imagefolder:<path>"])

    @field_validator("corruption")
    @classmethod
    def _corruption(cls, v: str) -> str:
        return _one_of("corruption", v, CORRUPTIONS)

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: str) -> str:
        return _one_of("preprocess", v, PREPROCESS)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _one_of("arch", v, MODEL_NAMES)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, v: Any) -> list[str]:
        if v is None or v == "" or v == "none":
            return []
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if not isinstance(v, list):
            raise ValueError("augment must be a list of names or a comma-separated string")
        check_augmentations(v)
        return list(v)

    @field_validator("augment")
    @classmethod
    def _paper_crop(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """The paper's crop is defined with the paper's whitening, and on the image's own pixels."""
        if "crop" not in v:
            return v
        preprocess, corruption = info.data.get("preprocess"), info.data.get("corruption")
        if preprocess is not None and preprocess != "paper":
            raise ValueError(f"crop is the paper's random crop (a random {CROP_SIZE}x{CROP_SIZE} window, the centre "
                             f"one at evaluation, then per-image whitening) and needs preprocess: paper, not "
                             f"{preprocess!r}; use padcrop for a random crop with 4 pixels of zero padding")
        if corruption in ("shuffled_pixels", "random_pixels"):
            # A pixel permutation is of the pixels the model sees; a moving window has no fixed set of them.
            raise ValueError(f"crop cannot be combined with corruption {corruption}: the permutation acts on the "
                             f"pixels the model sees, and a random window sees different pixels each epoch; "
                             f"use padcrop, or no crop")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"unknown device {v!r}; allowed: auto, cpu, cuda, cuda:N, mps")

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        if self.early_stopping is not None and self.val_fraction <= 0:
            raise ValueError("early_stopping needs val_fraction > 0 (a validation split to watch)")
        return self

    # -- identity ---------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields that define the trial's result (where the data lives and on which device do not)."""
        return self.model_dump(exclude={"data_dir", "download", "device", "eval_batch_size", "eval_every"})

    def key(self) -> str:
        """Stable trial key: a hash of the resolved config, so a resumed sweep recognises its trials."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """Flattened params for MLflow (lists joined by commas, None as 'None')."""
        out = {}
        for k, v in self.model_dump().items():
            out[k] = ",".join(v) if isinstance(v, list) else str(v)
        return out


# -- error formatting -----------------------------------------------------------------------------
def _format_error(err: ValidationError, where: str = "") -> str:
    lines = []
    allowed_keys = ", ".join(TrialConfig.model_fields)
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}; allowed keys: {allowed_keys}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}={value!r}: {msg}")
    prefix = f"invalid config{' in ' + where if where else ''}: "
    return prefix + "; ".join(lines)


def make_config(values: dict[str, Any], where: str = "") -> TrialConfig:
    """Build and validate a TrialConfig, turning pydantic's errors into one readable ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"invalid config{' in ' + where if where else ''}: expected a mapping of keys")
    try:
        return TrialConfig(**values)
    except ValidationError as e:
        raise ConfigError(_format_error(e, where)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; a missing file or bad YAML is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data
