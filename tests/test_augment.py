"""Preprocessing presets and batched augmentations: exact semantics on tiny real tensors."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from rgsweep.data.augment import Augment, homography, resample
from rgsweep.data.preprocess import PREPROCESS, preprocess
from rgsweep.names import AUGMENTATIONS, check_augmentations

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check runs it)")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def positive(*shape: int, seed: int = 0) -> torch.Tensor:
    """Values in [0.1, 1.1): never zero, so zero-filled pixels are recognisable."""
    return torch.rand(*shape, generator=gen(seed)) + 0.1


# -- preprocess ----------------------------------------------------------------------------------------


def test_paper_crops_centre_and_whitens_each_image():
    x = torch.rand(5, 3, 32, 32, generator=gen(0))
    tr, te = preprocess(x, x[:2] * 0.5, "paper")
    assert tr.shape == (5, 3, 28, 28) and te.shape == (2, 3, 28, 28)
    c = x[..., 2:30, 2:30]  # the centre 28x28
    mean = c.mean(dim=(1, 2, 3), keepdim=True)
    std = c.std(dim=(1, 2, 3), correction=0, keepdim=True)
    torch.testing.assert_close(tr, (c - mean) / std)
    torch.testing.assert_close(tr.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.std(dim=(1, 2, 3), correction=0), torch.ones(5))
    # The test split is whitened per image too: scaling an image by 0.5 does not change the result.
    torch.testing.assert_close(te, tr[:2])


def test_paper_leaves_small_images_uncropped_and_floors_the_std():
    x = torch.rand(4, 1, 8, 8, generator=gen(1))
    x[0] = 0.3  # constant image: std 0, the floor 1/sqrt(64) keeps it finite (all zeros)
    x[1] = 0.5 + 1e-4 * torch.randn(1, 8, 8, generator=gen(2))  # std below the floor 1/8
    tr, _ = preprocess(x, x, "paper")
    assert tr.shape == (4, 1, 8, 8)
    assert torch.isfinite(tr).all()
    torch.testing.assert_close(tr[0], torch.zeros(1, 8, 8), atol=1e-6, rtol=0)  # zeros up to float rounding
    torch.testing.assert_close(tr[1], (x[1] - x[1].mean()) * 8)  # divided by the floor, not the tiny std
    assert tr[2].std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_paper_crops_only_the_larger_side():
    tr, _ = preprocess(torch.rand(2, 3, 20, 32), torch.rand(1, 3, 20, 32), "paper")
    assert tr.shape == (2, 3, 20, 28)


def test_standard_uses_train_statistics_per_channel():
    x = torch.rand(64, 3, 8, 8, generator=gen(3)) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    x = x + torch.tensor([0.0, 3.0, -1.0]).view(1, 3, 1, 1)
    test = x[:8] * 2 + 1
    tr, te = preprocess(x, test, "standard")
    torch.testing.assert_close(tr.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=1e-5)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), correction=0, keepdim=True)
    torch.testing.assert_close(te, (test - mean) / std)  # the test split gets the train statistics


def test_standard_is_exact_on_large_splits_with_a_large_mean():
    # 2M values per channel: a naive float32 accumulation (e.g. linalg.vector_norm on CPU) is ~0.1% off.
    x = 10 + torch.rand(8192, 3, 16, 16, generator=gen(4))  # mean 35x the std
    tr, _ = preprocess(x, x[:1], "standard")
    std, mean = torch.std_mean(tr.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_none_unknown_and_uint8():
    x = torch.rand(2, 1, 8, 8)
    tr, te = preprocess(x, x, "none")
    assert tr is x and te is x
    with pytest.raises(ValueError, match="allowed: paper, standard, none"):
        preprocess(x, x, "zca")
    assert set(PREPROCESS) == {"paper", "standard", "none"}
    u = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(preprocess(u, u, "none")[0], torch.ones(1, 1, 4, 4))


# -- exact pixel moves ---------------------------------------------------------------------------------


def test_padcrop_is_an_integer_shift_with_zero_fill():
    x = positive(16, 3, 12, 12)
    out = Augment(["padcrop"])(x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (4, 4, 4, 4))
    found = set()
    for i in range(len(x)):
        hits = [(oy, ox) for oy in range(9) for ox in range(9)
                if torch.equal(out[i], padded[i, :, oy : oy + 12, ox : ox + 12])]
        assert len(hits) == 1, f"sample {i} is not a shifted copy of its input"
        found.add(hits[0])
    assert len(found) > 4  # each sample gets its own offset


def test_flip_is_per_sample_and_exact():
    x = positive(64, 3, 8, 8)
    out = Augment(["flip"])(x, gen(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert same.any() and flipped.any()


def test_erase_zeroes_one_rectangle_in_some_samples():
    h, w = 16, 20
    x = positive(64, 3, h, w)
    out = Augment(["erase"])(x, gen(0))
    changed = out != x
    assert (out[changed] == 0).all()
    assert (changed == changed[:, :1]).all()  # the same rectangle in every channel
    erased = changed.flatten(1).any(1)
    assert erased.any() and not erased.all()  # p = 0.5
    for i in torch.nonzero(erased).flatten().tolist():
        rows = torch.nonzero(changed[i, 0].any(1)).flatten()
        cols = torch.nonzero(changed[i, 0].any(0)).flatten()
        box = changed[i, 0, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and box.sum() == changed[i, 0].sum()  # a filled axis-aligned rectangle
        area = box.numel() / (h * w)
        assert 0.01 < area < 0.36 and len(rows) < h and len(cols) < w


# -- warps ---------------------------------------------------------------------------------------------


def test_resample_is_exact_for_identity_quarter_turns_and_integer_shifts():
    x = torch.rand(2, 3, 6, 6, generator=gen(5))
    eye = torch.eye(3).expand(2, 3, 3)
    torch.testing.assert_close(resample(x, eye), x)
    quarter = torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]).expand(2, 3, 3)
    torch.testing.assert_close(resample(x, quarter), torch.rot90(x, -1, (2, 3)))
    y = torch.rand(2, 1, 5, 8, generator=gen(6))  # non-square: a half turn is still a half turn
    half = torch.diag(torch.tensor([-1.0, -1, 1])).expand(2, 3, 3)
    torch.testing.assert_close(resample(y, half), y.flip(2, 3))
    # Sampling 3 px left and 2 px up of each output pixel moves the content right 3 and down 2.
    shift = torch.tensor([[1.0, 0, -3], [0, 1, -2], [0, 0, 1]]).expand(2, 3, 3)
    expected = torch.zeros_like(y)
    expected[..., 2:, 3:] = y[..., :-2, :-3]
    torch.testing.assert_close(resample(y, shift), expected)


def test_homography_maps_the_four_points():
    quad = torch.tensor([[-1.0, -1], [0.6, -1], [0.6, 0.6], [-1, 0.6]])
    frm = torch.rand(5, 4, 2, generator=gen(7)) * 0.4 + quad  # random convex quadrilaterals
    to = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]]).expand(5, 4, 2)
    m = homography(frm, to)
    p = torch.cat([frm, torch.ones(5, 4, 1)], -1) @ m.transpose(1, 2)
    torch.testing.assert_close(p[..., :2] / p[..., 2:], to, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["rotate", "affine", "perspective"])
def test_warps_are_random_and_reproducible(name, device):
    x = torch.rand(8, 3, 16, 16, generator=gen(8)).to(device)
    aug = Augment([name])
    a, b = aug(x, gen(1, device)), aug(x, gen(1, device))
    c = aug(x, gen(2, device))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a - x).abs().flatten(1).amax(1).min() > 0.05  # every sample is moved
    torch.manual_seed(3)
    d = aug(x)
    torch.manual_seed(3)
    assert torch.equal(d, aug(x))  # generator=None draws from the global RNG


def test_perspective_pulls_the_corners_in():
    x = positive(32, 1, 32, 32)
    out = Augment(["perspective"])(x, gen(0))
    corners = out[..., [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners < 0.1).float().mean() > 0.9  # corners now sample outside the image (zeros)
    torch.testing.assert_close(Augment(["perspective"], perspective_scale=0.0)(x, gen(0)), x)


# -- photometric ---------------------------------------------------------------------------------------


def test_jitter_is_scale_aware_on_one_channel():
    x = torch.randn(64, 1, 8, 8, generator=gen(9)) * 3 + 5
    out = Augment(["jitter"])(x, gen(0))
    assert out.shape == x.shape
    std, mean = torch.std_mean(x, dim=(1, 2, 3), correction=0)
    std2, mean2 = torch.std_mean(out, dim=(1, 2, 3), correction=0)
    shift = (mean2 - mean) / std  # brightness in units of the image's std
    assert shift.abs().max() <= 0.2 + 1e-4 and shift.abs().max() > 0.1
    ratio = std2 / std  # contrast
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.2 + 1e-4 and ratio.max() - ratio.min() > 0.2


def test_jitter_changes_saturation_of_rgb():
    x = torch.rand(32, 3, 8, 8, generator=gen(10))
    out = Augment(["jitter"], brightness=0.0, contrast=0.0)(x, gen(0))
    spread = lambda t: (t - t.mean(1, keepdim=True)).abs().mean(dim=(1, 2, 3))  # distance from gray
    ratio = spread(out) / spread(x)
    assert ratio.min() < 0.9 and ratio.max() > 1.1 and ratio.max() <= 1.2 + 1e-4


# -- the pipeline ----------------------------------------------------------------------------------------


def every_augmentation(crop: str) -> list[str]:
    """All augmentations with one of the two random crops (they cannot be combined)."""
    return [n for n in AUGMENTATIONS if n in (crop, "flip") or "crop" not in n]


@pytest.mark.parametrize("crop", ["crop", "padcrop"])
@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (16, 3, 32, 32)])
def test_all_augmentations_together(shape, crop):
    x = torch.rand(*shape, generator=gen(11))
    aug = Augment(every_augmentation(crop))
    out = aug(x, gen(0))
    side = min(shape[-1], 28) if crop == "crop" else shape[-1]  # the paper's crop: a 28x28 window
    assert out.shape == (*shape[:2], side, side) and out.dtype == x.dtype and torch.isfinite(out).all()
    assert torch.equal(out, aug(x, gen(0)))
    assert aug(x.bfloat16(), gen(0)).dtype == torch.bfloat16


def test_names_are_checked_and_empty_is_identity():
    allowed = "allowed: crop, padcrop, flip, erase, rotate, affine, jitter, perspective"
    with pytest.raises(ValueError, match=f"'blur'.*{allowed}"):
        Augment(["flip", "blur"])
    with pytest.raises(ValueError, match="'Crop'"):
        check_augmentations(["Crop"])
    check_augmentations([n for n in AUGMENTATIONS if n != "crop"])
    with pytest.raises(ValueError, match="two random crops"):
        check_augmentations(["crop", "padcrop"])
    x = torch.rand(2, 3, 8, 8)
    assert Augment([])(x) is x
    assert Augment(["erase", "crop", "jitter"]).names == ["crop", "jitter", "erase"]  # fixed order


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are only observable on CUDA")
def test_no_host_sync_on_cuda():
    x = torch.rand(256, 3, 32, 32, device="cuda")
    g = gen(0, "cuda")
    for aug in (Augment(every_augmentation("crop")), Augment(every_augmentation("padcrop"))):
        aug(x, g)
        torch.cuda.set_sync_debug_mode("error")
        try:
            aug(x, g)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_large_batch_is_fast():
    x = torch.rand(4096, 3, 32, 32, generator=gen(12))
    aug = Augment(every_augmentation("crop"))
    aug(x[:64], gen(0))  # warm-up
    t = time.perf_counter()
    out = aug(x, gen(0))
    seconds = time.perf_counter() - t
    print(f"all augmentations, 4096x3x32x32 on cpu: {seconds:.3f} s ({4096 / seconds:,.0f} images/s)")
    assert out.shape == (4096, 3, 28, 28)
    assert seconds < 10.0
    assert math.isfinite(out.sum().item())


def test_padcrop_and_flip_fused_equal_flip_of_padcrop():
    x = torch.randn(64, 3, 28, 28)
    aug = Augment(["padcrop", "flip"])
    fused = aug(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    separate = aug.flip(aug.padcrop(x, g), g)
    assert torch.equal(fused, separate)
    assert not torch.equal(fused, aug.padcrop(x, torch.Generator().manual_seed(1)))  # some samples flipped


def test_padcrop_by_nearest_sampling_equals_the_gather_path():
    # float32 crops go through a nearest-neighbour grid_sample, other dtypes through one gather on the
    # padded image; both must pick exactly the same pixels (odd and non-square sizes included).
    for shape in [(64, 3, 28, 28), (32, 1, 8, 8), (16, 2, 9, 13)]:
        x = torch.randint(-1000, 1000, shape).float()
        aug = Augment(["padcrop", "flip"])
        fast = aug(x, torch.Generator().manual_seed(3))
        gathered = aug(x.to(torch.int64), torch.Generator().manual_seed(3))
        assert fast.dtype == torch.float32
        assert torch.equal(fast, gathered.float())
