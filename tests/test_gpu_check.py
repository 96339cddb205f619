"""`make gpu-check` (benchmarks/gpu_check.py): its plan, its refusals, and its steps at tiny scale on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def gpu_check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


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


@pytest.mark.slow
def test_smoke_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = gpu_check("--smoke", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [s["name"] for s in result["steps"]] == ["cuda-tests", "sweep", "bench"]
    assert all(s["ok"] for s in result["steps"])
    runs = result["steps"][1]["runs"]
    assert len(runs) == 6 and {r["status"] for r in runs} == {"FINISHED"} and {r["device"] for r in runs} == {"cpu"}
    assert max(r["pack_size"] for r in runs) == 3  # the sweep's `pack: 3` packed its MLP trials
    assert result["steps"][2]["bench"]["packing"]
