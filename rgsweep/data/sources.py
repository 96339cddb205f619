"""Datasets as uint8 tensors: decode once, cache, hand back CPU tensors.

Every loader returns a `Dataset` of uint8 images [N, C, H, W] and int64 labels, so the rest of
the pipeline (corruption, preprocessing, training) never sees a file format. Formats read:

- `cifar10`: torchvision's on-disk layout, `<data_dir>/cifar-10-batches-py/` (pickled batches).
  We read the batches ourselves because torchvision's CIFAR10 verifies MD5 sums, which files
  written by tests (or any re-packaged copy) cannot pass; torchvision is used only to download.
- `mnist`, `fashion-mnist`: `<data_dir>/MNIST/raw/` and `<data_dir>/FashionMNIST/raw/` idx files,
  raw or `.gz`, parsed with numpy.
- `digits`: scikit-learn's bundled 8x8 digits (no files, no network): the offline default.
- `imagefolder:<path>`: `<path>/{train,test}/<class>/<image>`, classes sorted by name like
  torchvision's ImageFolder, decoded with PIL to RGB.
- `synthetic`: tiny generated data that a model can learn, for tests.

Decoded file-based datasets are cached as one torch file under `$RGSWEEP_CACHE` (default
`~/.cache/rgsweep`), keyed by the dataset, its absolute path and its files' sizes and mtimes, so
editing or replacing the data invalidates the cache by itself.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rgsweep.names import DATASET_NAMES, IMAGEFOLDER

# torchvision's IMG_EXTENSIONS, so a folder ImageFolder reads is read the same here.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1  # bump when the decoded layout changes, to invalidate old cache files

MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# name -> (folder under data_dir as torchvision lays it out, class names)
IDX_DATASETS = {"mnist": ("MNIST", MNIST_CLASSES), "fashion-mnist": ("FashionMNIST", FASHION_CLASSES)}
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


class DatasetError(Exception):
    """Data missing or malformed; the message is one line saying where we looked and what to do."""


@dataclass(eq=False)
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W], CPU
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor  # uint8 [M, C, H, W]
    y_test: torch.Tensor  # int64 [M]
    classes: list[str]
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Short stable hash of the tensors' bytes (sha1 over train then test, first 12 hex digits)."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            for t in (self.x_train, self.y_train, self.x_test, self.y_test):
                h.update(t.contiguous().numpy().data)  # hashes the buffer in place, no bytes copy
            self._fingerprint = h.hexdigest()[:12]
        return self._fingerprint

    # A Dataset as plain numpy arrays and back: how the driver hands it to trials (Ray's object store).
    ARRAYS = ("x_train", "y_train", "x_test", "y_test")

    def arrays(self) -> dict[str, np.ndarray]:
        """The four tensors as numpy arrays sharing their memory (no copy)."""
        return {k: getattr(self, k).numpy() for k in self.ARRAYS}

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray], classes: list[str],
                    fingerprint: str | None = None) -> Dataset:
        """Tensors on `arrays`' memory, without a copy. Arrays read zero-copy from Ray's object store are
        read-only: torch cannot mark a tensor read-only, so it warns once per array, and we silence that
        warning here. Nothing may write into these tensors: prepare_data (corruption, preprocessing) only
        reads them and writes its results into new tensors (tests/test_data_paths.py checks that)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = {k: torch.from_numpy(arrays[k]) for k in cls.ARRAYS}
        ds = cls(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"], list(classes))
        ds._fingerprint = fingerprint
        return ds


# -- names and defaults ---------------------------------------------------------------------------


def check_dataset_name(name: str) -> None:
    """Raise ValueError unless `name` is a known dataset (no I/O: for config validation)."""
    if name in DATASET_NAMES or (name.startswith(IMAGEFOLDER) and len(name) > len(IMAGEFOLDER)):
        return
    allowed = ", ".join([*DATASET_NAMES, IMAGEFOLDER + "<path>"])
    raise ValueError(f"unknown dataset {name!r}; allowed: {allowed}")


def default_data_dir() -> Path:
    return Path(os.environ.get("RGSWEEP_DATA") or "./data")


# -- where the files are --------------------------------------------------------------------------
# A relative location means "relative to where the user ran the command". Ray Tune runs each trial in
# its own directory, so locations are resolved in the driver (`cwd` defaults to the process's current
# directory) and trials receive decoded data, never a path (rgsweep/preload.py).


def _absolute(p: str | Path, cwd: str | Path | None) -> Path:
    p = Path(p).expanduser()
    return (p if p.is_absolute() else Path(cwd or os.getcwd()) / p).resolve()


def resolve_data_dir(data_dir: str | Path | None, cwd: str | Path | None = None) -> Path:
    """The absolute data folder: `data_dir`, else $RGSWEEP_DATA, else ./data; `~` expanded, relative to `cwd`."""
    return _absolute(data_dir if data_dir is not None else default_data_dir(), cwd)


def data_location(name: str, data_dir: str | Path | None = None, cwd: str | Path | None = None) -> Path | None:
    """The absolute folder `name`'s files are read from (None for digits and synthetic: no files)."""
    if name.startswith(IMAGEFOLDER):
        return _absolute(name[len(IMAGEFOLDER):], cwd)
    if name == "cifar10":
        return resolve_data_dir(data_dir, cwd) / CIFAR_DIR
    if name in IDX_DATASETS:
        return resolve_data_dir(data_dir, cwd) / IDX_DATASETS[name][0] / "raw"
    return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("RGSWEEP_CACHE") or Path.home() / ".cache" / "rgsweep")


# -- the entry point ------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    subset: int | None = None,
    cache_dir: str | Path | None = None,
    cwd: str | Path | None = None,
) -> Dataset:
    """Load a dataset by name as uint8 CPU tensors; `subset` keeps a class-balanced part of TRAIN only.

    Relative locations (`data_dir`, $RGSWEEP_DATA, ./data, `imagefolder:PATH`) are taken from `cwd`
    (default: the current directory); the Dataset keeps `name` as given.
    """
    try:
        check_dataset_name(name)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    root = resolve_data_dir(data_dir, cwd)
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()

    if name == "digits":
        ds = _load_digits()
    elif name == "synthetic":
        ds = _load_synthetic()
    elif name == "cifar10":
        files = _cifar_files(root, download)
        ds = _cached(name, root / CIFAR_DIR, files, cache, lambda: _read_cifar(root / CIFAR_DIR))
    elif name in IDX_DATASETS:
        files = _idx_files(name, root, download)
        ds = _cached(name, files["x_train"].parent, list(files.values()), cache,
                     lambda: _read_idx_dataset(name, files))
    else:
        folder = _absolute(name[len(IMAGEFOLDER):], cwd)
        listing = _list_image_folder(folder)
        files = [p for split in listing.values() for _, p in split]
        ds = _cached(name, folder, files, cache, lambda: _read_image_folder(name, listing))

    return ds if subset is None else take_subset(ds, subset)


def take_subset(ds: Dataset, subset: int) -> Dataset:
    """A class-balanced, deterministic `subset` of the training images; the test split is shared, not copied."""
    n = len(ds.y_train)
    if not 1 <= subset <= n:
        raise DatasetError(f"subset={subset} is out of range for {ds.name}: it has {n} training images")
    idx = balanced_subset(ds.y_train, subset)
    return Dataset(ds.name, ds.x_train[idx].contiguous(), ds.y_train[idx], ds.x_test, ds.y_test, ds.classes)


# -- caching --------------------------------------------------------------------------------------


def _cached(
    name: str, source: Path, files: list[Path], cache_dir: Path, decode: Callable[[], Dataset]
) -> Dataset:
    """Return the decoded dataset from the cache, or decode it and save it there atomically."""
    stats = [[str(p), st.st_size, st.st_mtime_ns] for p in sorted(files) for st in [p.stat()]]
    key_src = json.dumps({"v": CACHE_VERSION, "name": name, "source": str(source), "files": stats})
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    label = name if not name.startswith(IMAGEFOLDER) else "imagefolder-" + source.name
    path = cache_dir / f"{label}-{key}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
            return Dataset(name, d["x_train"], d["y_train"], d["x_test"], d["y_test"], list(d["classes"]))
        except Exception as e:  # a truncated or foreign file: decode again and overwrite it
            warnings.warn(f"ignoring unreadable dataset cache {path}: {e}", stacklevel=3)
    ds = decode()
    payload = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test,
               "classes": ds.classes}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: parallel trials never read a
        # half-written cache, and whichever finishes last wins with identical content.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name, suffix=".tmp")
        try:
            if hasattr(os, "fchmod"):  # mkstemp makes it private; a shared cache should be readable
                os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:  # a read-only cache location costs speed, not correctness
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=3)
    return ds


# -- CIFAR-10 -------------------------------------------------------------------------------------


def _cifar_files(root: Path, download: bool) -> list[Path]:
    folder = root / CIFAR_DIR
    files = [folder / f for f in CIFAR_FILES]
    if not all(p.is_file() for p in files) and download:
        _download("cifar10", "CIFAR10", root)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        what = f"{folder}" if len(missing) == len(files) else f"{folder} (missing {', '.join(missing)})"
        raise DatasetError(
            f"cifar10 not found in {what}; pass --download to fetch it, "
            f"or --data-dir DIR pointing at a folder that holds {CIFAR_DIR}/"
        )
    return files


def _read_cifar(folder: Path) -> Dataset:
    def batch(fname: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(folder / fname)
        try:
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[b"labels"], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DatasetError(f"{folder / fname} is not a CIFAR-10 batch: {e}") from None
        return x, y

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    meta = _unpickle(folder / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar10", torch.from_numpy(x_train), torch.from_numpy(y_train),
                   torch.from_numpy(x_test), torch.from_numpy(y_test), names)


def _unpickle(path: Path) -> dict:
    # CIFAR-10's format is a Python 2 pickle; like torchvision we unpickle it (only ever our data dir).
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="bytes")
        except Exception as e:
            raise DatasetError(f"{path} is not a readable CIFAR-10 pickle: {e}") from None


# -- MNIST / Fashion-MNIST ------------------------------------------------------------------------


def _idx_files(name: str, root: Path, download: bool) -> dict[str, Path]:
    folder_name, _ = IDX_DATASETS[name]
    raw = root / folder_name / "raw"

    def find() -> dict[str, Path]:
        found = {}
        for key, base in IDX_FILES.items():
            for cand in (raw / base, raw / (base + ".gz")):  # prefer the uncompressed file: faster
                if cand.is_file():
                    found[key] = cand
                    break
        return found

    found = find()
    if len(found) < len(IDX_FILES) and download:
        _download(name, folder_name, root)  # torchvision's class names match its folder names
        found = find()
    if len(found) < len(IDX_FILES):
        missing = [IDX_FILES[k] for k in IDX_FILES if k not in found]
        raise DatasetError(
            f"{name} not found in {raw} (missing {', '.join(missing)}, raw or .gz); "
            "pass --download to fetch it, "
            f"or --data-dir DIR pointing at a folder that holds {folder_name}/raw/"
        )
    return found


def _read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (uint8 payload): 2 zero bytes, type 0x08, ndim, big-endian int32 dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(f"{path} has {len(data)} bytes, its header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims.tolist())


def _read_idx_dataset(name: str, files: dict[str, Path]) -> Dataset:
    arr = {k: _read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arr["x_" + split], arr["y_" + split]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{files['x_' + split]}: images {x.shape} do not match labels {y.shape}")

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.copy()).unsqueeze(1)  # [N, 1, 28, 28]; copy: frombuffer is read-only

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset(name, images(arr["x_train"]), labels(arr["y_train"]), images(arr["x_test"]),
                   labels(arr["y_test"]), list(IDX_DATASETS[name][1]))


def _download(name: str, torchvision_class: str, root: Path) -> None:
    """Fetch a dataset with torchvision's own downloader (checksummed) into `root`."""
    try:
        import torchvision.datasets

        root.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, torchvision_class)(str(root), download=True)
    except Exception as e:  # no network, disk full, a mirror down: one line, not a traceback
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"could not download {name} into {root}: {msg}") from e


# -- image folders --------------------------------------------------------------------------------


def _list_image_folder(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """{"train": [(class, file), ...], "test": [...]}, classes and files sorted by name."""
    hint = f"expected {folder}/train/<class>/<image> and {folder}/test/<class>/<image>"
    listing = {}
    for split in ("train", "test"):
        d = folder / split
        if not d.is_dir():
            raise DatasetError(f"image folder {d} not found; {hint}")
        items = [(c.name, p) for c in sorted(d.iterdir(), key=lambda p: p.name) if c.is_dir()
                 for p in sorted(c.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not items:
            raise DatasetError(f"no images under {d}; {hint}")
        listing[split] = items
    return listing


def _read_image_folder(name: str, listing: dict[str, list[tuple[str, Path]]]) -> Dataset:
    from PIL import Image

    classes = sorted({c for c, _ in listing["train"]})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _ in listing["test"]} - index.keys())
    if unknown:
        raise DatasetError(f"test classes {unknown} have no training images (train classes: {classes})")

    def decode(p: Path) -> np.ndarray:
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise DatasetError(f"cannot decode image {p}: {e}") from None

    first = decode(listing["train"][0][1])
    out = {}
    # PIL releases the GIL while decoding: threads help for large images (little for 32x32 ones).
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for split, items in listing.items():
            x = np.empty((len(items), *first.shape), dtype=np.uint8)
            for i, (arr, (_, p)) in enumerate(zip(pool.map(decode, [p for _, p in items]), items)):
                if arr.shape != first.shape:
                    raise DatasetError(
                        f"image {p} is {arr.shape[1]}x{arr.shape[0]}, but {listing['train'][0][1]} is "
                        f"{first.shape[1]}x{first.shape[0]}; all images must share one size"
                    )
                x[i] = arr
            y = np.array([index[c] for c, _ in items], dtype=np.int64)
            out[split] = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y))
    return Dataset(name, *out["train"], *out["test"], classes)


# -- bundled and generated data -------------------------------------------------------------------


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits, 0..16 scaled to 0..255, fixed stratified 80/20 split (1437/360)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Dataset("digits", t(x[tr]), t(y[tr]), t(x[te]), t(y[te]), [str(i) for i in range(10)])


def _load_synthetic(seed: int = 1234) -> Dataset:
    """10 classes of 3x8x8 images: a random prototype per class plus Gaussian noise (learnable, tiny)."""
    g = torch.Generator().manual_seed(seed)
    k, shape = 10, (3, 8, 8)
    protos = torch.randint(0, 256, (k, *shape), generator=g).float()

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = protos[y] + 48.0 * torch.randn(n, *shape, generator=g)
        return x.round().clamp(0, 255).to(torch.uint8), y

    x_tr, y_tr = split(600)
    x_te, y_te = split(200)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, [f"class{i}" for i in range(k)])


# -- subsets --------------------------------------------------------------------------------------


def balanced_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """`n` indices into `y`, as class-balanced as the class sizes allow, deterministic from `seed`.

    Round-robin over classes in a random order: every class gives its k-th random sample before
    any gives its (k+1)-th, so per-class counts differ by at most one, and a class that runs out
    leaves its share to the others. Returned sorted, so the subset keeps the data's order.
    """
    if not 0 <= n <= len(y):
        raise ValueError(f"n must be in [0, {len(y)}], got {n}")
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    _, cls = torch.unique(y, return_inverse=True)  # labels -> 0..K-1
    k = int(cls.max()) + 1 if len(cls) else 0
    perm = torch.randperm(len(y), generator=g)
    c = cls[perm]
    # rank of each permuted sample within its class: position in a stable sort by class, minus class start
    order = torch.argsort(c, stable=True)
    counts = torch.bincount(c, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(c)
    rank[order] = torch.arange(len(c)) - starts[c[order]]
    class_pos = torch.randperm(k, generator=g)
    key = rank * k + class_pos[c]
    pick = perm[torch.argsort(key)[:n]]
    return torch.sort(pick).values
