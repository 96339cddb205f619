"""Which trials of a sweep share a pack, and on which device a sweep's or study's trial trains: decided
in the driver (and in `--dry-run`) without torch; the packed training itself is rgsweep/packed.py.

A trial's `device: auto` means the GPU Ray granted it, else the CPU. torch alone cannot tell: a task or
actor granted no GPU keeps the node's CUDA_VISIBLE_DEVICES (Ray used to empty it; its PR 62492, April
2026, made keeping it the default: ray/_private/accelerators/accelerator.py), so on a GPU box every
`gpu: 0` trial would see the GPUs and train on GPU 0, beside the trials Ray did give it and uncounted.
So the trainables (rgsweep/trials.py) make `auto` `cpu` when their grant has no GPU, and the driver
packs by the same rule: on a cluster whose head has no GPU, convnets bound for GPU workers are packed as they should be,
and on a GPU box a `gpu: 0` sweep's convnets run alone, as CPU convnets must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rgsweep.names import is_convnet

PACKABLE_DIFFERENCES = frozenset({
    "seed", "label_noise", "corruption", "corrupt_fraction", "pixel_fraction", "corruption_seed", "augment",
    "lr", "momentum", "weight_decay", "lr_schedule", "lr_decay", "lr_step", "epochs", "fit_threshold",
    "early_stopping", "eval_every",
})


def trial_device(device: str, gpu_share: float) -> str:
    """The device setting a Ray trial trains with. `auto` without a GPU share is `cpu`. With one it stays
    `auto` (CUDA when the worker's torch has it, else the CPU: Ray also grants an Apple GPU as `GPU`, which
    `auto` does not use). An explicit device (`cpu`, `cuda`, `cuda:N`, `mps`) is kept as given."""
    return "cpu" if device == "auto" and gpu_share <= 0 else device


def expects_gpu(device: str, gpu_share: float) -> bool:
    """Whether the driver plans a trial for a GPU: an explicit CUDA device, or `auto` with a GPU share."""
    return device.startswith("cuda") or (device == "auto" and gpu_share > 0)


def pack_signature(config: Any) -> tuple:
    """Trials with equal signatures can be packed together (given equal data shapes)."""
    d = config.model_dump()
    return tuple((k, repr(d[k])) for k in sorted(d) if k not in PACKABLE_DIFFERENCES)


def check_packable(configs: Sequence[Any]) -> None:
    """Raise ValueError naming the keys that differ but cannot, or why the trials cannot be packed."""
    if not configs:
        raise ValueError("no trials to pack")
    dumps = [c.model_dump() for c in configs]
    differing = sorted(k for k in dumps[0] if k not in PACKABLE_DIFFERENCES
                       and any(d[k] != dumps[0][k] for d in dumps[1:]))
    if differing:
        detail = "; ".join(f"{k}: {sorted({repr(d[k]) for d in dumps})}" for k in differing)
        raise ValueError(f"cannot pack these trials: they differ in {', '.join(differing)} ({detail}); "
                         f"packed trials may differ only in {', '.join(sorted(PACKABLE_DIFFERENCES))}")
    if configs[0].dropout > 0:
        raise ValueError("cannot pack trials with dropout > 0: its masks come from the global RNG inside the "
                         "forward, which vmap cannot draw per trial as train() does; run them unpacked")


def pack_groups(configs: Sequence[Any], size: int, gpu_share: float) -> list[list[int]]:
    """Indices of `configs` in packs of at most `size` packable trials (input order kept within a pack),
    for trials granted `gpu_share` of a GPU each.

    Trials that cannot be packed (dropout) go alone, and so do convnets that will run on the CPU: there
    the vmapped (grouped) convolutions are compute-bound and ran at 0.7x of one-by-one training on a
    2-core Xeon (benchmarks/packing.py), while MLPs gain. A pack of one is plain training.
    """
    if size < 1:
        raise ValueError(f"pack size must be >= 1, got {size}")
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        cpu_convnet = is_convnet(c.arch) and not expects_gpu(c.device, gpu_share)
        alone = c.dropout > 0 or cpu_convnet
        groups.setdefault(("alone", i) if alone else pack_signature(c), []).append(i)
    return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]
