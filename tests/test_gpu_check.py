"""`make gpu-check` (benchmarks/gpu_check.py): its plan, its refusals, and its steps at tiny scale on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def gpu_check(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})


# A GPU machine lent to this project has torch but not Ray, MLflow or Optuna, and Ray's wheel is over what
# one call may carry (README, "GPU check"). This makes them unimportable, in this process and its children.
BLOCKER = """\
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "optuna"):
            raise ModuleNotFoundError(f"No module named {name!r} (the test's stand-in for a machine without it)")
sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line():
    done = gpu_check()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--plan" in lines[0]


def test_a_missing_data_folder_exits_2_naming_it(tmp_path):
    done = gpu_check("--data", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and str(tmp_path / "nowhere") in done.stderr


def test_plan_lists_the_three_steps_and_the_sweep():
    done = gpu_check("--plan")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "cuda-tests:" in out and "-m cuda" in out
    assert "sweep:" in out and "pack: 3" in out and "gpu: 0.25" in out and "device: cuda" in out
    assert "bench:" in out and "--packing --sweep-overhead" in out


def test_steps_picks_steps_and_refuses_unknown_ones():
    done = gpu_check("--plan", "--steps", "cuda-tests,bench")
    assert done.returncode == 0, done.stderr
    names = [line.split(":")[0] for line in done.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["cuda-tests", "bench"] and "--sweep-overhead" not in done.stdout  # it needs Ray too
    done = gpu_check("--plan", "--steps", "cuda,bench")
    assert done.returncode == 2 and "allowed steps are cuda-tests, sweep, bench" in done.stderr


def test_every_cuda_test_lives_in_the_files_the_step_runs():
    # The step collects only CUDA_TEST_FILES; a test marked `cuda` anywhere else would never run there.
    from benchmarks.gpu_check import CUDA_TEST_FILES

    files = [f for f in (REPO / "tests").glob("test_*.py") if f.name != Path(__file__).name]  # this one names it
    marked = {f"tests/{f.name}" for f in files if "mark.cuda" in f.read_text()}
    assert marked == set(CUDA_TEST_FILES)


@pytest.mark.slow
def test_smoke_runs_the_cuda_tests_and_bench_without_ray_mlflow_or_optuna(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu-check.json"
    done = gpu_check("--smoke", "--steps", "cuda-tests,bench", "--out", str(out), timeout=600,
                     env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps_asked"] == ["cuda-tests", "bench"]
    assert [s["name"] for s in result["steps"]] == ["cuda-tests", "bench"] and all(s["ok"] for s in result["steps"])
    assert result["steps"][1]["bench"]["packing"]
    blocked = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert blocked.returncode == 1 and "stand-in" in blocked.stderr  # the stand-in did hold Ray back


@pytest.mark.slow
def test_smoke_sweep_step_packs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = gpu_check("--smoke", "--steps", "sweep", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [s["name"] for s in result["steps"]] == ["sweep"] and result["steps"][0]["ok"]
    runs = result["steps"][0]["runs"]
    assert len(runs) == 6 and {r["status"] for r in runs} == {"FINISHED"} and {r["device"] for r in runs} == {"cpu"}
    assert max(r["pack_size"] for r in runs) == 3  # the sweep's `pack: 3` packed its MLP trials
