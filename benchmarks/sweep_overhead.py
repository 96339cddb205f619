"""Sweep overhead: what a sweep of short trials costs beyond the trials' own training time.

Two real sweeps (rgsweep.sweep: Ray Tune + a fresh SQLite MLflow store in a temp dir) of N1 and N2 tiny
trials run one trial at a time in one Ray session, so that

    overhead per trial = (sweep wall time - sum of the trials' train_time_s) / N
    marginal overhead  = the same difference between the two sweeps, per extra trial

separate the per-trial cost (trial actor start, result reporting, the MLflow child run and its per-epoch
batches) from fixed costs (Ray start, measured on its own, and the store's schema, created beforehand).
An untimed one-trial sweep first warms the Ray session (worker processes, imports), as in a long sweep.

Then the per-epoch cost: the same sweep of 2 digits trials with many short epochs (as the demo's MLP
trials), once with every epoch sent to the driver as it ends (`report_interval=0`, one Ray round trip
and one MLflow write per epoch, as before batching) and once batched (the default, at most one report a
second): per-epoch overhead = (wall time - sum of train_time_s - the fixed and per-trial costs above)
/ epochs.

    python -m benchmarks.sweep_overhead                 # N = 2 and 6 trials of 3 epochs
    python -m benchmarks.sweep_overhead --trials 2,10 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml


def write_spec(folder: Path, name: str, n: int, epochs: int, dataset: str = "synthetic") -> Path:
    spec = {
        "name": name,
        "base": {"dataset": dataset, "arch": "mlp1x512", "preprocess": "standard", "epochs": epochs,
                 "fit_threshold": None, "lr": 0.05, "device": "cpu"},
        "grid": {"label_noise": [round(i / max(n - 1, 1), 3) for i in range(n)]},
        "seeds": [0],
        "resources": {"cpu": 1},
        "max_concurrent": 1,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_one(folder: Path, uri: str, n: int, epochs: int, dataset: str = "synthetic",
            report_interval: float | None = None, tag: str = "") -> dict[str, Any]:
    from rgsweep import tracking
    from rgsweep.sweep import REPORT_INTERVAL_S, run_sweep
    from rgsweep.sweepfile import expand, load_spec

    name = f"overhead-{n}{tag}"
    path = write_spec(folder, name, n, epochs, dataset)
    plan = expand(load_spec(path), path)
    interval = REPORT_INTERVAL_S if report_interval is None else report_interval
    t0 = time.perf_counter()
    code, counts = run_sweep(plan, tracking_uri=uri, storage_path=str(folder / "ray"), max_concurrent=1,
                             verbose=0, report_interval=interval)
    wall = time.perf_counter() - t0
    client = tracking.get_client(uri)
    exp = client.get_experiment_by_name(plan.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    train_s = [r.data.metrics.get("train_time_s", 0.0) for r in runs]
    steps = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in runs)
    return {"trials": n, "epochs": epochs, "exit_code": code, "finished": counts.get("finished"),
            "wall_s": wall, "sum_train_time_s": sum(train_s), "child_runs": len(runs),
            "overhead_per_trial_s": (wall - sum(train_s)) / n, "report_interval_s": interval,
            "epochs_logged": steps, "overhead_per_epoch_s": (wall - sum(train_s)) / (n * epochs)}


def measure(sizes: tuple[int, int] = (2, 6), epochs: int = 3, long_epochs: int = 100) -> dict[str, Any]:
    from rgsweep import raytune, tracking

    with tempfile.TemporaryDirectory(prefix="rgsweep-overhead-") as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        t0 = time.perf_counter()
        tracking.get_client(uri)  # schema migrations: a one-off per store, outside the sweeps
        store_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        started = raytune.start_ray(num_cpus=2)
        ray_s = time.perf_counter() - t0
        try:
            run_one(folder, uri, 1, 1, tag="-warmup")  # the session's first trial pays for worker start, imports
            runs = [run_one(folder, uri, n, epochs) for n in sizes]
            per_epoch = [run_one(folder, uri, 2, long_epochs, "digits", interval, tag)
                         for interval, tag in ((0.0, "-every-epoch"), (None, "-batched"))] if long_epochs else []
        finally:
            raytune.stop_ray(started)
    a, b = runs
    extra = [r["wall_s"] - r["sum_train_time_s"] for r in runs]
    marginal = (extra[1] - extra[0]) / (b["trials"] - a["trials"])
    fixed = extra[0] - marginal * a["trials"]
    for r in per_epoch:  # what is left once the sweep's fixed and per-trial costs are taken out
        rest = r["wall_s"] - r["sum_train_time_s"] - fixed - marginal * r["trials"]
        r["overhead_per_epoch_s"] = rest / (r["trials"] * r["epochs"])
    return {"store_create_s": store_s, "ray_start_s": ray_s, "sweeps": runs,
            "marginal_overhead_per_trial_s": marginal, "fixed_overhead_per_sweep_s": fixed,
            "per_epoch": per_epoch}


def report(result: dict[str, Any]) -> None:
    print(f"MLflow store schema (once per store): {result['store_create_s']:.1f} s; "
          f"Ray start (once per sweep): {result['ray_start_s']:.1f} s")
    print(f"{'trials':>6} {'wall s':>8} {'sum train s':>12} {'overhead/trial s':>17}")
    for r in result["sweeps"]:
        print(f"{r['trials']:>6} {r['wall_s']:>8.1f} {r['sum_train_time_s']:>12.2f} {r['overhead_per_trial_s']:>17.2f}")
    print(f"marginal overhead per trial: {result['marginal_overhead_per_trial_s']:.2f} s; "
          f"fixed per sweep (besides Ray start): {result['fixed_overhead_per_sweep_s']:.1f} s")
    pe = result.get("per_epoch") or []
    if pe:
        print(f"per-epoch overhead, 2 digits trials x {pe[0]['epochs']} epochs (MLflow steps logged: "
              f"{', '.join(str(r['epochs_logged']) for r in pe)}):")
        for r in pe:
            how = "every epoch reported" if r["report_interval_s"] == 0 else \
                f"epochs batched (<= 1 report / {r['report_interval_s']:g} s)"
            print(f"  {how:<40} wall {r['wall_s']:6.1f} s, train {r['sum_train_time_s']:5.2f} s, "
                  f"overhead {1000 * r['overhead_per_epoch_s']:5.1f} ms/epoch")
        if len(pe) == 2 and pe[1]["wall_s"] > 0:
            print(f"  batching: {pe[0]['wall_s'] / pe[1]['wall_s']:.1f}x less wall time for the same epochs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--trials", default="2,6", help="two sweep sizes, e.g. 2,6")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--long-epochs", type=int, default=100,
                   help="epochs of the per-epoch overhead sweeps (0 skips them)")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.trials.split(","))
    if len(sizes) != 2 or sizes[0] >= sizes[1] or sizes[0] < 1:
        p.error("--trials takes two increasing sizes, e.g. 2,6")
    result = measure(sizes, args.epochs, args.long_epochs)  # type: ignore[arg-type]
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
