"""The randomization tests of Zhang et al. (Section 2.1), checked against their definitions."""

from __future__ import annotations

import pytest
import torch

from rgsweep.data.corruption import CORRUPTIONS, corrupt, noisy_labels


def images(n: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 images whose channel 0 holds h*w distinct values (a fingerprint of each pixel position)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    x[:, 0] = torch.randperm(h * w, generator=g)[: h * w].view(h, w).to(torch.uint8)  # h*w <= 256
    return x


def labels(n: int, k: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def recover_perms(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per image, perm with after[..., j] = before[..., perm[j]], read off channel 0's distinct values."""
    b, a = before[:, 0].flatten(1).long(), (after[:, 0].flatten(1) * 255).round().long()
    where = torch.empty_like(b)
    where.scatter_(1, b, torch.arange(b.shape[1]).expand_as(b))  # value -> its position before
    return torch.gather(where, 1, a)


def apply_perm(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.flatten(2)[:, :, perm].view_as(x).float() / 255


def run(x_tr, x_te, **kw):
    return corrupt(x_tr, labels(len(x_tr)), x_te, labels(len(x_te), seed=2), 10, **kw)


# -- pixels ---------------------------------------------------------------------------------------


def test_none_only_rescales():
    x_tr, x_te = images(5), images(4, seed=3)
    c = run(x_tr, x_te)
    assert c.x_train.dtype == torch.float32
    assert torch.equal(c.x_train, x_tr.float() / 255) and torch.equal(c.x_test, x_te.float() / 255)


def test_shuffled_pixels_is_one_permutation_for_train_and_test():
    x_tr, x_te = images(20), images(10, seed=3)
    c = run(x_tr, x_te, corruption="shuffled_pixels", seed=7)
    perm = recover_perms(x_tr[:1], c.x_train[:1])[0]
    assert sorted(perm.tolist()) == list(range(256)) and not torch.equal(perm, torch.arange(256))
    # The same permutation maps every train and test image, all channels moving together.
    assert torch.equal(c.x_train, apply_perm(x_tr, perm))
    assert torch.equal(c.x_test, apply_perm(x_te, perm))


def test_random_pixels_differ_per_image():
    x_tr, x_te = images(30), images(30, seed=3)
    c = run(x_tr, x_te, corruption="random_pixels", seed=7)
    for before, after in ((x_tr, c.x_train), (x_te, c.x_test)):
        perms = recover_perms(before, after)
        assert torch.equal(perms.sort(1).values, torch.arange(256).expand(30, 256))  # valid permutations
        assert len({tuple(p.tolist()) for p in perms}) == 30  # all different
        for i in (0, 17):  # every channel follows its image's permutation
            assert torch.equal(after[i], apply_perm(before[i : i + 1], perms[i])[0])


@pytest.mark.parametrize("corruption", ["shuffled_pixels", "random_pixels"])
def test_shuffles_preserve_each_images_pixel_multiset(corruption):
    x_tr, x_te = images(8, h=9, w=7), images(8, h=9, w=7, seed=3)
    c = run(x_tr, x_te, corruption=corruption, pixel_fraction=0.6)
    for before, after in ((x_tr, c.x_train), (x_te, c.x_test)):
        assert not torch.equal(after, before.float() / 255)
        assert torch.equal(after.flatten(2).sort(2).values, before.float().div(255).flatten(2).sort(2).values)


def test_random_pixels_across_chunks():
    # More images than one chunk of permutations: still vectorised, valid and distinct.
    x = images(5000, c=1, h=4, w=4)
    c = run(x, x[:3], corruption="random_pixels")
    perms = recover_perms(x, c.x_train)
    assert torch.equal(perms.sort(1).values, torch.arange(16).expand(5000, 16))
    assert not torch.equal(perms[100], perms[4096 + 100])


def test_gaussian_matches_per_channel_train_statistics():
    g = torch.Generator().manual_seed(0)
    # Channels with very different statistics, so a pooled mean/std would fail the check.
    x_tr = torch.stack([torch.randint(lo, hi, (2000, 8, 8), generator=g) for lo, hi in
                        ((0, 60), (100, 256), (120, 140))], 1).to(torch.uint8)
    x_te = x_tr[:500].flip(0).contiguous()
    c = run(x_tr, x_te, corruption="gaussian", seed=3)
    ref = x_tr.float() / 255
    mean, std = ref.mean((0, 2, 3)), ref.std((0, 2, 3))
    for out in (c.x_train, c.x_test):
        assert torch.allclose(out.mean((0, 2, 3)), mean, atol=0.003)
        assert torch.allclose(out.std((0, 2, 3)), std, rtol=0.02)
        assert not torch.allclose(out, ref[: len(out)], atol=0.1)
    assert c.x_train.min() < 0  # not clipped: channel 0 has mean ~0.12 and std ~0.07
    assert torch.equal(c.y_train, labels(2000))  # labels kept


@pytest.mark.parametrize("corruption", ["shuffled_pixels", "random_pixels", "gaussian"])
def test_corrupt_fraction_touches_that_share_of_each_split(corruption):
    x_tr, x_te = images(400), images(200, seed=3)
    c = run(x_tr, x_te, corruption=corruption, corrupt_fraction=0.3)
    for before, after in ((x_tr, c.x_train), (x_te, c.x_test)):
        changed = (after != before.float() / 255).flatten(1).any(1)
        assert int(changed.sum()) == round(0.3 * len(before))


@pytest.mark.parametrize("corruption", ["shuffled_pixels", "random_pixels"])
def test_pixel_fraction_moves_only_that_share_of_positions(corruption):
    x_tr, x_te = images(200), images(50, seed=3)
    c = run(x_tr, x_te, corruption=corruption, pixel_fraction=0.25)
    k = round(0.25 * 256)
    for before, after in ((x_tr, c.x_train), (x_te, c.x_test)):
        moved = (recover_perms(before, after) != torch.arange(256)).sum(1).float()
        # A random permutation of k positions leaves about one of them in place.
        assert int(moved.max()) <= k and moved.mean() > k - 3
    if corruption == "shuffled_pixels":
        assert recover_perms(x_tr, c.x_train).unique(dim=0).shape[0] == 1  # one shared subset and permutation


def test_pixel_corruption_is_deterministic_by_seed():
    x_tr, x_te = images(10), images(5, seed=3)
    for corruption in ("shuffled_pixels", "random_pixels", "gaussian"):
        a = run(x_tr, x_te, corruption=corruption, seed=1)
        b = run(x_tr, x_te, corruption=corruption, seed=1)
        d = run(x_tr, x_te, corruption=corruption, seed=2)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
        assert not torch.equal(a.x_train, d.x_train)


# -- labels ---------------------------------------------------------------------------------------


def test_label_noise_changes_about_0_9p():
    y = labels(20_000)
    c = corrupt(images(20_000, c=1, h=2, w=2), y, images(3, c=1, h=2, w=2), labels(3), 10, label_noise=0.5)
    assert abs(c.noise_mask.float().mean() - 0.5) < 0.02
    assert abs(c.noisy.float().mean() - 0.45) < 0.02
    assert torch.equal(c.noisy, c.y_train != y)
    assert not (c.noisy & ~c.noise_mask).any()  # only redrawn labels can change
    assert torch.equal(c.y_train[~c.noise_mask], y[~c.noise_mask])


def test_random_labels_are_uniform_and_independent():
    y = labels(20_000)
    new, redrawn = noisy_labels(y, 10, 1.0, seed=4)
    assert bool(redrawn.all())
    counts = torch.bincount(new, minlength=10).float()
    assert (counts / 20_000 - 0.1).abs().max() < 0.01
    assert abs((new == y).float().mean() - 0.1) < 0.01


def test_test_labels_and_images_are_never_label_noised():
    x_tr, x_te, y_te = images(50), images(20, seed=3), labels(20, seed=2)
    c = corrupt(x_tr, labels(50), x_te, y_te, 10, label_noise=1.0, seed=3)
    assert torch.equal(c.y_test, y_te) and torch.equal(c.x_test, x_te.float() / 255)


def test_label_noise_is_deterministic_nested_and_independent_of_the_rest():
    y = labels(5000)
    a, ma = noisy_labels(y, 10, 0.4, seed=9)
    b, _ = noisy_labels(y, 10, 0.4, seed=9)
    d, _ = noisy_labels(y, 10, 0.4, seed=10)
    assert torch.equal(a, b) and not torch.equal(a, d)
    low, ml = noisy_labels(y, 10, 0.2, seed=9)
    assert not (ml & ~ma).any()  # nested: redrawn at 0.2 implies redrawn at 0.4
    assert torch.equal(low[ml], a[ml])  # with the same new class
    # The same labels whatever the input corruption (so across architectures and pixel tests).
    x = images(5000, c=1, h=2, w=2)
    for corruption in CORRUPTIONS:
        c = corrupt(x, y, x[:2], y[:2], 10, label_noise=0.4, corruption=corruption, seed=9)
        assert torch.equal(c.y_train, a)


def test_p_zero_keeps_every_label():
    y = labels(100)
    c = corrupt(images(100), y, images(2), labels(2), 10, label_noise=0.0)
    assert torch.equal(c.y_train, y) and not c.noisy.any() and not c.noise_mask.any()


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"label_noise": 1.5}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"corruption": "blur"}, "random_pixels"),
        ({"corrupt_fraction": 0.0}, "corrupt_fraction"),
        ({"pixel_fraction": 1.2}, "pixel_fraction"),
    ],
)
def test_bad_arguments_are_named(kw, word):
    with pytest.raises(ValueError, match=word):
        run(images(4), images(2), **kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images(4).float(), labels(4), images(2), labels(2), 10)
    with pytest.raises(ValueError, match="y_train"):
        corrupt(images(4), torch.tensor([0, 1, 2, 10]), images(2), labels(2), 10)
    with pytest.raises(ValueError, match="shape"):
        corrupt(images(4), labels(4), images(2, h=8), labels(2), 10)
