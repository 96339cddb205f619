"""The share of an epoch spent evaluating, on a laptop subset of real CIFAR-10 (issue 10 §5).

Every epoch evaluates the whole training subset (it decides "fitted", so it stays) and, on the epochs
`eval_every` schedules, the whole test set. This trains each model for `--epochs` epochs under each
schedule on one thread and splits the wall time with the summary's `optim_time_s` (the optimisation
steps alone): evaluation share = 1 - optim_time_s / train_time_s. The first epoch of a warm-up run is
not counted (oneDNN and the allocator warm up on it).

    python -m benchmarks.eval_share                       # cnn and mlp1x512, eval_every 1 and 5, 10 epochs
    python -m benchmarks.eval_share --archs cnn --schedules 1,10 --epochs 10
    python -m benchmarks.eval_share --data synthetic      # no files needed (3x8x8, for a smoke run)

Data: `--data PATH` (image folder, `--subset` class-balanced training images; the test set is whole),
default ../shared/data/cifar10-mini (10,000 train / 2,000 test images). Results: benchmarks/results/
eval-share-<date>.json. Check `uptime` first: figures from a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from rgsweep.config import TrialConfig, make_config
from rgsweep.train import prepare_data, train

REPO = Path(__file__).resolve().parents[1]
CIFAR_MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def measure(arch: str, dataset: str, subset: int | None, epochs: int, eval_every: int | str,
            batch_size: int = 128, eval_batch_size: int | None = None) -> dict[str, Any]:
    values = {"dataset": dataset, "subset": subset, "arch": arch, "epochs": epochs, "fit_threshold": None,
              "lr": 0.01, "preprocess": "paper", "device": "cpu", "seed": 0, "batch_size": batch_size}
    if eval_batch_size is not None:
        values["eval_batch_size"] = eval_batch_size
    if "eval_every" in TrialConfig.model_fields:  # absent before the schedule existed (the "before" run)
        values["eval_every"] = eval_every
    elif eval_every != 1:
        raise SystemExit("this checkout has no eval_every: measure schedule 1 only")
    cfg = make_config(values)
    data = prepare_data(cfg, torch.device("cpu"))
    train(cfg.model_copy(update={"epochs": 1}), data=data)  # warm-up epoch, not counted
    epochs_seen: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    s = train(cfg, epochs_seen.append, data=data)
    wall = time.perf_counter() - t0
    share = 1 - s["optim_time_s"] / s["train_time_s"]
    return {
        "arch": arch, "eval_every": eval_every, "test_every": s.get("test_every"), "batch_size": batch_size,
        "eval_batch_size": eval_batch_size, "epochs": epochs, "n_train": len(data.y_train),
        "n_test": len(data.y_test), "epoch_time_s": s["train_time_s"] / epochs,
        "step_time_s_per_epoch": s["optim_time_s"] / epochs, "eval_share": share, "wall_s": wall,
        "test_evaluations": sum("test_acc" in m for m in epochs_seen),
        "final_test_acc": s["final_test_acc"], "final_train_acc": s["final_train_acc"],
        "epoch_times_s": [m["epoch_time_s"] for m in epochs_seen],
        "epoch_time_with_test_s": _mean([m["epoch_time_s"] for m in epochs_seen if "test_acc" in m]),
        "epoch_time_without_test_s": _mean([m["epoch_time_s"] for m in epochs_seen if "test_acc" not in m]),
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_share", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="image folder, or 'synthetic' (default: ../shared/data/cifar10-mini)")
    p.add_argument("--subset", type=int, default=2000, help="class-balanced training images (default 2000)")
    p.add_argument("--archs", default="cnn,mlp1x512")
    p.add_argument("--schedules", default="1,5", help="eval_every values to compare (default 1,5; 'auto' too)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="training batch (sweeps/paper-cpu.yaml uses 32)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="forward-only batch (default: train.py's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs per (model, schedule), alternating; the median "
                   "share is printed (a shared machine slows some runs down)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        dataset, subset = "synthetic", None
    else:
        root = Path(args.data).resolve() if args.data else CIFAR_MINI
        if not root.is_dir():
            print(f"eval_share: error: no image folder at {root}; pass --data PATH or --data synthetic",
                  file=sys.stderr)
            return 2
        dataset, subset = f"imagefolder:{root}", args.subset
    load = os.getloadavg()
    print(f"{dataset} subset {subset}, batch {args.batch_size}, {args.threads} thread(s), {args.epochs} epochs; "
          f"load {load[0]:.2f}")
    rows = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        runs: dict[int, list[dict[str, Any]]] = {}
        for _ in range(args.repeats):
            for every in [s if s == "auto" else int(s) for s in args.schedules.split(",")]:
                runs.setdefault(every, []).append(measure(arch, dataset, subset, args.epochs, every, args.batch_size,
                                                          args.eval_batch_size))
        for every, rs in runs.items():
            r = sorted(rs, key=lambda r: r["eval_share"])[len(rs) // 2]  # the median run
            r["eval_shares"] = [x["eval_share"] for x in rs]
            rows.append(r)
            print(f"  {arch:<9} eval_every {every:>4} (every {r['test_every']}): {r['epoch_time_s']:6.2f} s/epoch, "
                  f"steps {r['step_time_s_per_epoch']:6.2f} s, evaluation {100 * r['eval_share']:4.1f}% "
                  f"(runs: {', '.join(f'{100 * x:.1f}%' for x in r['eval_shares'])}; {r['test_evaluations']} "
                  f"test evaluations), final test_acc {r['final_test_acc']:.4f}", flush=True)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "dataset": dataset, "subset": subset,
              "threads": args.threads, "torch": torch.__version__, "loadavg_start": list(load),
              "loadavg_end": list(os.getloadavg()), "rows": rows}
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"eval-share-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"load {load[0]:.2f} -> {result['loadavg_end'][0]:.2f}; saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
