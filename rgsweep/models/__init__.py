"""Model registry: the paper's architectures, built for any input shape (C, H, W) and class count.

Parameters for 10 classes on a 3x28x28 input (the paper's CIFAR-10 crop; dropout 0, default norm):

    mlp1x512        2352-512-10, ReLU                                        1,209,866 (paper)
    mlp3x512        2352-512-512-512-10                                      1,735,178 (paper)
    alexnet         2x (conv5x5 64 -> pool -> LRN), FC 384, FC 192, FC 10    1,387,786 (paper)
    inception       small Inception, BatchNorm without affine parameters     1,649,402 (paper)
    inception-nobn  the same without BatchNorm                               1,649,402
    resnet18        CIFAR ResNet-18 (3x3 stem, no max-pool)                 11,173,962
    wrn28-1         Wide ResNet 28-1, pre-activation                           369,498
    cnn             seed project's 3-block CNN with BN (and dropout)           436,330

The MLPs and AlexNet depend on the input size (their first dense layer sees the whole image);
the others pool globally (or, for `cnn`, per their flatten size) and are listed in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rgsweep.models.alexnet import AlexNet
from rgsweep.models.cnn import SmallCNN
from rgsweep.models.inception import Inception
from rgsweep.models.mlp import MLP
from rgsweep.models.resnet import ResNet18, WideResNet


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named architecture.

    build(input_shape, num_classes, dropout=..., batch_norm=..., **extra) returns the module;
    extra holds width/depth for MLPs only.
    """

    build: Callable[..., nn.Module]
    description: str
    convnet: bool
    batch_norm: bool  # the architecture's default when build_model gets batch_norm=None
    width: int | None = None  # MLPs: default hidden width
    depth: int | None = None  # MLPs: default number of hidden layers


# The names, in this order, are rgsweep/names.py's MODEL_NAMES, which config.py validates against
# without importing torch (tests/test_walls.py checks the two agree).
MODELS: dict[str, ModelSpec] = {
    "mlp1x512": ModelSpec(MLP, "MLP, 1 hidden layer of 512 (paper)", False, False, width=512, depth=1),
    "mlp3x512": ModelSpec(MLP, "MLP, 3 hidden layers of 512 (paper)", False, False, width=512, depth=3),
    "alexnet": ModelSpec(AlexNet, "small AlexNet: 2 conv5x5 + LRN, FC 384/192 (paper)", True, False),
    "inception": ModelSpec(Inception, "small Inception with BatchNorm (paper)", True, True),
    "inception-nobn": ModelSpec(Inception, "small Inception without BatchNorm (paper)", True, False),
    "resnet18": ModelSpec(ResNet18, "ResNet-18, CIFAR variant", True, True),
    "wrn28-1": ModelSpec(WideResNet, "Wide ResNet 28-1, pre-activation", True, True),
    "cnn": ModelSpec(SmallCNN, "seed project's CNN: 3 conv blocks with BN and dropout", True, True),
}


def model_names() -> list[str]:
    return list(MODELS)


def _spec(arch: str) -> ModelSpec:
    try:
        return MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(MODELS)}") from None


def build_model(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float = 0.0,
    batch_norm: bool | None = None,
    width: int | None = None,
    depth: int | None = None,
) -> nn.Module:
    """Build `arch` for inputs of shape (C, H, W) and `num_classes` outputs.

    dropout: 0 means none; otherwise it goes where each model has a natural place for it (MLP hidden
    layers, AlexNet FC layers, after each `cnn` block and its FC, inside WRN blocks, before the last
    linear layer of Inception and ResNet-18). batch_norm: None keeps the architecture's default.
    width/depth: MLP hidden width and number of hidden layers (None keeps the name's 512 and 1 or 3);
    giving them for another architecture is an error rather than silently ignored.
    """
    spec = _spec(arch)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    kwargs: dict = {"dropout": dropout, "batch_norm": spec.batch_norm if batch_norm is None else batch_norm}
    if spec.width is not None:
        kwargs["width"] = spec.width if width is None else width
        kwargs["depth"] = spec.depth if depth is None else depth
    elif width is not None or depth is not None:
        raise ValueError(f"width/depth apply to MLPs only, not to {arch!r}")
    return spec.build(tuple(int(s) for s in input_shape), int(num_classes), **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_convnet(arch: str) -> bool:
    """True for every architecture but the MLPs (the trainer uses channels_last for these on CUDA)."""
    return _spec(arch).convnet


__all__ = ["MODELS", "ModelSpec", "build_model", "count_params", "is_convnet", "model_names"]
