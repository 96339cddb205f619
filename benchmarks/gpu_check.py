"""`make gpu-check`: the CUDA path end to end, in one run of under 8 minutes, results as JSON.

Three steps, each in its own process with its share of the time budget:

  1. cuda-tests  the CUDA-only tests (`pytest -m cuda`: no host sync in the hot loop, bf16 autocast,
                 channels_last, the paper's crop on the device, packed trials on CUDA);
  2. sweep       a short real-data sweep with `pack` on the GPU (fractional GPUs in Ray, packed trials,
                 the paper's crop, a test-evaluation schedule); every trial must finish on CUDA;
  3. bench       what `make bench` runs (`python -m benchmarks.bench --packing --sweep-overhead`).

Results: benchmarks/results/gpu-check-<date>-<device>.json (each step's command, exit code, seconds and
output tail; the sweep's trial statuses; the bench JSON). Exit 0 when every step passed, 1 when one
failed, 2 when CUDA is absent (one line) or the data path does not exist.

Data: `--data PATH`, an image folder with train/ and test/ (e.g. ../shared/data/cifar10-mini). Without it
(the device machines do not get ../shared), CIFAR-shaped synthetic PNGs (3x32x32, 10 classes, learnable)
are written to a temp folder, as `make bench` does, so the check needs no files at all.

    python -m benchmarks.gpu_check                      # on a CUDA machine
    python -m benchmarks.gpu_check --data ../shared/data/cifar10-mini
    python -m benchmarks.gpu_check --plan               # print the steps and commands, run nothing
    python -m benchmarks.gpu_check --smoke              # the same steps, tiny, on any device (CPU too)
    python -m benchmarks.gpu_check --steps cuda-tests,bench   # without Ray and MLflow (README, "GPU check")
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUDGET_S = 480  # 8 minutes for all three steps
SMOKE_BUDGET_S = 1800  # --smoke on a busy 2-core CPU: Ray's start alone can take a minute
# Each step's share of what is left of the budget when it starts (the last one gets the rest).
SHARES = {"cuda-tests": 0.25, "sweep": 0.4, "bench": 1.0}
STEPS = tuple(SHARES)
# The files that hold the tests marked `cuda` (tests/test_gpu_check.py checks the list is complete). The step
# collects only these: collecting all of tests/ imports MLflow, Ray and Optuna, which a GPU machine that runs
# `--steps cuda-tests,bench` need not have.
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_augment.py", "tests/test_crop.py")

SWEEP = """\
# gpu-check: a short real-data sweep with packing on the GPU (written by benchmarks/gpu_check.py).
name: gpu-check
experiment: gpu-check
base:
  dataset: {dataset}
  subset: {subset}
  preprocess: paper
  arch: mlp1x512
  lr: 0.01
  epochs: {epochs}
  eval_every: 2
  fit_threshold: null
  device: {device}
grid:
  label_noise: [0.0, 0.5, 1.0]
  augment: [[], [crop, flip]]
seeds: [0]
resources: {{cpu: 1, gpu: {gpu}}}
pack: 3
"""


def cuda_line() -> str | None:
    """None when CUDA is usable, else the reason in one line."""
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        return f"no CUDA device visible to torch {torch.__version__} (CUDA build: {build})"
    return None


def plan(args: argparse.Namespace, data: str, tmp: Path) -> list[dict[str, Any]]:
    """The steps as commands; `--smoke` makes each tiny and lets it run on the CPU."""
    py = sys.executable
    tests = [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *CUDA_TEST_FILES]
    if args.smoke:  # the CUDA tests skip without CUDA: run one file's worth to prove the plumbing
        tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_crop.py", "-k", "reference"]
    sweep_file = tmp / "gpu-check.yaml"
    sweep = [py, "-m", "rgsweep.cli", "sweep", str(sweep_file), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
             "--storage-path", str(tmp / "ray")]
    # `make bench`'s steps, one run per side instead of the best of two, to fit the budget.
    bench = [py, "-m", "benchmarks.bench", "--packing", "--sweep-overhead", "--repeats", "1",
             "--out", str(tmp / "bench.json")]
    bench += ["--data", data] if data != "synthetic" else []
    # The sweep-overhead sweeps need Ray and MLflow, as the sweep step does: without that step, no such sweeps.
    # With --smoke: seconds, tiny data (the sweep step ran Ray already).
    if args.smoke or "sweep" not in args.steps:
        bench = [c for c in bench if c != "--sweep-overhead"]
    if args.smoke:
        bench += ["--quick", "--device", "cpu", "--models", "mlp1x512"]
    steps = [{"name": "cuda-tests", "cmd": tests}, {"name": "sweep", "cmd": sweep, "file": sweep_file},
             {"name": "bench", "cmd": bench, "json": tmp / "bench.json"}]
    return [s for s in steps if s["name"] in args.steps]


def write_sweep(path: Path, dataset: str, smoke: bool) -> None:
    path.write_text(SWEEP.format(dataset=dataset, subset=200 if smoke else 2000, epochs=2 if smoke else 4,
                                 device="cpu" if smoke else "cuda", gpu=0 if smoke else 0.25))


def run_step(step: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one step in its own process group, so that a step over its time takes its Ray processes along."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(step["cmd"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 124
    log.seek(0)
    out = log.read()
    log.close()
    if rc == 124:
        out += f"\n[gpu-check: killed after {timeout:.0f} s, its share of the budget]"
    seconds = time.perf_counter() - t0
    return {"name": step["name"], "cmd": [str(c) for c in step["cmd"]], "rc": rc, "ok": rc == 0,
            "seconds": round(seconds, 1), "timeout_s": round(timeout, 1), "tail": out[-4000:]}


def sweep_runs(tracking_uri: str) -> list[dict[str, Any]]:
    """The sweep's trial runs: status, device and pack size, read back from its MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("gpu-check")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.`rgsweep.kind` = 'trial'")
    return [{"name": r.info.run_name, "status": r.info.status, "device": r.data.tags.get("rgsweep.device"),
             "pack_size": r.data.metrics.get("pack_size"), "final_test_acc": r.data.metrics.get("final_test_acc")}
            for r in runs]


def check_sweep(result: dict[str, Any], runs: list[dict[str, Any]], smoke: bool) -> None:
    """The sweep step passes only if all 6 trials FINISHED on the expected device, some of them packed."""
    want = "cpu" if smoke else "cuda"
    problems = []
    if len(runs) != 6 or any(r["status"] != "FINISHED" for r in runs):
        problems.append(f"{sum(r['status'] == 'FINISHED' for r in runs)} of 6 trials FINISHED")
    if any(not str(r["device"]).startswith(want) for r in runs):
        problems.append(f"devices {sorted({str(r['device']) for r in runs})}, expected {want}")
    if not smoke and not any((r["pack_size"] or 1) > 1 for r in runs):
        problems.append("no trial was packed")
    result["runs"] = runs
    if problems:
        result.update(ok=False, problems=problems)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="image folder with train/ and test/ (default: synthetic PNGs)")
    p.add_argument("--plan", action="store_true", help="print the steps and their commands; run nothing")
    p.add_argument("--smoke", action="store_true", help="tiny steps on any device (CPU too): checks the script")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all steps (default {BUDGET_S}; {SMOKE_BUDGET_S} with --smoke on a CPU)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu-check-<date>-<device>.json)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated steps to run (default all: {','.join(STEPS)}); cuda-tests,bench needs "
                        "neither Ray nor MLflow (README, GPU check: on a machine that lacks them)")
    args = p.parse_args(argv)
    args.steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    unknown = [x for x in args.steps if x not in STEPS]
    if unknown or not args.steps:
        print(f"gpu-check: error: --steps {','.join(args.steps) or '(none)'}: allowed steps are "
              f"{', '.join(STEPS)}", file=sys.stderr)
        return 2
    args.budget = args.budget or (SMOKE_BUDGET_S if args.smoke else BUDGET_S)
    if args.data and not (Path(args.data) / "train").is_dir():
        print(f"gpu-check: error: no image folder at {args.data} (expected {args.data}/train and /test); "
              f"omit --data for synthetic images", file=sys.stderr)
        return 2
    reason = None if args.plan or args.smoke else cuda_line()
    if reason:
        print(f"gpu-check: error: {reason}; run it on a CUDA machine (--plan shows the steps)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rgsweep-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        return run_all(args, tmp)


def prepare_data(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    """(dataset for the sweep, --data for bench): the given folder, else synthetic PNGs written here."""
    if args.data:
        root = str(Path(args.data).resolve())
        return f"imagefolder:{root}", root
    if args.plan:
        return f"imagefolder:{tmp / 'data'}", "synthetic"
    from benchmarks.bench import write_synthetic_folder

    root = write_synthetic_folder(tmp / "data", 512 if args.smoke else 4000, 256 if args.smoke else 1000)
    os.environ["RGSWEEP_CACHE"] = str(tmp / "cache")  # temp decodes stay out of the user's cache
    return f"imagefolder:{root}", str(root)


def run_all(args: argparse.Namespace, tmp: Path) -> int:
    start = time.perf_counter()
    dataset, bench_data = prepare_data(args, tmp)
    steps = plan(args, bench_data, tmp)
    if args.plan:
        for s in steps:
            print(f"{s['name']}: {' '.join(str(c) for c in s['cmd'])}")
        if "sweep" in args.steps:
            print(f"sweep file: {SWEEP.format(dataset=dataset, subset=2000, epochs=4, device='cuda', gpu=0.25)}")
        return 0
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": name,
                              "torch": torch.__version__, "cuda": torch.version.cuda, "data": dataset,
                              "smoke": args.smoke, "budget_s": args.budget, "steps_asked": args.steps, "steps": []}
    for s in steps:
        if s["name"] == "sweep":
            write_sweep(s["file"], dataset, args.smoke)
    for s in steps:
        left = args.budget - (time.perf_counter() - start)
        if left < 10:
            result["steps"].append({"name": s["name"], "ok": False, "rc": None, "skipped": "budget spent"})
            continue
        r = run_step(s, left * SHARES[s["name"]])
        if s["name"] == "sweep" and r["ok"]:
            check_sweep(r, sweep_runs(f"sqlite:///{tmp / 'mlflow.db'}"), args.smoke)
        if s["name"] == "bench" and s["json"].is_file():
            r["bench"] = json.loads(s["json"].read_text())
        result["steps"].append(r)
        print(f"{s['name']:<10} {'ok' if r['ok'] else 'FAILED'} in {r['seconds']:.0f} s (rc {r['rc']})"
              + ("".join(f"; {x}" for x in r.get("problems", []))), flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    ok = all(r["ok"] for r in result["steps"])
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out = Path(args.out) if args.out else RESULTS / f"gpu-check-{dt.date.today()}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"gpu-check: {'passed' if ok else 'FAILED'} in {result['seconds']:.0f} s; saved {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
