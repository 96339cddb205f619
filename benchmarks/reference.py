"""The standard pipeline rgsweep is measured against, written the way public reproductions write it.

torchvision's ImageFolder decodes every image file with PIL on every access, torchvision transforms run
per image (ToTensor, CenterCrop(28), per-image standardisation, and RandomCrop(28, padding=4) +
RandomHorizontalFlip when augmenting), a DataLoader with two worker processes batches them, and the
loop reads the running loss and accuracy back with `.item()` after every batch. Same model, batch size
and optimiser as rgsweep's loop; no channels_last, autocast or other tuning: that is the point.

"Same model" means the same architecture and parameters, written as a public reproduction writes it:
rgsweep's AlexNet computes its local response normalisation as a banded matmul
(`rgsweep.models.alexnet.LocalResponseNorm`, the same function) and max-pools before the ReLU;
`standard_modules` puts torch's `nn.LocalResponseNorm` and the textbook conv -> ReLU -> pool order back.
`modules="rgsweep"` keeps rgsweep's modules, to isolate the data path.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from rgsweep.models import build_model
from rgsweep.models.alexnet import LocalResponseNorm


def standard_modules(model: nn.Module) -> nn.Module:
    """The same function and parameters in the textbook form (in place): torch's `nn.LocalResponseNorm`
    for rgsweep's banded one, and ReLU before max-pool (rgsweep pools first: ReLU commutes with max)."""
    for name, child in model.named_children():
        if isinstance(child, LocalResponseNorm):
            setattr(model, name, nn.LocalResponseNorm(child.size, child.alpha, child.beta, child.k))
        else:
            standard_modules(child)
    if isinstance(model, nn.Sequential):
        layers = list(model)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        for i, layer in enumerate(layers):
            model[i] = layer
    return model


class PerImageStandardize:
    """TF's per_image_standardization on one [C,H,W] tensor, as the paper's preprocessing."""

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        std = t.std(unbiased=False).clamp_min(1.0 / math.sqrt(t.numel()))
        return (t - t.mean()) / std


def transform(augment: bool) -> T.Compose:
    tf: list[Any] = [T.ToTensor(), T.CenterCrop(28), PerImageStandardize()]
    if augment:
        tf += [T.RandomCrop(28, padding=4), T.RandomHorizontalFlip()]
    return T.Compose(tf)


def make_loader(root: Path, samples: int, augment: bool, batch_size: int = 128, workers: int = 2,
                seed: int = 0) -> tuple[DataLoader, int]:
    """A shuffled DataLoader over `samples` random training images of `root`/train; also the class count."""
    ds = datasets.ImageFolder(str(root / "train"), transform=transform(augment))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(samples, len(ds))].tolist()
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=g)
    return loader, len(ds.classes)


def time_reference(arch: str, root: Path, samples: int, augment: bool, device: torch.device,
                   batch_size: int = 128, lr: float = 0.01, workers: int = 2, warmup_batches: int = 2,
                   modules: str = "standard") -> dict:
    """Train `arch` the standard way on `samples` images (whole epochs); samples/s of the timed part.

    A few untimed batches first start the workers and warm the allocator and oneDNN, as rgsweep's side
    gets a warm-up too; the timed epochs then start from a fresh iterator (no batches prefetched early).
    """
    loader, num_classes = make_loader(root, samples, augment, batch_size, workers)
    torch.manual_seed(0)
    model = build_model(arch, (3, 28, 28), num_classes)
    if modules == "standard":
        model = standard_modules(model)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n = len(loader.dataset)  # type: ignore[arg-type]
    epochs = max(1, math.ceil(samples / n))

    def run(it, limit: int | None = None) -> tuple[int, float, float]:
        model.train()
        running, correct, seen = 0.0, 0, 0
        for b, (x, y) in enumerate(it):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item() * len(y)  # a host sync per batch, as the public loops do
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            if limit is not None and b + 1 >= limit:
                break
        return seen, running / max(seen, 1), correct / max(seen, 1)

    run(iter(loader), limit=warmup_batches)
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        it = iter(loader)
        t0 = time.perf_counter()
        s, loss, acc = run(it)
        elapsed += time.perf_counter() - t0
        seen += s
    del loader  # stops the persistent workers
    return {"samples": seen, "time_s": elapsed, "samples_per_s": seen / elapsed, "train_loss": loss,
            "train_acc": acc}
