"""The data figure is drawn from the trials' own tensors (real digits data, real prepare_data and Augment)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from datafiles import write_image_folder

from rgsweep.analysis import samples
from rgsweep.analysis.export import parse_param
from rgsweep.cli import main
from rgsweep.config import make_config
from rgsweep.data.corruption import corrupt
from rgsweep.data.preprocess import whiten
from rgsweep.train import prepare_data

BASE = {"dataset": "digits", "preprocess": "paper", "device": "cpu", "corruption_seed": 3}
CONDITIONS = [{}, {"label_noise": 0.2}, {"label_noise": 0.4}, {"label_noise": 1.0},
              {"corruption": "shuffled_pixels"}, {"corruption": "random_pixels"}, {"corruption": "gaussian"},
              {"augment": ["flip"], "seed": 5}]


@pytest.fixture(scope="module")
def configs():
    # As a sweep's grid gives them: two architectures per condition (same data, so one row each).
    return [make_config({**BASE, **c, "arch": arch}) for c in CONDITIONS for arch in ("mlp1x512", "cnn")]


@pytest.fixture(scope="module")
def rows(configs):
    return samples.sample_rows(configs)


def _sweep_permutation(config) -> torch.Tensor:
    """The shuffled-pixel permutation of this config, read back through `corrupt` on an image whose pixel
    values are their own positions (digits are 8x8: 64 positions fit in uint8)."""
    pos = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    y = torch.zeros(1, dtype=torch.long)
    out = corrupt(pos, y, pos, y, 10, corruption="shuffled_pixels", seed=config.corruption_seed)
    return (out.x_train * 255).round().long().flatten()


def test_one_row_per_condition_with_the_median_noise_level(rows):
    titles = [r.title.split(";")[0] for r in rows]
    assert titles == ["clean", "label noise 0.4 (changed labels in red, old→new)", "shuffled pixels",
                      "random pixels", "gaussian", "augment flip (one draw, seed 5)"]
    assert [int(r.original[i]) for r in rows[:1] for i in range(10)] == list(range(10))  # one image per class


def test_rows_are_the_trials_training_tensors(rows):
    for row in rows:
        if row.config.augment:
            continue
        data = prepare_data(row.config, torch.device("cpu"))
        assert torch.equal(row.images, data.x_train[row.index]), row.title
        assert torch.equal(row.labels, data.y_train[row.index]) and torch.equal(row.noisy, data.noisy[row.index])


def test_shuffled_pixels_are_the_clean_images_under_the_sweeps_permutation(rows):
    clean, shuffled = rows[0], next(r for r in rows if r.config.corruption == "shuffled_pixels")
    assert torch.equal(clean.index, shuffled.index)
    perm = _sweep_permutation(shuffled.config)
    assert sorted(perm.tolist()) == list(range(64)) and not torch.equal(perm, torch.arange(64))
    moved = clean.images.flatten(2)[:, :, perm].view_as(clean.images)
    # Per-image whitening does not care where a pixel is: only float rounding differs.
    torch.testing.assert_close(shuffled.images, moved, rtol=0, atol=1e-5)
    random = next(r for r in rows if r.config.corruption == "random_pixels")
    assert not torch.allclose(random.images, moved, atol=1e-3)  # each image has its own permutation


def test_noisy_marks_are_the_trials_noisy_mask(rows):
    noisy = next(r for r in rows if r.config.label_noise > 0)
    assert noisy.noisy.any() and not noisy.noisy.all()  # this seed changes some of the ten shown
    assert torch.equal(noisy.noisy, noisy.labels != noisy.original)
    assert torch.equal(noisy.original, rows[0].labels)
    assert 0.3 < noisy.changed < 0.4  # about (1 - 1/10) * 0.4 of the whole training set


def test_augmented_row_is_the_augment_module_on_the_trials_images(rows):
    clean, flipped = rows[0], rows[-1]
    mirror = clean.images.flip(3)
    same = [torch.equal(a, b) for a, b in zip(flipped.images, clean.images)]
    mirrored = [torch.equal(a, b) for a, b in zip(flipped.images, mirror)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


def test_figure_shows_each_rows_images_rescaled_and_marks_the_changed_labels(rows):
    fig = samples.draw(rows)
    assert len(fig.axes) == len(rows)  # one strip per condition
    for ax, row in zip(fig.axes, rows):
        assert ax.get_title(loc="left") == row.title
        shown = [im.get_array() for im in ax.images]
        expected = samples.displayable(row.images)
        assert len(shown) == len(expected) == 10
        for got, want in zip(shown, expected):
            assert got.min() >= 0 and got.max() <= 1
            torch.testing.assert_close(torch.as_tensor(got.data), torch.as_tensor(want))
        assert [t.get_color() == "red" for t in ax.texts] == row.noisy.tolist()
        assert [t.get_text() for t in ax.texts] == [f"{int(o)}→{int(n)}" if c else str(int(n))
                                                    for o, n, c in zip(row.original, row.labels, row.noisy)]


def test_configs_come_back_from_an_export(configs):
    # What export.py makes of the params rgsweep logs (TrialConfig.flat_params), one column per key.
    flat = pd.DataFrame([c.flat_params() for c in configs])
    runs = pd.DataFrame({k: parse_param(flat[k], k) for k in flat.columns})
    back = samples.configs_from_runs(runs)
    fields = [k for k in samples.DATA_KEYS]
    assert [[getattr(c, k) for k in fields] for c in back] == [[getattr(c, k) for k in fields] for c in configs]
    broken = runs.assign(preprocess="standardize")
    fig = samples.figure_from_runs(broken)  # no valid config: a note, not an error
    assert "preprocess" in fig.axes[0].texts[0].get_text() and not fig.axes[0].has_data()


def test_show_writes_the_png_of_one_trial(tmp_path, capsys):
    out = tmp_path / "shuffled.png"
    assert main(["show", "--dataset", "digits", "--corruption", "shuffled_pixels", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 5000
    assert main(["show", "--dataset", f"imagefolder:{tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rgsweep show: error: ") and err.count("\n") == 1
    assert main(["show", "--corruption", "blur"]) == 2
    assert "allowed: none, shuffled_pixels" in capsys.readouterr().err


def test_the_papers_crop_row_is_whitened_windows_of_the_trials_full_size_images(tmp_path):
    write_image_folder(tmp_path / "imgs", n_train=4, size=(32, 32))  # larger than the 28x28 window
    config = make_config({"dataset": f"imagefolder:{tmp_path / 'imgs'}", "augment": ["crop"], "seed": 1})
    clean, cropped = samples.sample_rows([config])
    full = prepare_data(config, torch.device("cpu")).x_crop  # the full-size images its batches are cut from
    assert clean.images.shape[1:] == cropped.images.shape[1:] == (3, 28, 28) and full.shape[1:] == (3, 32, 32)
    offsets = []
    for img, i in zip(cropped.images, cropped.index):
        windows = {(dy, dx): whiten(full[i : i + 1, :, dy : dy + 28, dx : dx + 28])[0]
                   for dy in range(5) for dx in range(5)}
        found = [k for k, w in windows.items() if torch.allclose(w, img, atol=1e-5)]
        assert len(found) == 1, "each image is one whitened window of the trial's own full-size image"
        offsets += found
    assert len(set(offsets)) > 1  # random windows, not the centre every time
