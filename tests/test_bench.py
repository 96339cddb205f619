"""The benchmark end to end on tiny synthetic data, and the reference pipeline's preprocessing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgsweep.data.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench  # noqa: E402
from benchmarks.reference import transform  # noqa: E402


def test_quick_bench_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert bench.main(["--quick", "--models", "mlp1x512", "--samples", "256", "--packing", "--pack", "2",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "matmul peak:" in printed and bench.HEADER in printed and "trial packing" in printed
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["data"] == "synthetic" and result["peak_flops"] > 1e8
    rows = result["rows"]
    assert [(r["model"], r["augment"]) for r in rows] == [("mlp1x512", "none"), ("mlp1x512", "crop+flip")]
    for r in rows:
        assert r["samples"] == 256 and r["rgsweep"]["samples"] >= 255 and r["reference"]["samples"] == 256
        assert r["rgsweep_samples_per_s"] > 0 and r["reference_samples_per_s"] > 0
        assert r["ratio"] == r["rgsweep_samples_per_s"] / r["reference_samples_per_s"]
        # 2352-512-10 forward + weight gradients: 6 x 1.2M multiply-adds less the unneeded input gradient
        assert 4.5e6 < r["flops_per_sample"] < 7.5e6
        pct = 100 * r["flops_per_sample"] * r["rgsweep_samples_per_s"] / result["peak_flops"]
        assert abs(r["rgsweep_pct_peak"] - pct) < 1e-6 * pct
    aug = rows[1]  # the goals are stated with augmentation on; what 10x needs follows from the reference
    assert aug["goal_ratio"] == 10 and aug["goal_pct_peak"] == 80 and "goal_ratio" not in rows[0]
    assert abs(aug["pct_peak_needed_for_ratio_goal"] - 10 * aug["reference_pct_peak"]) < 1e-9
    assert "goals (augmentation on):" in printed
    packing = result["packing"]["rows"]
    assert [p["model"] for p in packing] == ["mlp1x512", "cnn"]
    for p in packing:
        assert p["k"] == 2 and p["sequential_s"] > 0 and p["packed_s"] > 0
        assert p["speedup"] == p["sequential_s"] / p["packed_s"]
        assert p["max_rel_diff_epoch1_train_loss"] < 1e-3  # packed and one-by-one agree
    assert packing[0]["max_abs_diff_final_test_acc"] < 0.01


def test_reference_preprocessing_matches_rgsweeps_paper_preset():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = transform(augment=False)(Image.fromarray(img))
    ours, _ = preprocess(torch.from_numpy(img).permute(2, 0, 1)[None], torch.zeros(1, 3, 32, 32), "paper")
    assert ref.shape == (3, 28, 28)
    torch.testing.assert_close(ref, ours[0], rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    augmented = [transform(augment=True)(Image.fromarray(img)) for _ in range(4)]
    assert all(a.shape == (3, 28, 28) for a in augmented)
    assert any(not torch.equal(a, ref) for a in augmented)  # random crops (zero padding) and flips


def test_bench_runs_as_a_script():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO.parent, timeout=120)
    assert done.returncode == 0 and "--packing" in done.stdout


def test_reference_standard_modules_compute_the_same_function():
    from benchmarks.reference import standard_modules
    from rgsweep.models import build_model

    torch.manual_seed(0)
    ours = build_model("alexnet", (3, 28, 28), 10).double()
    ref = standard_modules(build_model("alexnet", (3, 28, 28), 10).double())
    ref.load_state_dict(ours.state_dict())
    kinds = [type(m).__name__ for m in ref.features]
    assert kinds[:4] == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]
    assert type(ref.features[3]) is torch.nn.LocalResponseNorm  # torch's own module, not rgsweep's
    x = torch.randn(8, 3, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_sweep_overhead_measures_real_sweeps_and_logs_every_epoch(ray_session):
    # Real tiny sweeps (Ray Tune + a temp SQLite MLflow store): every trial finishes, the per-trial and
    # fixed costs come out of two sweep sizes, and the per-epoch runs log every epoch as its own step
    # whether epochs reach the driver one by one or batched.
    from benchmarks import sweep_overhead

    result = sweep_overhead.measure(sizes=(1, 2), epochs=1, long_epochs=12)
    assert [r["trials"] for r in result["sweeps"]] == [1, 2]
    for r in result["sweeps"] + result["per_epoch"]:
        assert r["exit_code"] == 0 and r["finished"] == r["trials"] == r["child_runs"]
        assert r["wall_s"] > r["sum_train_time_s"] > 0
    every, batched = result["per_epoch"]
    assert every["report_interval_s"] == 0 and batched["report_interval_s"] > 0
    assert every["epochs_logged"] == batched["epochs_logged"] == 2 * 12
    assert math.isfinite(result["marginal_overhead_per_trial_s"]) and result["ray_start_s"] >= 0


def test_cli_latency_runs_every_command_with_its_exit_code():
    # Each command as a user runs it, in a fresh process: --help and --dry-run exit 0, bad input exits 2
    # (measure() also refuses to time a command that exits otherwise). The speed is the benchmark's to print;
    # tests/test_walls.py keeps torch and MLflow out of these paths.
    from benchmarks import cli_latency

    result = cli_latency.measure(repeats=1)
    codes = {name: r["exit_code"] for name, r in result.items()}
    assert codes == {"reference: import torch, mlflow": 0, "rgsweep --help": 0, "rgsweep sweep BAD": 2,
                     "rgsweep sweep demo --dry-run": 0,
                     "rgsweep sweep label-noise --dry-run --pack 4": 0, "rgsweep tune BAD": 2,
                     "rgsweep tune tune-demo --dry-run": 0,
                     "rgsweep train --arch nosuch": 2}
    assert all(r["seconds"] > 0 and r["ratio_to_reference"] > 0 for r in result.values())
