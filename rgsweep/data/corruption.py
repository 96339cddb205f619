"""The paper's randomization tests (Zhang et al. 2017, Section 2.1), defined exactly.

- Label noise p: each TRAINING label independently, with probability p, is replaced by a class
  drawn uniformly at random (it may equal the old one, so about (1 - 1/K) p of the labels change).
  p = 1 is the paper's "random labels". Test labels are never touched.
- shuffled_pixels: one random permutation of pixel positions (all channels of a pixel move
  together), chosen once from the seed and applied to every training and test image.
- random_pixels: an independent random permutation of pixel positions for every image.
- gaussian: every image is replaced by Gaussian noise with the PER-CHANNEL mean and standard
  deviation of the original training set (pixel units /255); not clipped; labels kept.

Input corruptions apply to the training and test images alike; label noise to training labels only.
They act on the images they are given, and the trial gives them the pixels the model sees
(`rgsweep.train.prepare_data`): under the `paper` preset the centre 28x28 window of a larger image
(so shuffled pixels permute all 784 seen positions of a CIFAR image, and the border it never sees
stays out), under `standard` and `none` the whole image. With the paper's random crop (`augment:
[crop]`) the model sees a different window each epoch, so the two shuffles are refused there (config
error) and `gaussian` fills the whole image, with the statistics of the whole image, before windows
are taken.
Two extensions from the seed projects: `corrupt_fraction` corrupts the pixels of only a random
share of the images in each split, and `pixel_fraction` makes the two shuffles permute only a
random share of the pixel positions among themselves (the others stay in place).

Every random choice comes from its own CPU generator derived from (seed, purpose), so the noisy
labels for a seed are identical whatever the corruption, architecture or training seed, the pixel
corruption does not shift when the label noise level changes, and a seed means the same data on a
CPU laptop and a CUDA box (device generators differ). This runs once per trial, before training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rgsweep.names import CORRUPTIONS

_CHUNK = 4096  # images per chunk for per-image permutations (bounds the [n, H*W] random matrix)


@dataclass
class Corrupted:
    x_train: torch.Tensor  # float32 [N, C, H, W], pixels /255 (gaussian may leave 0..1)
    y_train: torch.Tensor  # int64 [N], labels after label noise
    x_test: torch.Tensor  # float32 [M, C, H, W]
    y_test: torch.Tensor  # int64 [M], never corrupted
    noisy: torch.Tensor  # bool [N]: the training label CHANGED (new != old)
    noise_mask: torch.Tensor  # bool [N]: the label was redrawn (the draw may have kept it)


def _generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose; streams for different purposes are independent."""
    digest = hashlib.sha256(f"rgsweep:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def noisy_labels(y: torch.Tensor, num_classes: int, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Redraw each label uniformly at random with probability `p`; returns (new labels, redrawn mask).

    One uniform number and one candidate class per sample are drawn whatever `p` is, so for a fixed
    seed the labels redrawn at p=0.2 are a subset of those at p=0.4 (nested noise levels).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {p}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = _generator(seed, "labels")
    u = torch.rand(len(y), generator=g)
    candidate = torch.randint(0, num_classes, (len(y),), generator=g)
    redrawn = (u < p).to(y.device)
    return torch.where(redrawn, candidate.to(y.device, y.dtype), y), redrawn


def corrupt(
    x_train_u8: torch.Tensor,
    y_train: torch.Tensor,
    x_test_u8: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    *,
    label_noise: float = 0.0,
    corruption: str = "none",
    corrupt_fraction: float = 1.0,
    pixel_fraction: float = 1.0,
    seed: int = 0,
) -> Corrupted:
    """Apply label noise (train only) and an input corruption (train and test) to uint8 images.

    Returns float32 images in pixel units /255. See the module docstring for the definitions;
    `gaussian` uses the per-channel mean and std of the original (clean) training images.
    """
    _validate(x_train_u8, y_train, x_test_u8, y_test, num_classes, label_noise, corruption,
              corrupt_fraction, pixel_fraction)
    y_new, redrawn = noisy_labels(y_train, num_classes, label_noise, seed)

    x_train, x_test = x_train_u8, x_test_u8
    if corruption in ("shuffled_pixels", "random_pixels"):
        # Permute the uint8 images (a quarter of the float32 memory), then convert.
        hw = x_train.shape[2] * x_train.shape[3]
        k = round(pixel_fraction * hw)
        splits = {}
        for split, x in (("train", x_train), ("test", x_test)):
            idx = _chosen(len(x), corrupt_fraction, _generator(seed, f"select-{split}"))
            if corruption == "shuffled_pixels":  # the same generator for both splits: one shared permutation
                shared = _partial_permutations(1, hw, k, _generator(seed, "shuffled_pixels"))
                perms = shared.expand(len(idx), hw)
            else:
                perms = _partial_permutations(len(idx), hw, k, _generator(seed, f"random_pixels-{split}"))
            splits[split] = _permute_images(x, idx, perms)
        x_train, x_test = splits["train"], splits["test"]

    x_train = x_train.float().div_(255.0)
    x_test = x_test.float().div_(255.0)

    if corruption == "gaussian":
        # Statistics of the whole clean training set, per channel, in /255 units.
        var, mean = torch.var_mean(x_train, dim=(0, 2, 3), correction=0)
        std = var.sqrt()
        for split, x in (("train", x_train), ("test", x_test)):
            idx = _chosen(len(x), corrupt_fraction, _generator(seed, f"select-{split}"))
            noise = torch.randn((len(idx), *x.shape[1:]), generator=_generator(seed, f"gaussian-{split}"))
            noise = noise.to(x.device).mul_(std[None, :, None, None]).add_(mean[None, :, None, None])
            if len(idx) == len(x):
                x.copy_(noise)
            else:
                x[idx.to(x.device)] = noise

    return Corrupted(x_train, y_new, x_test, y_test, noisy=y_new != y_train, noise_mask=redrawn)


def _chosen(n: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random `fraction` of `n` images (all of them when fraction is 1)."""
    if fraction >= 1.0:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[: round(fraction * n)].sort().values


def _partial_permutations(n: int, hw: int, k: int, g: torch.Generator) -> torch.Tensor:
    """[n, hw] index maps; each permutes a random set of k positions among themselves, fixing the rest.

    Row i is applied as out[..., j] = in[..., perm[i, j]]. Drawn in fixed-size chunks without a
    Python loop over images, so memory stays bounded for 50k CIFAR images.
    """
    out = torch.empty((n, hw), dtype=torch.long)
    for s in range(0, n, _CHUNK):
        m = min(_CHUNK, n - s)
        if k >= hw:
            out[s:s + m] = torch.argsort(torch.rand(m, hw, generator=g), dim=1)
            continue
        chosen = torch.argsort(torch.rand(m, hw, generator=g), dim=1)[:, :k]  # random subset per row
        shuffled = torch.gather(chosen, 1, torch.argsort(torch.rand(m, k, generator=g), dim=1))
        perm = torch.arange(hw).repeat(m, 1)
        perm.scatter_(1, chosen, shuffled)  # position chosen[j] now reads from shuffled[j]
        out[s:s + m] = perm
    return out


def _permute_images(x: torch.Tensor, idx: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Copy of x with images `idx` spatially permuted by the rows of `perms` (channels move together)."""
    n, c, h, w = x.shape
    src = x.contiguous().view(n, c, h * w)
    out = src.clone()
    every = len(idx) == n  # then rows are plain slices: no fancy-index copies
    for s in range(0, len(idx), _CHUNK):
        rows = slice(s, min(s + _CHUNK, n)) if every else idx[s:s + _CHUNK].to(x.device)
        p = perms[s:s + _CHUNK].to(x.device)
        out[rows] = torch.gather(src[rows], 2, p[:, None, :].expand(-1, c, h * w))
    return out.view(n, c, h, w)


def _validate(x_train, y_train, x_test, y_test, num_classes, label_noise, corruption,
              corrupt_fraction, pixel_fraction) -> None:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {corruption!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if not 0.0 < corrupt_fraction <= 1.0:
        raise ValueError(f"corrupt_fraction must be in (0, 1], got {corrupt_fraction}")
    if not 0.0 < pixel_fraction <= 1.0:
        raise ValueError(f"pixel_fraction must be in (0, 1], got {pixel_fraction}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, x, y in (("x_train", x_train, y_train), ("x_test", x_test, y_test)):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"{name} must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"{name} has {len(x)} images but {len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train and test images differ in shape: {tuple(x_train.shape[1:])} "
                         f"vs {tuple(x_test.shape[1:])}")
    lo, hi = (int(y_train.min()), int(y_train.max())) if len(y_train) else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"y_train must hold classes in [0, {num_classes}), got {lo}..{hi}")
