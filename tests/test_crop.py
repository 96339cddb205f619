"""The paper's random crop and the pixels a corruption permutes, on real tensors and real image files.

The crop (Zhang et al., Table 1): a random 28x28 window of the 32x32 image in training, the centre
window at evaluation, then per-image whitening. Pixel corruptions permute the pixels the model sees.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datafiles import write_image_folder

from rgsweep.config import make_config
from rgsweep.data.augment import Augment
from rgsweep.train import make_augment, prepare_data, train

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check runs it)")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def whiten_one(img: torch.Tensor) -> torch.Tensor:
    """TF per_image_standardization of one [C,H,W] image, written out."""
    std = max(img.std(correction=0).item(), 1 / math.sqrt(img.numel()))
    return (img - img.mean()) / std


def reference_crop(x: torch.Tensor, seed: int, flip: bool, size: int = 28, flip_p: float = 0.5) -> torch.Tensor:
    """The paper's crop the straightforward way: a loop over images, slicing, then whitening. It draws the
    same random numbers in the same order as `Augment` (row offsets, column offsets, then flips)."""
    g, dev = gen(seed, x.device.type), x.device
    b, _, h, w = x.shape
    dy = torch.randint(0, h - size + 1, (b,), generator=g, device=dev).tolist()
    dx = torch.randint(0, w - size + 1, (b,), generator=g, device=dev).tolist()
    flips = (torch.rand(b, generator=g, device=dev) < flip_p).tolist() if flip else [False] * b
    out = []
    for i in range(b):
        win = x[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size]
        out.append(whiten_one(win.flip(-1) if flips[i] else win))
    return torch.stack(out)


# -- the crop itself ---------------------------------------------------------------------------------


def test_window_positions_cover_every_offset_and_nothing_outside():
    # Pixel values encode their position, so each output window says where it was cut.
    b = 2000
    pos = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    x = torch.cat([pos, pos + 10_000, pos + 20_000], 1).expand(b, 3, 32, 32)
    out = Augment(["crop"]).window(x, gen(0))
    assert out.shape == (b, 3, 28, 28)
    corner = out[:, 0, 0, 0].long()
    dy, dx = corner // 32, corner % 32
    expected = torch.stack([x[i, :, y : y + 28, c : c + 28] for i, (y, c) in enumerate(zip(dy.tolist(), dx.tolist()))])
    assert torch.equal(out, expected)  # every sample is one whole 28x28 window of its image
    offsets = {(int(y), int(c)) for y, c in zip(dy, dx)}
    assert offsets == {(y, c) for y in range(5) for c in range(5)}  # every offset 0..4 reachable, none outside
    counts = torch.bincount(dy * 5 + dx, minlength=25)
    assert counts.min() > 40 and counts.max() < 130  # uniform: 80 expected per offset


def test_window_of_a_non_square_image_moves_only_along_the_larger_side():
    x = torch.arange(20 * 32, dtype=torch.float32).view(1, 1, 20, 32).expand(500, 1, 20, 32)
    out = Augment(["crop"]).window(x, gen(1))
    assert out.shape == (500, 1, 20, 28)
    assert set(out[:, 0, 0, 0].long().tolist()) == {0, 1, 2, 3, 4}  # row 0 always, columns 0..4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_equals_a_reference_loop_on_fixed_seeds(seed, flip, device):
    x = torch.rand(64, 3, 32, 32, generator=gen(100 + seed)).to(device)
    x[5] = 0.25  # a constant image: whitened to zeros by the std floor
    names = ["crop", "flip"] if flip else ["crop"]
    ours = Augment(names)(x, gen(seed, device))
    ref = reference_crop(x, seed, flip)
    assert ours.shape == (64, 3, 28, 28) and ours.device == x.device
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours[5].abs().max() < 1e-5


def test_crop_draws_per_sample_windows_and_is_reproducible():
    x = torch.rand(32, 3, 32, 32, generator=gen(3))
    a, b = Augment(["crop"])(x, gen(0)), Augment(["crop"])(x, gen(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, Augment(["crop"])(x, gen(1)))


# -- a trial's data: centre window at evaluation, full images for training ---------------------------


@pytest.fixture(scope="module")
def folder32(tmp_path_factory):
    """3 classes x 12 train / 4 test random 32x32 RGB images as PNG files (an image folder)."""
    root = tmp_path_factory.mktemp("img32")
    arrays = write_image_folder(root, n_train=12, n_test=4, size=(32, 32), seed=5)
    return root, arrays


def config(root, **kw):
    return make_config({"dataset": f"imagefolder:{root}", "arch": "mlp1x512", "device": "cpu",
                        "preprocess": "paper", "epochs": 1, **kw})


def test_evaluation_sees_the_centre_window_whitened_once(folder32):
    root, arrays = folder32
    data = prepare_data(config(root, augment=["crop", "flip"]), CPU)
    raw_train = torch.from_numpy(arrays["x_train"]).float() / 255
    raw_test = torch.from_numpy(arrays["x_test"]).float() / 255
    centre = lambda x: torch.stack([whiten_one(img[:, 2:30, 2:30]) for img in x])  # noqa: E731
    assert data.input_shape == (3, 28, 28)
    torch.testing.assert_close(data.x_train, centre(raw_train), rtol=1e-5, atol=1e-5)  # train_acc's inputs
    torch.testing.assert_close(data.x_test, centre(raw_test), rtol=1e-5, atol=1e-5)
    assert data.x_crop is not None and torch.equal(data.x_crop, raw_train)  # training windows come from here
    # Without the crop the trial has no full-size copy, and the evaluation inputs are the same.
    plain = prepare_data(config(root), CPU)
    assert plain.x_crop is None and torch.equal(plain.x_train, data.x_train)


def test_validation_split_is_evaluated_on_the_centre_window(folder32):
    root, _ = folder32
    data = prepare_data(config(root, augment=["crop"], val_fraction=0.25), CPU)
    assert data.x_val is not None and data.x_val.shape[1:] == (3, 28, 28)
    assert data.x_crop is not None and len(data.x_crop) == len(data.y_train) == 27


def test_training_with_the_crop_runs_and_is_reproducible(folder32):
    root, _ = folder32
    cfg = config(root, augment=["crop", "flip"], epochs=2, fit_threshold=None, batch_size=8, lr=0.01)
    runs = [[], [], []]
    train(cfg, runs[0].append)
    train(cfg, runs[1].append)
    train(cfg.model_copy(update={"seed": 1}), runs[2].append)
    assert [m["train_loss"] for m in runs[0]] == [m["train_loss"] for m in runs[1]]
    assert runs[0][-1]["train_loss"] != runs[2][-1]["train_loss"]


def test_crop_is_the_identity_on_images_not_larger_than_the_window():
    cfg = make_config({"dataset": "digits", "augment": ["crop", "flip"], "device": "cpu", "epochs": 1})
    data = prepare_data(cfg, CPU)
    assert data.x_crop is None and data.input_shape == (1, 8, 8)
    assert make_augment(cfg, data).names == ["flip"]  # the only 8x8 window of an 8x8 image is itself
    summary = train(cfg, data=data)
    assert math.isfinite(summary["final_train_loss"])


# -- config ----------------------------------------------------------------------------------------------


def test_crop_allowed_with_label_noise_gaussian_and_padcrop_anywhere():
    assert make_config({"augment": ["crop"], "label_noise": 1.0}).augment == ["crop"]
    assert make_config({"augment": ["crop"], "corruption": "gaussian"}).corruption == "gaussian"
    assert make_config({"augment": ["padcrop"], "preprocess": "standard",
                        "corruption": "shuffled_pixels"}).augment == ["padcrop"]


# -- pixel corruptions act on the pixels the model sees -------------------------------------------------


@pytest.fixture(scope="module")
def positions32(tmp_path_factory):
    """32x32 images whose red and green channels encode the pixel's row and column (blue is noise), so a
    pixel can be followed through a permutation and the per-image whitening (a positive affine map)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pos32")
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(32) * 8, np.arange(32) * 8, indexing="ij")
    raw = {}
    for split, n in (("train", 6), ("test", 3)):
        imgs = []
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = np.stack([rows, cols, rng.integers(0, 256, (32, 32))], -1).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
                imgs.append(img.transpose(2, 0, 1))
        raw[split] = torch.from_numpy(np.stack(imgs)).float() / 255
    return root, raw


def pixel_order(img: torch.Tensor) -> torch.Tensor:
    """Positions sorted by the (row, column) each pixel carries: equal for any positive affine map."""
    key = img[0].flatten() * 4096 + img[1].flatten()
    return torch.argsort(key)


@pytest.mark.parametrize("corruption", ["shuffled_pixels", "random_pixels"])
def test_pixel_corruptions_permute_exactly_the_seen_pixels(positions32, corruption):
    root, raw = positions32
    data = prepare_data(config(root, corruption=corruption, corruption_seed=3), CPU)
    perms = []
    for x, r in ((data.x_train, raw["train"]), (data.x_test, raw["test"])):
        assert x.shape[1:] == (3, 28, 28)
        for got, img in zip(x, r):
            seen = whiten_one(img[:, 2:30, 2:30])  # the centre window, unpermuted
            g, s = got.flatten(1), seen.flatten(1)
            # The same 784 pixels (all channels together), none of the 240 border pixels the model never sees.
            torch.testing.assert_close(g[:, pixel_order(got)], s[:, pixel_order(seen)], rtol=1e-5, atol=1e-5)
            moved = (g - s).abs().amax(0) > 1e-4
            assert moved.float().mean() > 0.9  # a permutation of the whole window, not of a part of it
            perms.append(pixel_order(got))
    same = [torch.equal(p, perms[0]) for p in perms[1:]]
    assert all(same) if corruption == "shuffled_pixels" else not any(same)  # one shared permutation, or per image


def test_without_the_paper_preset_the_whole_image_is_permuted(positions32):
    root, raw = positions32
    data = prepare_data(config(root, corruption="shuffled_pixels", preprocess="none"), CPU)
    assert data.x_train.shape[1:] == (3, 32, 32)
    got, img = data.x_train[0].flatten(1), raw["train"][0].flatten(1)
    torch.testing.assert_close(got[:, pixel_order(data.x_train[0])], img[:, pixel_order(raw["train"][0])])


def test_table_1_counts_only_the_papers_crop_as_crop():
    import pandas as pd

    from rgsweep.analysis.frames import regularizer_setting

    runs = pd.DataFrame({"augment": ["crop", "padcrop,flip", "flip,crop", ""], "weight_decay": [0, 0, 5e-4, 0]})
    assert regularizer_setting(runs).tolist() == ["crop only", "neither", "crop+wd", "neither"]
