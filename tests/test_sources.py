"""Dataset loaders on files written in the real on-disk formats, caching, subsets, and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import CIFAR_CLASSES, write_cifar10, write_image_folder, write_mnist

from rgsweep.data.sources import (
    DATASET_NAMES,
    DatasetError,
    balanced_subset,
    check_dataset_name,
    load_dataset,
)

CIFAR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def assert_matches(ds, arrays: dict[str, np.ndarray]) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        t = getattr(ds, key)
        assert t.dtype == (torch.uint8 if key.startswith("x") else torch.int64), key
        np.testing.assert_array_equal(t.numpy(), arrays[key], err_msg=key)


# -- each loader ----------------------------------------------------------------------------------


def test_cifar10_reads_pickled_batches(tmp_path):
    arrays = write_cifar10(tmp_path / "data", per_batch=7, n_test=9)
    ds = load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (35, 3, 32, 32) and ds.x_test.shape == (9, 3, 32, 32)
    assert ds.classes == CIFAR_CLASSES and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert_matches(ds, arrays)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets(tmp_path, name, folder, gz):
    arrays = write_mnist(tmp_path, folder=folder, n_train=11, n_test=5, gz=gz)
    ds = load_dataset(name, tmp_path, cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (11, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.num_classes == 10
    assert (ds.classes[0] == "0 - zero") == (name == "mnist")
    expected = {k: v[:, None] if k.startswith("x") else v.astype(np.int64) for k, v in arrays.items()}
    assert_matches(ds, expected)


def test_truncated_idx_file_is_refused(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path, cache_dir=tmp_path / "cache")


def test_image_folder(tmp_path):
    arrays = write_image_folder(tmp_path / "imgs", classes=("cat", "ant", "bee"), n_train=3, n_test=2)
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", cache_dir=tmp_path / "cache")
    assert ds.classes == ["ant", "bee", "cat"]  # sorted by name, like torchvision's ImageFolder
    assert ds.x_train.shape == (9, 3, 5, 6) and ds.x_test.shape == (6, 3, 5, 6)
    assert_matches(ds, arrays)


def test_image_folder_refuses_mixed_sizes(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path, size=(6, 5))
    odd = tmp_path / "test" / "bee" / "zzz.png"
    Image.new("RGB", (7, 5)).save(odd)
    with pytest.raises(DatasetError, match="zzz.png"):
        load_dataset(f"imagefolder:{tmp_path}", cache_dir=tmp_path / "cache")


def test_digits_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.num_classes == 10 and ds.x_train.dtype == torch.uint8
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0  # 0..16 scaled to 0..255
    # Stratified: every class keeps its share of the test split to within one image.
    total = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10).float()
    assert (torch.bincount(ds.y_test, minlength=10) - 0.2 * total).abs().max() <= 1
    again = load_dataset("digits")
    assert torch.equal(again.x_test, ds.x_test) and again.fingerprint() == ds.fingerprint()


def test_synthetic_is_deterministic_balanced_and_learnable():
    ds = load_dataset("synthetic")
    assert ds.x_train.shape == (600, 3, 8, 8) and ds.x_test.shape == (200, 3, 8, 8)
    assert torch.bincount(ds.y_train).tolist() == [60] * 10
    assert load_dataset("synthetic").fingerprint() == ds.fingerprint()
    # Learnable: nearest class mean (from the training set) classifies the test set well.
    xtr, xte = ds.x_train.flatten(1).float(), ds.x_test.flatten(1).float()
    means = torch.stack([xtr[ds.y_train == c].mean(0) for c in range(10)])
    acc = (torch.cdist(xte, means).argmin(1) == ds.y_test).float().mean()
    assert acc > 0.9


# -- caching --------------------------------------------------------------------------------------


def test_cache_is_written_then_used(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=4, n_test=3)
    cache = tmp_path / "cache"
    first = load_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    second = load_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert second.classes == first.classes
    # Prove the second load read the cache file, not the batches: plant a marker in the cache.
    d = torch.load(files[0], weights_only=True)
    d["x_test"] = torch.zeros_like(d["x_test"])
    torch.save(d, files[0])
    assert int(load_dataset("cifar10", tmp_path / "data", cache_dir=cache).x_test.sum()) == 0


def test_cache_follows_changed_source_files(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=4, n_test=3, seed=0)
    cache = tmp_path / "cache"
    first = load_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    new = write_cifar10(tmp_path / "data", per_batch=5, n_test=3, seed=1)  # different sizes: new key
    ds = load_dataset("cifar10", tmp_path / "data", cache_dir=cache)
    assert_matches(ds, new)
    assert ds.fingerprint() != first.fingerprint()
    assert len(list(cache.glob("*.pt"))) == 2


def test_unreadable_cache_is_rebuilt(tmp_path):
    arrays = write_mnist(tmp_path)
    cache = tmp_path / "cache"
    load_dataset("mnist", tmp_path, cache_dir=cache)
    (f,) = cache.glob("*.pt")
    f.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        ds = load_dataset("mnist", tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(ds.x_train[:, 0].numpy(), arrays["x_train"])
    assert torch.load(f, weights_only=True)["x_train"].shape == (40, 1, 28, 28)


# -- subsets, fingerprints ------------------------------------------------------------------------


def test_subset_is_balanced_deterministic_and_train_only():
    full = load_dataset("digits")
    a = load_dataset("digits", subset=200)
    b = load_dataset("digits", subset=200)
    assert torch.bincount(a.y_train, minlength=10).tolist() == [20] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, full.x_test)  # the test split is never subsetted
    assert a.fingerprint() != full.fingerprint()
    # The subset is made of real training rows, each used once.
    idx = balanced_subset(full.y_train, 200)
    assert len(set(idx.tolist())) == 200 and torch.equal(full.x_train[idx], a.x_train)


def test_balanced_subset_with_uneven_classes():
    y = torch.tensor([0] * 50 + [1] * 3 + [2] * 40)
    idx = balanced_subset(y, 30, seed=5)
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert counts[1] == 3 and sum(counts) == 30 and abs(counts[0] - counts[2]) <= 1  # small class gives all
    assert torch.equal(idx, balanced_subset(y, 30, seed=5))
    assert not torch.equal(idx, balanced_subset(y, 30, seed=6))
    assert torch.bincount(y[balanced_subset(y, 10)], minlength=3).tolist() in ([4, 3, 3], [3, 3, 4])


def test_subset_larger_than_train_split_is_refused():
    with pytest.raises(DatasetError, match="1437"):
        load_dataset("digits", subset=5000)


def test_fingerprint_is_short_and_sensitive():
    ds = load_dataset("synthetic")
    fp = ds.fingerprint()
    assert len(fp) == 12 and int(fp, 16) >= 0
    ds2 = load_dataset("synthetic")
    ds2.x_test[0, 0, 0, 0] ^= 1
    assert ds2.fingerprint() != fp


# -- errors ---------------------------------------------------------------------------------------


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "--download" in msg and "--data-dir" in msg and "\n" not in msg


def test_missing_mnist_file_is_named(tmp_path):
    write_mnist(tmp_path, folder="FashionMNIST")
    os.remove(tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte") as e:
        load_dataset("fashion-mnist", tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value) and "--download" in str(e.value)


def test_missing_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="train/<class>"):
        load_dataset(f"imagefolder:{tmp_path}", cache_dir=tmp_path / "cache")


def test_default_data_dir_comes_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env-data", n_train=3)
    monkeypatch.setenv("RGSWEEP_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("RGSWEEP_CACHE", str(tmp_path / "env-cache"))
    assert len(load_dataset("mnist").y_train) == 3
    assert len(list((tmp_path / "env-cache").glob("mnist-*.pt"))) == 1


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar100")
    assert all(n in str(e.value) for n in DATASET_NAMES) and "imagefolder:<path>" in str(e.value)
    with pytest.raises(ValueError, match="fashion-mnist"):
        check_dataset_name("imagenet")
    with pytest.raises(ValueError):
        check_dataset_name("imagefolder:")
    check_dataset_name("imagefolder:/some/where")  # no I/O: a path need not exist to pass validation


# -- the real thing (opt-in) ----------------------------------------------------------------------


@pytest.mark.cifar
@pytest.mark.skipif(not CIFAR_MINI.is_dir(), reason=f"{CIFAR_MINI} is absent (development data only)")
def test_cifar10_mini_image_folder(tmp_path):
    ds = load_dataset(f"imagefolder:{CIFAR_MINI}", cache_dir=tmp_path)
    assert ds.x_train.shape == (10_000, 3, 32, 32) and ds.x_test.shape == (2_000, 3, 32, 32)
    assert ds.classes == CIFAR_CLASSES  # alphabetical order happens to be CIFAR-10's own
    assert torch.bincount(ds.y_test).tolist() == [200] * 10
    mean = ds.x_train.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.491, 0.482, 0.447]), atol=0.01)
    cached = load_dataset(f"imagefolder:{CIFAR_MINI}", cache_dir=tmp_path)
    assert torch.equal(cached.x_train, ds.x_train) and cached.fingerprint() == ds.fingerprint()
