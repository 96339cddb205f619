"""Input preprocessing, applied once to whole splits on whatever device they live on.

Presets:
- ``paper``: Zhang et al., Appendix A: centre crop to 28x28 (only dimensions larger than that are
  cropped, so 8x8 digits are left alone), then per-image whitening exactly as TensorFlow's
  ``per_image_standardization``: ``(x - mean) / max(std, 1/sqrt(C*H*W))`` over each image
  (population std). The floor keeps constant images finite: they become all zeros.
- ``standard``: per-channel normalisation with the training set's mean and std, applied to both splits.
- ``none``: the tensors are returned as they are.

With the paper's random crop (`augment: [crop]`, see `rgsweep.data.augment`), this preset is what the
model sees at evaluation (the centre window, whitened once); training batches are random windows of
the full-size images, whitened per batch on the device by the crop itself.

Inputs are float [N,C,H,W] in /255 units (uint8 is converted to that). Memory: the outputs are the
only full-size allocations (one subtraction into a new tensor, then in-place ops; the squares are
summed in chunks of images). Sums use `sum`/`mean`, which are pairwise on CPU and tree reductions on
CUDA, so 50M-element sums stay accurate in float32; `linalg.vector_norm` is not (2% off at 50M on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rgsweep.names import CROP_SIZE, PREPROCESS

CHUNK = 4096  # images per chunk for the sums of squares: bounds temporaries to ~50 MB at 3x32x32


def _as_float(x: Tensor) -> Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def center_crop(x: Tensor, size: int) -> Tensor:
    """Centre crop H and W to `size` where they are larger (a view, no copy)."""
    h, w = x.shape[-2:]
    top, left = max(h - size, 0) // 2, max(w - size, 0) // 2
    return x[..., top : top + min(h, size), left : left + min(w, size)]


def whiten(x: Tensor) -> Tensor:
    """TF per_image_standardization of a batch [N,C,H,W] into a new tensor.

    max(std, 1/sqrt(n)) is max(norm, 1)/sqrt(n), with norm the L2 norm of the centred image.
    """
    n = math.prod(x.shape[1:])
    out = torch.sub(x, x.mean(dim=(1, 2, 3), keepdim=True))
    for part in out.split(CHUNK):  # views of out: scaled in place, temporaries bounded by CHUNK
        norm = part.square().sum(dim=(1, 2, 3), keepdim=True).sqrt_()
        part.mul_(math.sqrt(n) / norm.clamp_min_(1.0))
    return out


def preprocess(x_train: Tensor, x_test: Tensor, preset: str, crop: int = CROP_SIZE) -> tuple[Tensor, Tensor]:
    """Apply `preset` to both splits; statistics (``standard``) come from the training split only."""
    if preset not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preset!r}; allowed: {', '.join(PREPROCESS)}")
    x_train, x_test = _as_float(x_train), _as_float(x_test)
    if preset == "none":
        return x_train, x_test
    if preset == "paper":
        return whiten(center_crop(x_train, crop)), whiten(center_crop(x_test, crop))
    # standard: centre first, then the std from the centred data (two-pass, exact even when the
    # mean is large next to the spread); a constant channel is centred, not blown up.
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    train = torch.sub(x_train, mean)
    sq = sum(part.square().sum(dim=(0, 2, 3), keepdim=True) for part in train.split(CHUNK))
    std = (sq / (train.numel() // train.shape[1])).sqrt().clamp_min(1e-6)
    return train.div_(std), torch.sub(x_test, mean).div_(std)
