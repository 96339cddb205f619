"""The training loop on tiny real data: metrics, stop rules, divergence, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from rgsweep.config import make_config
from rgsweep.data.sources import load_dataset
from rgsweep.train import DivergedError, eval_batch_size, evaluate, prepare_data, train

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "lr", "epoch_time_s", "steps"}


def run(**kw):
    base = {"dataset": "synthetic", "arch": "mlp1x512", "epochs": 5, "lr": 0.05, "device": "cpu",
            "preprocess": "standard"}
    cfg = make_config({**base, **kw})
    reports: list[dict] = []
    summary = train(cfg, reports.append)
    return cfg, summary, reports


def test_clean_synthetic_fits_and_stops_at_threshold():
    cfg, summary, reports = run(epochs=60, fit_threshold=0.99)
    assert summary["fitted"] is True
    assert summary["stop_reason"] == "fitted"
    assert summary["epochs_to_fit"] == len(reports) == summary["epochs_run"] < 60
    assert reports[-1]["train_acc"] >= 0.99
    steps_per_epoch = math.ceil(600 / cfg.batch_size)
    assert summary["steps_to_fit"] == summary["epochs_to_fit"] * steps_per_epoch
    assert summary["final_test_acc"] > 0.8  # learnable data generalises
    for i, m in enumerate(reports, start=1):
        assert EPOCH_KEYS <= set(m)
        assert m["epoch"] == i
        assert m["gen_gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
        assert "train_acc_noisy" not in m  # no label changed
        assert m["train_acc_clean"] == pytest.approx(m["train_acc"])
    assert summary["samples_per_s"] > 0


def test_lr_schedule_exponential_decays_per_epoch():
    _, _, reports = run(epochs=4, fit_threshold=None, lr=0.1, lr_decay=0.5)
    assert [r["lr"] for r in reports] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_no_fit_threshold_runs_all_epochs():
    _, summary, reports = run(epochs=7, fit_threshold=None)
    assert len(reports) == 7 and summary["stop_reason"] == "max_epochs"
    assert summary["epochs_to_fit"] is None and summary["fitted"] is False


def test_early_stopping_on_validation_split():
    # lr so small nothing improves after the first epochs: patience 2 must stop long before 50.
    _, summary, reports = run(epochs=50, fit_threshold=None, lr=1e-7, val_fraction=0.2, early_stopping=2)
    assert summary["stop_reason"] == "early_stopping"
    assert len(reports) < 10
    assert {"val_acc", "val_loss"} <= set(reports[0])


def test_train_acc_noisy_is_accuracy_on_the_relabelled_subset(monkeypatch):
    """Recompute train_acc_noisy and train_acc_clean each epoch from the model itself: its predictions
    on the training images, against the labels trained on, over the images whose label was redrawn to
    another class (noisy) and the rest (clean); the subsets come from the dataset's original labels."""
    import rgsweep.train as train_module

    cfg = make_config({"dataset": "synthetic", "label_noise": 0.5, "arch": "mlp1x512", "epochs": 4, "lr": 0.05,
                       "device": "cpu", "fit_threshold": None, "preprocess": "standard"})
    data = prepare_data(cfg, torch.device("cpu"))
    original = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.subset).y_train
    changed = data.y_train.cpu() != original
    assert 0.35 < changed.float().mean() < 0.55  # ~0.9p of labels change

    models = []
    real_build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a, **k: models.append(real_build(*a, **k)) or models[-1])
    seen: list[tuple[dict, float, float, float]] = []

    def report(m):  # called after the epoch's evaluation, before the next epoch trains
        with torch.inference_mode():
            pred = models[0](data.x_train).argmax(1).cpu()
        hit = pred == data.y_train.cpu()
        seen.append((m, hit[changed].float().mean().item(), hit[~changed].float().mean().item(),
                     (pred[changed] == original[changed]).float().mean().item()))

    train(cfg, report, data=data)
    assert len(seen) == 4
    for m, noisy, clean, _ in seen:
        assert m["train_acc_noisy"] == pytest.approx(noisy, abs=1e-6)
        assert m["train_acc_clean"] == pytest.approx(clean, abs=1e-6)
    # The noisy accuracy is against the new labels, not the original ones, and memorisation shows in it.
    assert any(abs(noisy - vs_original) > 0.05 for _, noisy, _, vs_original in seen)
    assert seen[-1][1] > seen[0][1]


def test_same_seed_same_metrics_different_seed_differs():
    _, _, a = run(epochs=2, fit_threshold=None, seed=3, augment=["padcrop", "flip"], arch="cnn")
    _, _, b = run(epochs=2, fit_threshold=None, seed=3, augment=["padcrop", "flip"], arch="cnn")
    _, _, c = run(epochs=2, fit_threshold=None, seed=4, augment=["padcrop", "flip"], arch="cnn")
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-5)
    assert a[-1]["train_loss"] != pytest.approx(c[-1]["train_loss"], rel=1e-6)


def test_nan_loss_raises_diverged_after_reporting_the_epoch():
    with pytest.raises(DivergedError) as e:
        run(arch="mlp3x512", epochs=20, lr=10.0, momentum=0.99, preprocess="none", fit_threshold=None)
    assert e.value.summary["stop_reason"] == "diverged"
    assert "not finite" in str(e.value)


def test_report_may_stop_the_trial():
    class Stop(Exception):
        pass

    def report(m):
        if m["epoch"] == 2:
            raise Stop

    cfg = make_config({"dataset": "synthetic", "epochs": 10, "device": "cpu"})
    with pytest.raises(Stop):
        train(cfg, report)


@pytest.mark.parametrize("arch", ["alexnet", "inception", "resnet18", "wrn28-1", "cnn", "mlp3x512"])
def test_every_model_trains_one_epoch_with_augmentation(arch):
    _, summary, reports = run(arch=arch, epochs=1, fit_threshold=None, batch_size=64,
                              augment=["padcrop", "flip", "erase", "jitter"], preprocess="paper")
    assert len(reports) == 1 and math.isfinite(reports[0]["train_loss"])
    assert summary["num_params"] > 0


# -- the test-set evaluation schedule (eval_every) -------------------------------------------------------
TRAIN_KEYS = ("train_loss", "train_acc", "train_acc_clean", "lr", "steps")


def test_eval_every_evaluates_the_test_set_on_schedule_and_at_the_last_epoch():
    _, s1, r1 = run(epochs=7, fit_threshold=None, seed=2)
    _, s3, r3 = run(epochs=7, fit_threshold=None, seed=2, eval_every=3)
    assert [m["epoch"] for m in r3 if "test_acc" in m] == [3, 6, 7]
    assert all(("test_loss" in m) == ("gen_gap" in m) == ("test_acc" in m) for m in r3)
    for a, b in zip(r1, r3):  # the schedule changes what is measured, never the training
        assert [b[k] for k in TRAIN_KEYS] == [a[k] for k in TRAIN_KEYS]
        if "test_acc" in b:
            assert (b["test_acc"], b["test_loss"], b["gen_gap"]) == (a["test_acc"], a["test_loss"], a["gen_gap"])
    for key in ("final_train_acc", "final_test_acc", "final_gen_gap", "final_train_loss", "epochs_run"):
        assert s3[key] == s1[key], key
    assert s3["best_test_acc"] == max(m["test_acc"] for m in r3 if "test_acc" in m)


class _Lookup(torch.nn.Module):
    """Each row's logits are a fixed table row picked by the row's first value: the same bits whatever the
    batch, so the test below sees only how `evaluate` reduces."""

    def __init__(self, n: int, classes: int):
        super().__init__()
        self.table = torch.randn(n, classes, generator=torch.Generator().manual_seed(0)) * 3

    def forward(self, x):
        return self.table[x[:, 0].long()]


def test_evaluation_is_the_same_at_every_batch_size():
    n = 1000
    model, x = _Lookup(n, 10), torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    results = [evaluate(model, x, y, bs, torch.device("cpu")) for bs in (1, 7, 128, 512, n)]
    for loss, correct in results[1:]:  # bit-equal: summing per-batch sums would round differently per size
        assert loss.item() == results[0][0].item() and torch.equal(correct, results[0][1])
    assert math.isclose(results[0][0].item(), torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item(),
                        rel_tol=1e-6)


def test_cpu_evaluation_batch_is_128_for_convnets_and_512_for_mlps():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert eval_batch_size(make_config({"arch": "alexnet"}), cpu) == 128
    assert eval_batch_size(make_config({"arch": "mlp1x512"}), cpu) == 512
    assert eval_batch_size(make_config({"arch": "mlp1x512"}), cuda) == 2048
    assert eval_batch_size(make_config({"arch": "cnn", "eval_batch_size": 64}), cpu) == 64


@pytest.mark.parametrize("n_train,n_test,every", [
    (1000, 10000, 100),  # paper-cpu on CIFAR-10: 1,000 training images, the 10,000-image test split
    (1000, 2000, 20),  # paper-cpu on cifar10-mini
    (50000, 10000, 2),  # the paper's scale
    (601, 600, 10), (600, 200, 4), (2000, 100, 1), (10, 1, 1),
])
def test_auto_schedule_is_the_smallest_interval_keeping_the_test_set_under_a_tenth(n_train, n_test, every):
    from rgsweep.train import test_every

    assert test_every(make_config({"eval_every": "auto"}), n_train, n_test) == every
    assert n_test / every <= n_train / 10  # test images per epoch: at most a tenth of the training set
    assert every == 1 or n_test / (every - 1) > n_train / 10  # and no smaller interval would do
    assert test_every(make_config({"eval_every": 7}), n_train, n_test) == 7  # a number is taken as given


def test_auto_schedule_trains_and_reports_as_the_interval_it_resolves_to():
    _, sa, ra = run(epochs=9, fit_threshold=None, seed=2, eval_every="auto")  # 600 train, 200 test: every 4th
    _, s4, r4 = run(epochs=9, fit_threshold=None, seed=2, eval_every=4)
    assert sa["test_every"] == s4["test_every"] == 4
    assert [m["epoch"] for m in ra if "test_acc" in m] == [4, 8, 9]
    assert [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in ra] == \
        [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in r4]


def test_a_run_that_fits_between_test_evaluations_ends_on_the_full_test_set(monkeypatch):
    import rgsweep.train as train_module

    _, s1, r1 = run(epochs=60, fit_threshold=0.99)
    syncs = []
    read = train_module.read_host
    monkeypatch.setattr(train_module, "read_host", lambda values: syncs.append(list(values)) or read(values))
    _, s, r = run(epochs=60, fit_threshold=0.99, eval_every=1000)
    assert s["fitted"] and s["stop_reason"] == "fitted" and len(r) == len(r1) < 60
    assert "test_acc" in r[-1] and not any("test_acc" in m for m in r[:-1])
    assert (s["final_test_acc"], s["final_gen_gap"]) == (s1["final_test_acc"], s1["final_gen_gap"])
    assert r[-1]["test_acc"] == r1[-1]["test_acc"]
    # One host sync per epoch, and one more for the fitted epoch's test set.
    assert len(syncs) == len(r) + 1 and syncs[-1] == ["test_loss", "test_acc"]
