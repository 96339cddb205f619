"""`make bench`: rgsweep's training loop against the standard torchvision pipeline, side by side.

For each model (mlp1x512, alexnet, resnet18 by default), without and with augmentation (random crop with
4-pixel padding + horizontal flip: rgsweep's `padcrop`, flip), the same number of training samples goes through

  (a) rgsweep's `train()` with the paper preset: data decoded once, on the device, batched augmentation;
  (b) the reference loop of `benchmarks/reference.py`: ImageFolder + PIL transforms + DataLoader workers.

Both train the same model with the same batch size (128) and optimiser (SGD, momentum 0.9) from a warm
start, and only the optimisation steps are timed (rgsweep's per-epoch evaluation is excluded via its
`optim_time_s`; the reference does none). It prints samples/s, their ratio, and the achieved FLOP/s
(model FLOPs per sample from torch's FlopCounterMode on one forward+backward, times samples/s) as a
fraction of a matmul peak measured in the same run, on the same device, in the dtype the loop computes
in (fp32 on the CPU, bf16 on CUDA). `--packing` adds trial packing (K digits trials trained together vs
one by one), `--sweep-overhead` two real tiny sweeps (benchmarks/sweep_overhead.py). Results go to
benchmarks/results/<date>-<device>.json.

Data: ../shared/data/cifar10-mini (ImageFolder layout) when present, else synthetic CIFAR-shaped images
(3x32x32 PNG files written to a temp dir, so both loops read files the same way).

    python -m benchmarks.bench                      # the model table (~3 min on a 2-core CPU)
    python -m benchmarks.bench --packing --sweep-overhead   # everything `make bench` prints
    python -m benchmarks.bench --models mlp1x512 --samples 2048 --packing
    python -m benchmarks.bench --quick              # seconds: tiny synthetic data (the tests use this)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/bench.py`: make `benchmarks` and `rgsweep` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.reference import time_reference
from rgsweep.config import make_config
from rgsweep.models import build_model
from rgsweep.models.alexnet import LocalResponseNorm
from rgsweep.train import prepare_data, resolve_device, train

REPO = Path(__file__).resolve().parents[1]
CIFAR_MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
RESULTS = REPO / "benchmarks" / "results"
MODELS = ["mlp1x512", "alexnet", "resnet18"]
# Training samples per measurement on the CPU: each model gets a few seconds on each side.
CPU_SAMPLES = {"mlp1x512": 10000, "alexnet": 1536, "resnet18": 256}
GPU_SAMPLES = {"mlp1x512": 20000, "alexnet": 20000, "resnet18": 10000}
BATCH = 128
AUGMENT = ["padcrop", "flip"]  # the reference's RandomCrop(28, padding=4) + flip ("crop+flip" in the table)
# The goals of issue 6, with augmentation on: (ratio to the reference, % of the matmul peak) per model.
CPU_GOALS = {"mlp1x512": (10.0, 80.0), "alexnet": (2.0, 65.0)}
CUDA_GOALS = {m: (10.0, None) for m in MODELS}


# -- data -----------------------------------------------------------------------------------------
def write_synthetic_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-shaped PNGs in ImageFolder layout: a random prototype per class plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (10, 32, 32, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % 10
            img = np.clip(protos[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return root


# -- peak and FLOPs -------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 4096),
                repeats: int = 3) -> tuple[float, int]:
    """Best FLOP/s of an n x n matmul over `sizes` and `repeats`: the device's practical peak."""
    best, best_n = 0.0, sizes[0]
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = a @ b
        reps = repeats * (20 if device.type == "cuda" else 1)
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps // repeats):
                torch.mm(a, b, out=c)
            _sync(device)
            rate = 2 * n**3 * (reps // repeats) / (time.perf_counter() - t0)
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def flops_per_sample(arch: str, input_shape: tuple[int, int, int], num_classes: int,
                     device: torch.device) -> float:
    """Matmul/conv FLOPs of one forward + backward at batch 128, per sample (torch's FlopCounterMode)."""
    torch.manual_seed(0)
    model = build_model(arch, input_shape, num_classes).to(device).train()
    x = torch.randn(BATCH, *input_shape, device=device)
    y = torch.randint(0, num_classes, (BATCH,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


# -- rgsweep's side -------------------------------------------------------------------------------
def time_rgsweep(dataset: str, arch: str, samples: int, augment: bool, device: torch.device,
                 n_train: int) -> dict[str, Any]:
    """`train()` on a class-balanced subset of `samples` images (whole epochs), steps timed only."""
    subset = max(10, min(samples, n_train))
    cfg = make_config({
        "dataset": dataset, "arch": arch, "preprocess": "paper", "augment": AUGMENT if augment else [],
        "subset": subset, "epochs": max(1, math.ceil(samples / subset)), "fit_threshold": None,
        "lr": 0.01, "momentum": 0.9, "batch_size": BATCH, "device": str(device), "seed": 0,
    })
    t0 = time.perf_counter()
    data = prepare_data(cfg, device)
    prepare_s = time.perf_counter() - t0
    # The per-epoch evaluation is not timed; a small test split keeps it from lengthening the run.
    data = dataclasses.replace(data, x_test=data.x_test[:256], y_test=data.y_test[:256])
    warm = dataclasses.replace(data, x_train=data.x_train[: 2 * BATCH], y_train=data.y_train[: 2 * BATCH],
                               noisy=data.noisy[: 2 * BATCH])
    train(cfg.model_copy(update={"epochs": 1}), data=warm)  # allocator, oneDNN / cuDNN warm-up
    s = train(cfg, data=data)
    return {"samples": s["samples_trained"], "time_s": s["optim_time_s"],
            "samples_per_s": s["samples_trained"] / s["optim_time_s"], "prepare_s": prepare_s,
            "train_loss": s["final_train_loss"]}


# -- the run --------------------------------------------------------------------------------------
def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return device.type


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_models(args: argparse.Namespace, device: torch.device, root: Path, dataset: str,
                 peak: float) -> list[dict[str, Any]]:
    n_train = sum(1 for p in (root / "train").rglob("*") if p.is_file())
    rows = []
    for arch in args.models:
        samples = args.samples or (GPU_SAMPLES if device.type == "cuda" else CPU_SAMPLES)[arch]
        flops = flops_per_sample(arch, (3, 28, 28), len(list((root / "train").iterdir())), device)
        # Models with modules of rgsweep's own (alexnet's LRN) are also timed in the reference pipeline
        # with those modules, so that the table separates the data path from the model code.
        custom = any(isinstance(m, LocalResponseNorm) for m in build_model(arch, (3, 28, 28), 10).modules())
        for aug in (False, True):
            # Best of `repeats` alternating runs per side: on a shared machine a run that another
            # process slowed down is discarded rather than averaged in.
            ours_runs, ref_runs, same_runs = [], [], []
            for _ in range(args.repeats):
                ours_runs.append(time_rgsweep(dataset, arch, samples, aug, device, n_train))
                ref_runs.append(time_reference(arch, root, samples, aug, device, batch_size=BATCH,
                                               workers=args.workers))
                if custom:  # the reference pipeline on rgsweep's own modules: the data path alone
                    same_runs.append(time_reference(arch, root, samples, aug, device, batch_size=BATCH,
                                                    workers=args.workers, modules="rgsweep"))
            ours = max(ours_runs, key=lambda r: r["samples_per_s"])
            ref = max(ref_runs, key=lambda r: r["samples_per_s"])
            row = {
                "model": arch, "augment": "crop+flip" if aug else "none", "samples": samples,
                "rgsweep_samples_per_s": ours["samples_per_s"], "reference_samples_per_s": ref["samples_per_s"],
                "ratio": ours["samples_per_s"] / ref["samples_per_s"], "flops_per_sample": flops,
                "rgsweep_pct_peak": 100 * flops * ours["samples_per_s"] / peak,
                "reference_pct_peak": 100 * flops * ref["samples_per_s"] / peak,
                "rgsweep": ours, "reference": ref, "repeats": args.repeats,
                "rgsweep_all_samples_per_s": [r["samples_per_s"] for r in ours_runs],
                "reference_all_samples_per_s": [r["samples_per_s"] for r in ref_runs],
            }
            if custom:
                same = max(same_runs, key=lambda r: r["samples_per_s"])
                row.update(reference_rgsweep_modules_samples_per_s=same["samples_per_s"],
                           ratio_data_path=ours["samples_per_s"] / same["samples_per_s"])
            rows.append(row)
            extra = (f"   reference on rgsweep's modules {row['reference_rgsweep_modules_samples_per_s']:8.0f}/s"
                     if custom else "")
            print(f"  {arch:<10} {row['augment']:<10} rgsweep {ours['samples_per_s']:8.0f}/s   "
                  f"reference {ref['samples_per_s']:8.0f}/s{extra}", flush=True)
    return rows


HEADER = (f"{'model':<10} {'augment':<10} {'rgsweep/s':>10} {'reference/s':>12} {'ratio':>7} "
          f"{'MFLOP/sample':>13} {'rgsweep %peak':>14} {'reference %peak':>16}")


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['model']:<10} {r['augment']:<10} {r['rgsweep_samples_per_s']:>10.0f} "
            f"{r['reference_samples_per_s']:>12.0f} {r['ratio']:>6.1f}x {r['flops_per_sample'] / 1e6:>13.1f} "
            f"{r['rgsweep_pct_peak']:>13.0f}% {r['reference_pct_peak']:>15.0f}%")


def print_goals(rows: list[dict[str, Any]], goals: dict[str, tuple[float, float | None]]) -> None:
    """Each goal against its figure, and the % of peak a ratio goal needs at the reference's measured
    speed (ratio x reference samples/s x FLOPs per sample / peak): above 100% it cannot be met."""
    lines = []
    for r in rows:
        if r["augment"] == "none" or r["model"] not in goals:
            continue
        ratio_goal, pct_goal = goals[r["model"]]
        needed = r["reference_pct_peak"] * ratio_goal
        r.update(goal_ratio=ratio_goal, goal_pct_peak=pct_goal, pct_peak_needed_for_ratio_goal=needed)
        ok = lambda met: "met" if met else "missed"
        text = (f"  {r['model']:<10} ratio {r['ratio']:.2f}x, goal {ratio_goal:g}x: {ok(r['ratio'] >= ratio_goal)} "
                f"({ratio_goal:g}x the reference needs {needed:.0f}% of peak)")
        if pct_goal is not None:
            pct = r["rgsweep_pct_peak"]
            text += f"; {pct:.0f}% of peak, goal {pct_goal:g}%: {ok(pct >= pct_goal)}"
        lines.append(text)
    if lines:
        print("\ngoals (augmentation on):")
        print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated architectures")
    p.add_argument("--samples", type=int, default=None, help="training samples per measurement (per model default)")
    p.add_argument("--data", default=None, help="ImageFolder root with train/ and test/, or 'synthetic' "
                   "(default: ../shared/data/cifar10-mini when present)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--repeats", type=int, default=None, help="runs per side, best kept (default 2; --quick 1)")
    p.add_argument("--packing", action="store_true", help="also time trial packing (K digits trials)")
    p.add_argument("--pack", type=int, default=8, help="trials packed together in --packing")
    p.add_argument("--sweep-overhead", action="store_true",
                   help="also time two tiny real sweeps (Ray + MLflow) against their trials' training time")
    p.add_argument("--no-models", action="store_true", help="skip the model table (e.g. packing only)")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data and few samples: seconds")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<date>-<device>.json)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        args.samples = args.samples or 256
        args.data = args.data or "synthetic"
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cache_env = os.environ.get("RGSWEEP_CACHE")
    with tempfile.TemporaryDirectory(prefix="rgsweep-bench-") as tmp:
        if args.data in (None, "") and CIFAR_MINI.is_dir():
            root, source = CIFAR_MINI, "cifar10-mini"
        elif args.data in (None, "", "synthetic"):
            n = 512 if args.quick else 4096
            root, source = write_synthetic_folder(Path(tmp) / "data", n, 256), "synthetic"
            os.environ["RGSWEEP_CACHE"] = str(Path(tmp) / "cache")  # keep temp decodes out of the user cache
        else:
            root, source = Path(args.data).resolve(), args.data
        try:
            result = run(args, device, root, source)
        finally:
            if cache_env is None:
                os.environ.pop("RGSWEEP_CACHE", None)
            else:
                os.environ["RGSWEEP_CACHE"] = cache_env
    out = Path(args.out) if args.out else RESULTS / f"{dt.date.today().isoformat()}-{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nload average {result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}; saved {out}")
    return 0


def run(args: argparse.Namespace, device: torch.device, root: Path, source: str) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = (512,) if args.quick else (2048, 4096)
    peak, peak_n = matmul_peak(device, dtype, sizes, repeats=1 if args.quick else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"data: {source} ({root}); batch {BATCH}; SGD momentum 0.9; paper preprocessing")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({str(dtype).removeprefix('torch.')} {peak_n}x{peak_n})")
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "device": device_slug(device),
        "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "data": source, "batch_size": BATCH,
        "peak_flops": peak, "peak_dtype": str(dtype).removeprefix("torch."), "peak_matmul_n": peak_n,
        "loadavg_start": list(os.getloadavg()), "rows": [],
    }
    if not args.no_models:
        result["rows"] = bench_models(args, device, root, f"imagefolder:{root}", peak)
        # The peak again at the end: on a shared machine the better of the two is the honest limit.
        peak2, n2 = matmul_peak(device, dtype, sizes, repeats=1 if args.quick else 3)
        if peak2 > peak:
            print(f"(matmul peak re-measured at the end: {peak2 / 1e9:.1f} GFLOP/s; percentages use it)")
            result.update(peak_flops=peak2, peak_matmul_n=n2)
            for r in result["rows"]:
                r["rgsweep_pct_peak"] *= peak / peak2
                r["reference_pct_peak"] *= peak / peak2
        print()
        print(HEADER)
        for r in result["rows"]:
            print(format_row(r))
        print_goals(result["rows"], CUDA_GOALS if device.type == "cuda" else CPU_GOALS)
        for r in result["rows"]:
            if "ratio_data_path" in r:
                print(f"{r['model']} ({r['augment']}): the reference pipeline on rgsweep's own modules runs "
                      f"{r['reference_rgsweep_modules_samples_per_s']:.0f}/s, so the data path alone is "
                      f"{r['ratio_data_path']:.2f}x of the {r['ratio']:.2f}x")
    if args.packing:
        from benchmarks.packing import bench_packing

        print()
        result["packing"] = bench_packing(k=args.pack, device=device, quick=args.quick, repeats=args.repeats)
    if args.sweep_overhead:
        from benchmarks import sweep_overhead

        print("\nsweep overhead: two real sweeps of tiny trials (Ray Tune + a temp SQLite MLflow store)")
        result["sweep_overhead"] = sweep_overhead.measure()
        sweep_overhead.report(result["sweep_overhead"])
    result["loadavg_end"] = list(os.getloadavg())
    return result


if __name__ == "__main__":
    raise SystemExit(main())
