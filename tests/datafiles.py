"""Writers of tiny datasets in the real on-disk formats, for loader tests.

Each writer puts a handful of random images where torchvision would, in the format torchvision
writes or downloads, and returns the arrays it wrote so a test can compare what a loader reads.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """`root/cifar-10-batches-py/`: data_batch_1..5, test_batch, batches.meta (Python pickles, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows are R (1024), G, B planes
        y = rng.integers(0, 10, n).tolist()  # the real files store a list of ints
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        xs.append(x.reshape(n, 3, 32, 32))
        ys.append(np.asarray(y, dtype=np.int64))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES],
            b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]),
            "x_test": xs[5], "y_test": ys[5]}


def _idx_bytes(a: np.ndarray) -> bytes:
    """idx format: two zero bytes, type 0x08 (uint8), ndim, big-endian int32 dims, then the data."""
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 12, gz: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    """`root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; folder MNIST or FashionMNIST."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        data = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(raw / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (raw / name).write_bytes(data)
    return arrays


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "ant", "bee"),
    n_train: int = 4,
    n_test: int = 2,
    size: tuple[int, int] = (6, 5),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """`root/{train,test}/<class>/NNN.png` with random RGB images of `size` (width, height), lossless.

    Returns the images as uint8 [N, 3, H, W] and labels in ImageFolder order (classes sorted by name,
    files sorted by name within a class).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.png")
                xs.append(img.transpose(2, 0, 1))
                ys.append(label)
        out["x_" + split] = np.stack(xs)
        out["y_" + split] = np.asarray(ys, dtype=np.int64)
    return out
