"""Trial packing: K trials trained together give each the metrics train() gives it alone."""

from __future__ import annotations

import math

import pytest
import torch
from datafiles import write_image_folder

from rgsweep.config import make_config
from rgsweep.packed import train_packed
from rgsweep.packing import check_packable, expects_gpu, pack_groups, trial_device
from rgsweep.train import DivergedError, train

BASE = {"dataset": "synthetic", "epochs": 3, "device": "cpu", "preprocess": "standard", "fit_threshold": None}
TIMES = {"epoch_time_s"}


def configs(arch, trials, **kw):
    return [make_config({**BASE, "arch": arch, **kw, **t}) for t in trials]


def one_by_one(cfgs):
    out = []
    for c in cfgs:
        reports: list[dict] = []
        try:
            summary = train(c, reports.append)
        except DivergedError as e:
            summary = e
        out.append((summary, reports))
    return out


def packed(cfgs):
    reports: list[list[dict]] = [[] for _ in cfgs]
    results = train_packed(cfgs, [r.append for r in reports])
    return list(zip(results, reports))


def assert_same_curves(expected, got, loss_rtol, acc_atol):
    for (_, exp), (_, rep) in zip(expected, got):
        assert [m["epoch"] for m in rep] == [m["epoch"] for m in exp]
        for a, b in zip(exp, rep):
            assert set(a) == set(b)
            for key in set(a) - TIMES:
                if "loss" in key:
                    assert b[key] == pytest.approx(a[key], rel=loss_rtol, abs=1e-5), key
                else:
                    assert b[key] == pytest.approx(a[key], abs=acc_atol), key


SEEDS_AND_NOISE = [{"seed": 0, "label_noise": 0.0}, {"seed": 1, "label_noise": 0.5}, {"seed": 2, "label_noise": 1.0}]


def test_mlp_packed_matches_one_by_one_per_epoch():
    # Three label-noise levels share one input tensor; the shuffled-pixels trial has inputs of its own.
    trials = [*SEEDS_AND_NOISE, {"seed": 0, "corruption": "shuffled_pixels", "corruption_seed": 3}]
    cfgs = configs("mlp1x512", trials, lr=0.05)
    expected, got = one_by_one(cfgs), packed(cfgs)
    assert_same_curves(expected, got, loss_rtol=1e-4, acc_atol=1 / 600 + 1e-6)  # at most one sample flips
    assert expected[0][1][-1]["train_acc"] == 1.0  # the clean trial learns; random labels do not generalise
    assert expected[2][1][-1]["test_acc"] < 0.4
    for (s_exp, _), (s_got, _) in zip(expected, got):
        assert set(s_got) == set(s_exp) | {"pack_size"} and s_got["pack_size"] == 4
        assert s_got["samples_trained"] == s_exp["samples_trained"] and s_got["stop_reason"] == "max_epochs"


def test_convnet_with_augmentation_packed_matches_one_by_one():
    # AlexNet (no BatchNorm): each trial's own generator draws its batch order and crops/flips.
    cfgs = configs("alexnet", SEEDS_AND_NOISE, lr=0.01, augment=["padcrop", "flip"], epochs=2)
    assert_same_curves(one_by_one(cfgs), packed(cfgs), loss_rtol=1e-4, acc_atol=1 / 600 + 1e-6)


def test_batchnorm_running_statistics_are_per_trial():
    # The cnn's BatchNorm buffers are stacked and updated per trial by the vmapped forward; eval-mode
    # metrics use them. train() runs convnets channels_last, so float rounding differs a little more.
    cfgs = configs("cnn", SEEDS_AND_NOISE[:2], lr=0.002, epochs=2)
    assert_same_curves(one_by_one(cfgs), packed(cfgs), loss_rtol=1e-3, acc_atol=0.02)


def test_each_trial_keeps_its_own_stop_rules():
    trials = [
        {"seed": 0, "fit_threshold": 0.99},  # clean labels: fits in a few epochs, then stops
        {"seed": 0, "label_noise": 1.0, "fit_threshold": 0.99},  # random labels: runs to max epochs
        {"seed": 1, "epochs": 2},  # its own epoch budget
        {"seed": 2, "lr": 1e-7, "early_stopping": 1},  # nothing improves: stops early on val_acc
    ]
    cfgs = configs("mlp1x512", trials, lr=0.05, epochs=12, val_fraction=0.2)
    expected, got = one_by_one(cfgs), packed(cfgs)
    assert [s["stop_reason"] for s, _ in got] == ["fitted", "max_epochs", "max_epochs", "early_stopping"]
    for (s_exp, r_exp), (s_got, r_got) in zip(expected, got):
        assert len(r_got) == len(r_exp) == s_got["epochs_run"]
        assert s_got["stop_reason"] == s_exp["stop_reason"]
        assert s_got["epochs_to_fit"] == s_exp["epochs_to_fit"]
        assert s_got["steps_to_fit"] == s_exp["steps_to_fit"]
        assert {"val_acc", "val_loss"} <= set(r_got[-1])
    assert got[0][0]["epochs_to_fit"] < 12 and len(got[1][1]) == 12 and len(got[2][1]) == 2
    assert len(got[3][1]) < 12


def test_diverged_and_stopped_trials_end_alone():
    class Stop(Exception):
        pass

    def stop_at_2(m):
        if m["epoch"] == 2:
            raise Stop

    cfgs = configs("mlp3x512", [{"lr": 0.05}, {"lr": 10.0, "momentum": 0.99}, {"lr": 0.05, "seed": 1}],
                   epochs=8, preprocess="none")
    seen: list[list[dict]] = [[], [], []]
    results = train_packed(cfgs, [seen[0].append, seen[1].append, lambda m: (seen[2].append(m), stop_at_2(m))])
    healthy, diverged, stopped = results
    assert isinstance(diverged, DivergedError)
    assert diverged.summary["stop_reason"] == "diverged"
    assert not math.isfinite(seen[1][-1]["train_loss"]) and len(seen[1]) == diverged.epoch < 8
    assert isinstance(stopped, Stop) and len(seen[2]) == 2
    assert isinstance(healthy, dict) and healthy["epochs_run"] == 8 and len(seen[0]) == 8
    assert all(math.isfinite(m["train_loss"]) for m in seen[0])  # the NaN trial never leaked into it
    with pytest.raises(DivergedError):  # the same trial alone diverges too
        train(cfgs[1])


def test_incompatible_configs_are_refused_with_the_keys_that_differ():
    cfgs = [make_config({**BASE, "arch": "mlp1x512"}), make_config({**BASE, "arch": "cnn", "batch_size": 64})]
    with pytest.raises(ValueError, match="differ in arch, batch_size") as e:
        train_packed(cfgs)
    assert "seed" in str(e.value)  # says what may differ
    with pytest.raises(ValueError, match="dropout"):
        check_packable([make_config({**BASE, "dropout": 0.5})] * 2)
    with pytest.raises(ValueError, match="report callbacks"):
        train_packed(configs("mlp1x512", SEEDS_AND_NOISE), [None])


def test_pack_groups_packs_compatible_trials_only():
    a = configs("mlp1x512", [{"seed": s} for s in range(5)])
    b = configs("mlp1x512", [{"seed": 0, "batch_size": 64}])  # another shape of step: its own pack
    c = configs("mlp1x512", [{"seed": 0, "dropout": 0.5}, {"seed": 1, "dropout": 0.5}])  # never packed
    d = configs("alexnet", [{"seed": 0}, {"seed": 1}])  # CPU convnets: packing does not pay, so alone
    groups = pack_groups([*a, *b, *c, *d], size=2, gpu_share=0.0)
    assert sorted(groups) == [[0, 1], [2, 3], [4], [5], [6], [7], [8], [9]]
    with pytest.raises(ValueError):
        pack_groups(a, size=0, gpu_share=0.0)


def test_device_auto_is_the_device_ray_grants_and_convnets_pack_by_it():
    # `auto` follows the trial's GPU share, never the driver's own devices (rgsweep/packing.py): Ray leaves
    # CUDA_VISIBLE_DEVICES alone for a trial granted no GPU, so torch alone cannot tell.
    assert [trial_device("auto", g) for g in (0.0, 0.25, 1.0)] == ["cpu", "auto", "auto"]
    assert [trial_device(d, 0.25) for d in ("cpu", "cuda:1", "mps")] == ["cpu", "cuda:1", "mps"]
    assert trial_device("cuda", 0.0) == "cuda"  # explicit: kept (Ray does not count it)
    assert [expects_gpu("auto", 0.25), expects_gpu("auto", 0.0), expects_gpu("cuda:1", 0.0), expects_gpu("cpu", 1)] \
        == [True, False, True, False]
    auto = configs("alexnet", [{"seed": s} for s in range(3)], device="auto")
    assert pack_groups(auto, size=2, gpu_share=0.25) == [[0, 1], [2]]  # on GPUs: packed, even from a CPU-only head
    assert pack_groups(auto, size=2, gpu_share=0.0) == [[0], [1], [2]]  # on CPUs: alone, even on a GPU box
    cpu = configs("alexnet", [{"seed": s} for s in range(2)], device="cpu")
    assert pack_groups(cpu, size=2, gpu_share=0.25) == [[0], [1]]
    cuda = configs("alexnet", [{"seed": s} for s in range(2)], device="cuda")
    assert pack_groups(cuda, size=2, gpu_share=0.0) == [[0, 1]]
    mlps = configs("mlp1x512", [{"seed": s} for s in range(2)], device="auto")
    assert pack_groups(mlps, size=2, gpu_share=0.0) == [[0, 1]]  # MLPs pack on both


def test_trainables_train_on_the_device_ray_granted():
    from rgsweep.trials import granted_device

    cfg = make_config({**BASE, "device": "auto"})
    assert granted_device(cfg, {"CPU": 1.0}).device == "cpu"
    assert granted_device(cfg, {"CPU": 1.0, "GPU": 0.0}).device == "cpu"
    assert granted_device(cfg, {"CPU": 2.0, "GPU": 0.25}).device == "auto"  # CUDA where torch has it
    assert granted_device(make_config({**BASE, "device": "cpu"}), {"GPU": 1.0}).device == "cpu"
    assert granted_device(cfg, {"GPU": 0.25}).key() == cfg.key()  # the device is not part of the trial's key


def test_packed_linear_backward_under_autocast():
    # The stacked MLP layer's own backward under bf16 autocast (as on CUDA; CPU autocast here): gradients
    # come back in the parameters' dtype and agree with float32 within bf16 rounding.
    from rgsweep.packed import _PackedLinear

    torch.manual_seed(0)
    x = torch.randn(3, 16, 32)
    w = torch.randn(3, 8, 32, requires_grad=True)
    b = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _PackedLinear.apply(x, w, b)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    gw, gb = w.grad.clone(), b.grad.clone()
    assert gw.dtype == gb.dtype == torch.float32
    w.grad = b.grad = None
    _PackedLinear.apply(x, w, b).square().sum().backward()
    torch.testing.assert_close(gw, w.grad, rtol=0.05, atol=0.5)
    torch.testing.assert_close(gb, b.grad, rtol=0.05, atol=0.5)


def test_mlp_packed_with_per_trial_momentum_and_weight_decay_matches_one_by_one():
    # Momenta that differ take the broadcast path of the stacked SGD; equal ones scale by a number.
    for trials in ([{"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 1e-3}, {"momentum": 0.0}],
                   [{"momentum": 0.8, "seed": s, "weight_decay": 5e-4} for s in range(3)]):
        cfgs = configs("mlp1x512", trials, lr=0.05, epochs=3)
        assert_same_curves(one_by_one(cfgs), packed(cfgs), loss_rtol=1e-4, acc_atol=1 / 600 + 1e-6)


def test_paper_crop_packed_matches_one_by_one(tmp_path):
    # 32x32 images: two trials train on random 28x28 windows of their own full-size images (one with noisy
    # labels), one on the centre window without a crop; all are evaluated on the centre window.
    write_image_folder(tmp_path, n_train=10, n_test=4, size=(32, 32))
    trials = [{"seed": 0, "augment": ["crop", "flip"]}, {"seed": 1, "augment": ["crop"], "label_noise": 0.5},
              {"seed": 2}]
    cfgs = configs("mlp1x512", trials, dataset=f"imagefolder:{tmp_path}", preprocess="paper", lr=0.01,
                   batch_size=8)
    expected, got = one_by_one(cfgs), packed(cfgs)
    assert_same_curves(expected, got, loss_rtol=1e-4, acc_atol=1 / 30 + 1e-6)
    assert expected[0][1][-1]["train_loss"] != expected[2][1][-1]["train_loss"]


def test_test_schedule_packed_matches_one_by_one():
    # eval_every 100: the clean trial fits between scheduled evaluations, while the other is still packed
    # with it (its last epoch gets the test set on its own); the random-label trial runs out of epochs
    # at 5 (scheduled: its last epoch).
    trials = [{"seed": 0, "fit_threshold": 0.99, "epochs": 60}, {"seed": 1, "label_noise": 1.0, "epochs": 5}]
    cfgs = configs("mlp1x512", trials, lr=0.05, eval_every=100)
    expected, got = one_by_one(cfgs), packed(cfgs)
    assert_same_curves(expected, got, loss_rtol=1e-4, acc_atol=1 / 600 + 1e-6)
    (fit, fit_reports), (rand, rand_reports) = got
    assert fit["stop_reason"] == "fitted" and fit["epochs_run"] < 5 and rand["epochs_run"] == 5
    for reports in (fit_reports, rand_reports):
        assert "test_acc" in reports[-1] and not any("test_acc" in m for m in reports[:-1])
    assert fit["final_test_acc"] == pytest.approx(expected[0][0]["final_test_acc"], abs=1 / 200 + 1e-6)


def test_auto_test_schedule_packed_matches_one_by_one():
    # "auto" resolves from the data sizes (600 training, 200 test images: every 4th epoch), packed or not.
    trials = [{"seed": 0, "eval_every": "auto"}, {"seed": 1, "eval_every": 2}]
    cfgs = configs("mlp1x512", trials, lr=0.05, epochs=5, fit_threshold=None)
    expected, got = one_by_one(cfgs), packed(cfgs)
    assert_same_curves(expected, got, loss_rtol=1e-4, acc_atol=1 / 600 + 1e-6)
    assert [s["test_every"] for s, _ in got] == [s["test_every"] for s, _ in expected] == [4, 2]
    assert [[m["epoch"] for m in reports if "test_acc" in m] for _, reports in got] == [[4, 5], [2, 4, 5]]
