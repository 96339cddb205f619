"""Data hand-off: how long a real sweep takes to reach its first epoch, and what each trial spends on its data.

One real `rgsweep sweep` (a fresh process, as a user types it) on an image folder, `--num-cpus 2`, a fresh
SQLite store (its schema made beforehand, so the figures are about data, not migrations), N trials two
at a time. From the MLflow store afterwards:

- `first_epoch_start_s` / `first_epoch_end_s`: from launching the command to the start (end minus its
  `epoch_time_s`) and the end of the earliest first epoch of any trial. The end is when the driver logs it
  (a trial sends its first epoch at once).
- per trial, `startup_s`: from its MLflow run's start (the driver starts it as Ray starts the trial) to its
  first epoch's start: worker start, data, model. `data_prep_s` / `data_fetch_s`: what the trial itself
  logs (since the driver hands data over; absent before).
- `prepare_s` (all versions, in a fresh process after an import, as a trial does it on the old code
  path): `prepare_data(config)` loading from the decode cache, or, where the seam exists,
  `prepare_data(config, dataset=...)` on a dataset already in memory (what a trial does after its
  zero-copy read from the object store).

The decode cache ($RGSWEEP_CACHE) is a fresh folder, filled before the sweep (warm, the usual case) or
left empty (`--cold`: each trial of the old code decoded the 12,000 PNGs itself).

To measure another checkout (the code before the hand-off), point `--code` at an extracted copy of it
(its modules are imported instead of this checkout's, by the driver and by Ray's workers). The old code
cannot take a relative path, so the image folder is always given absolute here.

    python -m benchmarks.data_handoff                       # cifar10-mini, 4 trials, 1 epoch, warm cache
    python -m benchmarks.data_handoff --cold
    mkdir /tmp/before && git archive 4077ca3 | tar -x -C /tmp/before
    python -m benchmarks.data_handoff --code /tmp/before [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CIFAR_MINI = REPO.parent / "shared" / "data" / "cifar10-mini"

PREPARE = """
import json, sys, time
t0 = time.perf_counter()
import torch
from rgsweep.config import make_config
from rgsweep.train import prepare_data
import_s = time.perf_counter() - t0
cfg = make_config(json.loads(sys.argv[1]))
t0 = time.perf_counter()
prepare_data(cfg, torch.device("cpu"))
cache_s = time.perf_counter() - t0
out = {"import_s": import_s, "prepare_from_cache_s": cache_s}
try:
    from rgsweep.data.sources import load_dataset
    ds = load_dataset(cfg.dataset, subset=cfg.subset)
    t0 = time.perf_counter()
    prepare_data(cfg, torch.device("cpu"), ds)
    out["prepare_given_dataset_s"] = time.perf_counter() - t0
except TypeError:  # code without the seam
    pass
print(json.dumps(out))
"""

WARM = "import sys; from rgsweep.data.sources import load_dataset; load_dataset(sys.argv[1])"


def env_for(code: Path | None, cache: Path) -> dict[str, str]:
    env = {**os.environ, "RGSWEEP_CACHE": str(cache), "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "1"}
    if code is not None:  # import rgsweep from that checkout, in the driver and (inherited) in Ray's workers
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    return env


def base_config(data: Path, arch: str, epochs: int, subset: int | None) -> dict[str, Any]:
    return {"dataset": f"imagefolder:{data.resolve()}", "arch": arch, "epochs": epochs, "subset": subset,
            "fit_threshold": None, "lr": 0.01, "device": "cpu"}


def run_sweep(work: Path, env: dict[str, str], base: dict[str, Any], trials: int) -> dict[str, Any]:
    from rgsweep import tracking

    uri = f"sqlite:///{work / 'mlflow.db'}"
    tracking.get_client(uri)  # the schema, beforehand
    spec = {"name": "handoff", "base": base, "seeds": list(range(trials)),
            "resources": {"cpu": 1}, "max_concurrent": 2}
    (work / "handoff.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "rgsweep.cli", "sweep", "handoff.yaml", "--num-cpus", "2", "--tracking-uri", uri]
    t_launch = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - t_launch
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    client = tracking.get_client(uri)
    exp = client.get_experiment_by_name("handoff")
    per_trial, starts, ends = [], [], []
    for r in tracking.search_children(client, exp.experiment_id):
        (first,) = [m for m in client.get_metric_history(r.info.run_id, "epoch_time_s") if m.step == 1]
        end = first.timestamp / 1000
        start = end - first.value
        starts.append(start)
        ends.append(end)
        m = r.data.metrics
        per_trial.append({"run": r.info.run_name, "startup_s": start - r.info.start_time / 1000,
                          "data_prep_s": m.get("data_prep_s"), "data_fetch_s": m.get("data_fetch_s"),
                          "first_epoch_s": first.value})
    return {"wall_s": wall, "first_epoch_start_s": min(starts) - t_launch, "first_epoch_end_s": min(ends) - t_launch,
            "trials": sorted(per_trial, key=lambda t: t["run"]),
            "median_startup_s": statistics.median(t["startup_s"] for t in per_trial),
            "driver_data_line": [ln for ln in proc.stdout.splitlines() if ln.startswith("data: ")]}


def measure_prepare(work: Path, env: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
    # cwd: `python -c` puts the current directory first on sys.path, before PYTHONPATH (--code).
    proc = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(base)], cwd=work, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=CIFAR_MINI, help="image folder (default ../shared/data/cifar10-mini)")
    p.add_argument("--code", type=Path, help="run another checkout of rgsweep (an extracted copy), e.g. the old code")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--arch", default="mlp1x512")
    p.add_argument("--subset", type=int)
    p.add_argument("--cold", action="store_true", help="start with an empty decode cache")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/<date>-data-handoff-*.json)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: pass --data PATH to an image folder")
    with tempfile.TemporaryDirectory(prefix="rgsweep-handoff-") as tmp:
        work = Path(tmp)
        env = env_for(args.code, work / "cache")
        base = base_config(args.data, args.arch, args.epochs, args.subset)
        load_before = os.getloadavg()
        if not args.cold:  # decode into the fresh cache first, untimed
            subprocess.run([sys.executable, "-c", WARM, base["dataset"]], cwd=work, env=env, check=True)
        sweep = run_sweep(work, env, base, args.trials)
        prepare = measure_prepare(work, env, base)  # the cache is warm by now (the sweep filled it)
    result = {"code": str(args.code or REPO), "cold_cache": args.cold, "data": str(args.data), "trials": args.trials,
              "epochs": args.epochs, "arch": args.arch, "subset": args.subset,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              **sweep, "prepare": prepare}
    out = args.out or REPO / "benchmarks" / "results" / (
        f"{time.strftime('%Y-%m-%d')}-data-handoff-{'cold' if args.cold else 'warm'}-{int(time.time())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=2))
    for t in result["trials"]:
        print(f"  {t['run']:<24} startup {t['startup_s']:6.2f} s  data_fetch_s {t['data_fetch_s']}  "
              f"data_prep_s {t['data_prep_s']}  first epoch {t['first_epoch_s']:.2f} s")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO))
    main()
