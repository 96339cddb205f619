"""How long the command line takes to answer when it has nothing to run: `--help`, bad input, `--dry-run`.

Each command runs as a user runs it (the `rgsweep` script beside this interpreter, a fresh process, from a
temp folder) and is timed wall-clock, best of `--repeats`. The reference, measured in the same run, is a
fresh interpreter importing torch and MLflow: what every one of these commands paid before rgsweep's
command line, config and sweep-file modules stopped importing them (benchmarks/README.md, "Command-line
latency"). The ratio is command / reference: well under 1 means the answer comes before those imports.

    python -m benchmarks.cli_latency              # best of 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RGSWEEP = str(Path(sys.executable).with_name("rgsweep"))


def commands(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (command, the exit code it must give)."""
    bad = tmp / "bad.yaml"
    bad.write_text("name: bad\nbase: {arch: nosuch}\n")
    bad_tune = tmp / "bad-tune.yaml"
    bad_tune.write_text("name: bad\nbase: {arch: mlp1x512}\nspace: {lr: {type: float, low: 1, high: 0.1}}\n")
    return {
        "reference: import torch, mlflow": ([sys.executable, "-c", "import torch, mlflow"], 0),
        "rgsweep --help": ([RGSWEEP, "--help"], 0),
        "rgsweep sweep BAD": ([RGSWEEP, "sweep", str(bad)], 2),
        "rgsweep sweep demo --dry-run": ([RGSWEEP, "sweep", str(REPO / "sweeps" / "demo.yaml"), "--dry-run"], 0),
        "rgsweep sweep label-noise --dry-run --pack 4": (
            [RGSWEEP, "sweep", str(REPO / "sweeps" / "label-noise.yaml"), "--dry-run", "--pack", "4"], 0),
        "rgsweep tune BAD": ([RGSWEEP, "tune", str(bad_tune)], 2),
        "rgsweep tune tune-demo --dry-run": ([RGSWEEP, "tune", str(REPO / "sweeps" / "tune-demo.yaml"), "--dry-run"],
                                             0),
        "rgsweep train --arch nosuch": ([RGSWEEP, "train", "--arch", "nosuch"], 2),
    }


def measure(repeats: int = 3) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, (cmd, code) in commands(tmp).items():
            best, got = float("inf"), None
            for _ in range(repeats):
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=120)
                best, got = min(best, time.perf_counter() - t0), done.returncode
                if got != code:  # a time for a command that did something else would mean nothing
                    raise RuntimeError(f"{name}: exit {got}, expected {code}: {done.stderr[-500:]}")
            out[name] = {"seconds": best, "exit_code": got}
    ref = out["reference: import torch, mlflow"]["seconds"]
    for r in out.values():
        r["ratio_to_reference"] = r["seconds"] / ref
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = measure(args.repeats)
    print(f"{'command':<46}{'seconds':>9}{'/ reference':>13}")
    for name, r in result.items():
        print(f"{name:<46}{r['seconds']:>9.2f}{r['ratio_to_reference']:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
