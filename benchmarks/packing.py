"""Trial packing against one-by-one training, on the demo sweep's kind of trial (digits, tiny models).

K trials that differ as the demo's do (label noise 0..1, the three pixel corruptions) train for the same
number of epochs, first one after another with `train()`, then together with `train_packed()`, in the
same process with the same threads. Both timings cover the whole call (data preparation, model
building, every epoch's training and evaluation), as a sweep pays for them. The final metrics of the two
ways are compared too: they must agree.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from rgsweep.config import TrialConfig, make_config
from rgsweep.packed import train_packed
from rgsweep.train import train

DEMO_BASE = {"dataset": "digits", "preprocess": "paper", "optimizer": "sgd", "lr": 0.05, "lr_decay": 0.99,
             "momentum": 0.9, "batch_size": 128, "fit_threshold": None}
PACK_GOAL = 2.0  # issue 6: packing should at least double the throughput of per-step-bound trials
CONDITIONS = [{"label_noise": p} for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)] + [
    {"corruption": c} for c in ("shuffled_pixels", "random_pixels", "gaussian")]


def demo_configs(arch: str, k: int, epochs: int, device: torch.device) -> list[TrialConfig]:
    return [make_config({**DEMO_BASE, **CONDITIONS[i % len(CONDITIONS)], "seed": i // len(CONDITIONS),
                         "arch": arch, "epochs": epochs, "device": str(device)}) for i in range(k)]


def _first(into: list[dict]):
    """A report callback keeping each trial's first epoch."""
    return lambda m: into.append(m) if m["epoch"] == 1 else None


def bench_packing(k: int = 8, device: torch.device | None = None, quick: bool = False,
                  archs: tuple[str, ...] = ("mlp1x512", "cnn"), epochs: int | None = None,
                  repeats: int = 1) -> dict[str, Any]:
    """Best of `repeats` alternating timings of each way (a shared machine's slow runs are discarded)."""
    device = device or torch.device("cpu")
    # The demo's MLP trials run 18-163 epochs, so 30 shows their steady state; its cnn epochs are ~50x
    # dearer, and 4 of them already show the per-step picture.
    per_arch = {a: epochs or (2 if quick else (30 if a.startswith("mlp") else 4)) for a in archs}
    print(f"trial packing: {k} digits trials (demo conditions), one by one vs packed; goal {PACK_GOAL:g}x")
    print(f"{'model':<10} {'epochs':>6} {'one by one s':>13} {'packed s':>9} {'speedup':>8} "
          f"{'epoch-1 loss rel d':>20} {'final |d test_acc|':>17}")
    rows = []
    for arch in archs:
        epochs = per_arch[arch]
        cfgs = demo_configs(arch, k, epochs, device)
        train(cfgs[0].model_copy(update={"epochs": 1}))  # imports, dataset load, allocator warm-up
        t_seq = t_packed = math.inf
        for _ in range(repeats):
            first_seq: list[dict] = []
            first_packed: list[dict] = []
            t0 = time.perf_counter()
            seq = [train(c, _first(first_seq)) for c in cfgs]
            t_seq = min(t_seq, time.perf_counter() - t0)
            t0 = time.perf_counter()
            packed = train_packed(cfgs, [_first(first_packed) for _ in cfgs])
            t_packed = min(t_packed, time.perf_counter() - t0)
        # Float rounding differs between the two ways (channels_last convolutions one by one, batched
        # kernels packed), and a chaotic run (BatchNorm, lr 0.05) amplifies it over epochs: the first
        # epoch's loss shows the agreement, the final accuracy how far chaos took it.
        diff = max(abs(a["final_test_acc"] - b["final_test_acc"]) for a, b in zip(seq, packed)
                   if isinstance(b, dict))
        diff1 = max(abs(a["train_loss"] - b["train_loss"]) / a["train_loss"] for a, b in zip(first_seq, first_packed))
        samples = sum(s["samples_trained"] for s in seq)
        row = {"model": arch, "k": k, "epochs": epochs, "repeats": repeats, "sequential_s": t_seq,
               "packed_s": t_packed, "speedup": t_seq / t_packed, "sequential_samples_per_s": samples / t_seq,
               "packed_samples_per_s": samples / t_packed, "max_abs_diff_final_test_acc": diff,
               "max_rel_diff_epoch1_train_loss": diff1}
        rows.append(row)
        print(f"{arch:<10} {epochs:>6} {t_seq:>13.2f} {t_packed:>9.2f} {row['speedup']:>7.2f}x {diff1:>20.1e} "
              f"{diff:>17.4f}", flush=True)
    return {"threads": torch.get_num_threads(), "rows": rows}
