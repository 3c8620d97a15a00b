"""Data: raw image sets (CIFAR-10/100, SVHN, a synthetic stand-in), on-device tensors with
batched augmentation, and the paper's minibatch samplers.

Loading order for a real data set (``load_dataset``):

1. a user path (``path=`` or ``CIFAR10_PATH`` / ``CIFAR100_PATH`` / ``SVHN_PATH``): an ImageFolder
   tree, a tar archive of one, or the standard pickled / ``.mat`` files;
2. the decoded cache ``<root>/<name>.pt``;
3. a torchvision download into ``root``, parsed by the same readers as (1).

Every random draw is a pure function of (seed, stream, step) via ``paperlib.seeding``, so a resumed
run sees the same subset, batches and augmentations.
"""

from __future__ import annotations

import io
import numbers
import os
import pickle
import tarfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from paperlib import paths, seeding
from paperlib.constants import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASET_CLASSES,
    DATASETS,
    SAMPLERS,
)

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DeviceData",
    "RawDataset",
    "Sampler",
    "augment_batch",
    "balanced_subset",
    "downsample",
    "load_dataset",
    "make_synthetic",
    "prepare",
]

# Standard CIFAR-100 statistics; SVHN uses the common 0.5 / 0.5.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.5, 0.5, 0.5)
SVHN_STD = (0.5, 0.5, 0.5)
NORMALIZATION = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "svhn": (SVHN_MEAN, SVHN_STD),
    "synthetic": (CIFAR10_MEAN, CIFAR10_STD),
}

IMAGE_SIZE = 32
RESOLUTIONS = (1, 2, 4, 8, 16, 32)  # divisors of 32
CROP_PADDING = 4  # RandomCrop(32, padding=4) at full resolution
ENV_VARS = {"cifar10": "CIFAR10_PATH", "cifar100": "CIFAR100_PATH", "svhn": "SVHN_PATH"}
EXPECTED_COUNTS = {  # (train, test)
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "synthetic": (2_000, 1_000),
}
NUM_CLASSES = DATASET_CLASSES
SVHN_CLASSES = tuple(str(d) for d in range(10))
SYNTHETIC_SEED = 20210101  # fixed: the synthetic set is the same everywhere
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Standard file layouts: folder name, train files, test files, meta file, label key, names key.
_PICKLE_LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": (
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        "fine_labels",
        "fine_label_names",
    ),
}
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

_IMAGEFOLDER_FORMAT = (
    "an ImageFolder tree (train/<class>/*.png|jpg and test/<class>/..., possibly one directory "
    "down), or a .tar.gz/.tgz/.tar archive of such a tree"
)
ACCEPTED_FORMATS = {
    "cifar10": _IMAGEFOLDER_FORMAT + ", or a cifar-10-batches-py folder (or its parent, or the "
    "cifar-10-python.tar.gz archive)",
    "cifar100": _IMAGEFOLDER_FORMAT + ", or a cifar-100-python folder (or its parent, or the "
    "cifar-100-python.tar.gz archive)",
    "svhn": _IMAGEFOLDER_FORMAT + ", or a folder with train_32x32.mat and test_32x32.mat",
}


class DatasetNotFoundError(RuntimeError):
    """No user path, no cache and the torchvision download failed."""


class DatasetFormatError(ValueError):
    """A data source exists but is not in an accepted format or has the wrong contents."""


# ----------------------------------------------------------------------------------------------
# Raw data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RawDataset:
    """Decoded images as uint8 NCHW tensors on the CPU.

    Attributes:
        train_x: uint8 [n_train, 3, 32, 32].
        train_y: int64 [n_train], labels in ``range(len(classes))``.
        test_x: uint8 [n_test, 3, 32, 32].
        test_y: int64 [n_test].
        classes: class names, index = label.
        name: one of ``constants.DATASETS``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(
    name: str = "cifar10",
    path: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    download: bool = True,
    *,
    expect_counts: bool = True,
) -> RawDataset:
    """Load a data set as uint8 tensors: user path, else cache, else torchvision download.

    Args:
        name: one of ``constants.DATASETS``. ``"synthetic"`` is generated in memory (``path``,
            ``root`` and ``download`` are ignored).
        path: a user copy of the data; default: the env var ``CIFAR10_PATH`` / ``CIFAR100_PATH`` /
            ``SVHN_PATH``. See ``ACCEPTED_FORMATS``. A decoded cache built from the same unchanged
            path is reused instead of decoding again.
        root: folder for the cache ``<root>/<name>.pt`` and for torchvision downloads; default
            ``paperlib.paths.data_root()``.
        download: try a torchvision download when there is neither a user path nor a cache.
        expect_counts: check the official train/test sizes (turn off for tiny test fakes; the
            class checks stay).

    Returns:
        A ``RawDataset`` (train_x uint8 [n, 3, 32, 32], train_y int64 [n], same for test).

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: the user path does not exist.
        DatasetFormatError: the user path / cache has an unknown format or wrong contents.
        DatasetNotFoundError: no user path, no cache, and the download failed or was disabled.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if name == "synthetic":
        raw = make_synthetic()
        _check(raw, expect_counts, "the synthetic generator")
        return raw

    root = Path(root) if root is not None else paths.data_root()
    cache = root / f"{name}.pt"
    env = ENV_VARS[name]
    origin = "path="
    if path is None and os.environ.get(env):
        path, origin = os.environ[env], env

    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{name} path {str(path)!r} (from {origin}) "
                f"does not exist; expected {ACCEPTED_FORMATS[name]}"
            )
        source = _fingerprint(path)
        cached = _read_cache(cache, name, source=source)
        if cached is not None:
            _check(cached, expect_counts, f"cache {cache} (built from {path})")
            return cached
        raw = _read_or_explain(name, path, origin, lambda: _read_user_path(name, path))
        _check(raw, expect_counts, str(path))
        _write_cache(cache, raw, source)
        return raw

    cached = _read_cache(cache, name)
    if cached is not None:
        _check(cached, expect_counts, f"cache {cache} (delete it to rebuild)")
        return cached

    try:
        if not download:
            raise RuntimeError("download=False")
        _download(name, root)
    except Exception as err:  # any download failure becomes one actionable message
        raise DatasetNotFoundError(_not_found_message(name, cache, err)) from err
    raw = _read_or_explain(name, root, "the torchvision download",
                           lambda: _read_downloaded(name, root))
    _check(raw, expect_counts, f"torchvision download in {root}")
    _write_cache(cache, raw, f"torchvision:{root.resolve()}")
    return raw


def _read_or_explain(name: str, path: Path, origin: str, read: Callable[[], RawDataset]):
    """``read()``, with any failure to read the files (a truncated archive's EOFError, a
    damaged image, a bad pickle) reported as DatasetFormatError naming the path and the fix."""
    try:
        return read()
    except DatasetFormatError:
        raise
    except Exception as err:
        raise DatasetFormatError(
            f"cannot read the {name} data at {str(path)!r} (from {origin}): "
            f"{type(err).__name__}: {err}. The file is damaged or incomplete (e.g. an "
            f"interrupted download or copy): fetch it again, or point {ENV_VARS[name]} at a "
            f"good copy ({ACCEPTED_FORMATS[name]})"
        ) from err


def _not_found_message(name: str, cache: Path, err: BaseException) -> str:
    env = ENV_VARS[name]
    make_hint = ""
    if name == "cifar10":
        make_hint = " (or `make figures CIFAR10=/path/to/cifar10-jpeg.tar.gz`)"
    return (
        f"could not find the {name} data set. Options: (1) set {env}{make_hint} to "
        f"{ACCEPTED_FORMATS[name]}; (2) a decoded cache at {cache} (none there); "
        f"(3) a torchvision download into {cache.parent}, which needs network access and failed: "
        f"{type(err).__name__}: {err}"
    )


def _download(name: str, root: Path) -> None:
    """Fetch the standard files with torchvision into ``root`` (verified by its md5 checks)."""
    import torchvision  # slow import, only needed here

    root.mkdir(parents=True, exist_ok=True)
    if name == "svhn":
        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(root), split=split, download=True)
        return
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _read_downloaded(name: str, root: Path) -> RawDataset:
    """Parse what ``_download`` left in ``root`` with the same readers as user paths."""
    if name == "svhn":
        return _read_svhn(root)
    return _read_pickles(name, _dir_reader(root / _PICKLE_LAYOUTS[name][0]))


def _read_user_path(name: str, path: Path) -> RawDataset:
    """Detect the format of a user path and decode it."""
    bad = DatasetFormatError(
        f"unrecognized {name} data at {str(path)!r}; expected {ACCEPTED_FORMATS[name]}"
    )
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise bad
        return _read_tar(name, path)
    if name in _PICKLE_LAYOUTS:
        folder, train_files, _, meta, _, _ = _PICKLE_LAYOUTS[name]
        for d in (path, path / folder):
            if (d / train_files[0]).is_file() and (d / meta).is_file():
                return _read_pickles(name, _dir_reader(d))
    if name == "svhn" and (path / _SVHN_FILES["train"]).is_file():
        return _read_svhn(path)
    base = _find_imagefolder(path)
    if base is None:
        raise bad
    files = {}
    for split in ("train", "test"):
        for class_dir in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and _is_image(f.name):
                    files[(split, class_dir.name, f.name)] = f
    return _decode_imagefolder(name, files, lambda f: f.read_bytes(), str(path))


def _find_imagefolder(path: Path) -> Path | None:
    """``path`` or its single child that holds ``train/`` and ``test/`` folders."""

    def is_tree(d: Path) -> bool:
        return (d / "train").is_dir() and (d / "test").is_dir()

    if is_tree(path):
        return path
    hits = [d for d in sorted(path.iterdir()) if d.is_dir() and is_tree(d)]
    if len(hits) > 1:
        raise DatasetFormatError(
            f"ambiguous ImageFolder data at {str(path)!r}: several trees {[d.name for d in hits]}"
        )
    return hits[0] if hits else None


def _is_image(filename: str) -> bool:
    return not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS)


def _read_tar(name: str, path: Path) -> RawDataset:
    """Read an archive of an ImageFolder tree or of the pickled batches, without extracting."""
    images: dict[tuple[str, str, str], bytes] = {}
    prefixes: set[tuple[str, ...]] = set()
    others: dict[str, bytes] = {}
    wanted = set()
    if name in _PICKLE_LAYOUTS:
        _, train_files, test_files, meta, _, _ = _PICKLE_LAYOUTS[name]
        wanted = {*train_files, *test_files, meta}
    with tarfile.open(path, "r:*") as tf:
        for m in tf:  # stream order: no backward seeks in a compressed archive
            if not m.isfile():
                continue
            parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
            if len(parts) in (3, 4) and parts[-3] in ("train", "test") and _is_image(parts[-1]):
                prefixes.add(parts[:-3])
                images[parts[-3:]] = tf.extractfile(m).read()
            elif parts and parts[-1] in wanted:
                others[parts[-1]] = tf.extractfile(m).read()
    if images:
        if len(prefixes) > 1:
            raise DatasetFormatError(
                f"archive {str(path)!r} holds several ImageFolder trees: {sorted(prefixes)}"
            )
        return _decode_imagefolder(name, images, lambda b: b, str(path))
    if wanted and wanted <= others.keys():
        return _read_pickles(name, others.__getitem__)
    raise DatasetFormatError(
        f"archive {str(path)!r} has no recognizable {name} data; expected {ACCEPTED_FORMATS[name]}"
    )


def _decode_imagefolder(
    name: str,
    files: Mapping[tuple[str, str, str], object],
    read: Callable[[object], bytes],
    where: str,
) -> RawDataset:
    """Decode ``{(split, class, filename): handle}`` into a RawDataset.

    Classes are the sorted train class folder names (ImageFolder's rule); examples are ordered by
    (class, filename) so the result does not depend on the archive order.
    """
    from PIL import Image

    classes = tuple(sorted({c for s, c, _ in files if s == "train"}))
    test_classes = {c for s, c, _ in files if s == "test"}
    if not classes or not test_classes or not test_classes <= set(classes):
        raise DatasetFormatError(
            f"{where}: ImageFolder train classes {classes} and test classes "
            f"{tuple(sorted(test_classes))} must be non-empty and test must be a subset of train"
        )
    label = {c: i for i, c in enumerate(classes)}
    out = {}
    for split in ("train", "test"):
        keys = sorted(k for k in files if k[0] == split)
        x = np.empty((len(keys), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for i, key in enumerate(keys):
            with Image.open(io.BytesIO(read(files[key]))) as img:
                if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise DatasetFormatError(
                        f"{where}: image {'/'.join(key)} is {img.size[0]}x{img.size[1]}, "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}"
                    )
                x[i] = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        y = torch.tensor([label[k[1]] for k in keys], dtype=torch.int64)
        out[split] = (_nhwc_to_nchw(x), y)
    return RawDataset(*out["train"], *out["test"], classes=classes, name=name)


def _nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _dir_reader(folder: Path) -> Callable[[str], bytes]:
    return lambda filename: (folder / filename).read_bytes()


def _read_pickles(name: str, read: Callable[[str], bytes]) -> RawDataset:
    """Parse the pickled CIFAR-10 batches / CIFAR-100 files (``read(filename) -> bytes``).

    The files are trusted the way torchvision trusts them (they are pickles).
    """
    _, train_files, test_files, meta, label_key, names_key = _PICKLE_LAYOUTS[name]

    def load(filename: str) -> dict:
        d = pickle.loads(read(filename), encoding="bytes")
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}

    def split(filenames: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in filenames:
            d = load(f)
            if "data" not in d or label_key not in d:
                raise DatasetFormatError(f"{name} file {f!r} lacks 'data' or {label_key!r}")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    names = load(meta).get(names_key)
    if names is None:
        raise DatasetFormatError(f"{name} file {meta!r} lacks {names_key!r}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return RawDataset(*split(train_files), *split(test_files), classes=classes, name=name)


def _read_svhn(folder: Path) -> RawDataset:
    """Parse SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` (X [32, 32, 3, n], label 10 = 0)."""
    from scipy.io import loadmat

    out = []
    for split in ("train", "test"):
        f = folder / _SVHN_FILES[split]
        if not f.is_file():
            raise DatasetFormatError(f"SVHN file {str(f)!r} is missing")
        mat = loadmat(f)
        x = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
        out += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)]
    return RawDataset(*out, classes=SVHN_CLASSES, name="svhn")


def _check(raw: RawDataset, expect_counts: bool, where: str) -> None:
    """Validate shapes, dtypes, classes and (optionally) counts; raise DatasetFormatError."""
    name = raw.name
    problems = []
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            problems.append(
                f"{split} images {x.dtype} {tuple(x.shape)}, expected uint8 [n, 3, 32, 32]"
            )
        if y.dtype != torch.int64 or y.shape != x.shape[:1]:
            problems.append(f"{split} labels {y.dtype} {tuple(y.shape)}, expected int64 [n]")
        elif len(y) == 0:
            problems.append(f"{split} split is empty")
        elif int(y.min()) < 0 or int(y.max()) >= len(raw.classes):
            problems.append(f"{split} labels outside [0, {len(raw.classes)})")
    expected_classes = {
        "cifar10": CIFAR10_CLASSES,
        "synthetic": CIFAR10_CLASSES,
        "svhn": SVHN_CLASSES,
    }.get(name)
    if expected_classes is not None and raw.classes != expected_classes:
        problems.append(f"classes {raw.classes}, expected {expected_classes}")
    elif len(set(raw.classes)) != NUM_CLASSES[name] or len(raw.classes) != NUM_CLASSES[name]:
        problems.append(f"{len(raw.classes)} classes, expected {NUM_CLASSES[name]} distinct ones")
    counts = (len(raw.train_x), len(raw.test_x))
    if expect_counts and counts != EXPECTED_COUNTS[name]:
        problems.append(f"(train, test) counts {counts}, expected {EXPECTED_COUNTS[name]}")
    if problems:
        raise DatasetFormatError(f"bad {name} data from {where}: " + "; ".join(problems))


# ---- cache ----------------------------------------------------------------------------------


def _fingerprint(path: Path) -> str:
    """Identify a user path's contents cheaply: resolved path, total size, newest mtime."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    size, newest, count = 0, 0, 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            st = os.stat(os.path.join(dirpath, f))
            size, newest, count = size + st.st_size, max(newest, st.st_mtime_ns), count + 1
    return f"{path}|{count}|{size}|{newest}"


def _read_cache(cache: Path, name: str, source: str | None = None) -> RawDataset | None:
    """The cached data set, or None if absent (or, with ``source``, built from something else)."""
    if not cache.is_file():
        return None
    try:
        d = torch.load(cache, map_location="cpu", weights_only=True)
        if d.get("version") != CACHE_VERSION or d.get("name") != name:
            return None
        if source is not None and d.get("source") != source:
            return None
        return RawDataset(
            d["train_x"],
            d["train_y"],
            d["test_x"],
            d["test_y"],
            classes=tuple(d["classes"]),
            name=name,
        )
    except Exception as err:  # unreadable cache: say which file to delete
        raise DatasetFormatError(
            f"cannot read the {name} cache {cache} ({err}); delete it to rebuild"
        ) from err


def _write_cache(cache: Path, raw: RawDataset, source: str) -> None:
    """Save atomically (``files.atomic_write``: the user's umask, never a partial file); warn if
    that fails."""
    obj = {
        "version": CACHE_VERSION,
        "name": raw.name,
        "source": source,
        "classes": list(raw.classes),
        "train_x": raw.train_x,
        "train_y": raw.train_y,
        "test_x": raw.test_x,
        "test_y": raw.test_y,
    }
    from paperlib.files import atomic_write

    try:
        atomic_write(cache, lambda f: torch.save(obj, f))
    except OSError as err:
        warnings.warn(f"could not write the data cache {cache}: {err}", stacklevel=3)


# ---- synthetic ------------------------------------------------------------------------------


def make_synthetic(
    n_train: int = 2_000, n_test: int = 1_000, num_classes: int = 10, seed: int = SYNTHETIC_SEED
) -> RawDataset:
    """A learnable CIFAR-shaped fake: per class a fixed low-frequency template plus pixel noise.

    Nearest-class-mean accuracy is ~100%, 1-nearest-neighbour ~85%: easy for a CNN, not trivial.

    Args:
        n_train, n_test: sizes (classes balanced up to one, order shuffled).
        num_classes: number of classes (10 keeps CIFAR-10's class names).
        seed: generator seed; the default gives the data set ``load_dataset("synthetic")`` returns.

    Returns:
        RawDataset named "synthetic" (uint8 [n, 3, 32, 32]).

    Raises:
        ValueError: non-positive sizes or a num_classes other than 10.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    if num_classes != len(CIFAR10_CLASSES):
        raise ValueError(f"num_classes must be {len(CIFAR10_CLASSES)}, got {num_classes}")
    g = torch.Generator().manual_seed(seeding.derive_seed(seed))
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(
        coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False
    )
    base = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        x = base + 12.0 * templates[y] + 60.0 * noise  # separable by class means, not by 1-NN
        return x.round().clamp(0, 255).to(torch.uint8), y

    return RawDataset(*split(n_train), *split(n_test), classes=CIFAR10_CLASSES, name="synthetic")


# ----------------------------------------------------------------------------------------------
# On-device data
# ----------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded, class-balanced choice of ``n`` indices (a pure function of labels, n, seed).

    Each class contributes ``n // K`` or ``n // K + 1`` examples (which classes get the extra one
    is random); a class with too few examples gives all it has and the rest is spread over the
    others.

    Args:
        labels: int64 [N] labels (any device; the draw runs on the CPU).
        n: subset size, 1 <= n <= N.
        seed: non-negative seed (stream ``STREAM_SUBSET``).

    Returns:
        Sorted int64 CPU tensor [n] of distinct indices into ``labels``.

    Raises:
        ValueError: n out of range.
    """
    total = len(labels)
    if not _is_int(n) or not 1 <= n <= total:
        raise ValueError(f"subset must be an int with 1 <= subset <= {total}, got {n!r}")
    n = int(n)
    labels = labels.cpu()
    g = seeding.generator(seed, seeding.STREAM_SUBSET)
    perm = torch.randperm(total, generator=g)
    num_classes = int(labels.max()) + 1
    class_priority = torch.randperm(num_classes, generator=g)
    # Rank of each example within its class, in random order.
    y = labels[perm]
    order = torch.argsort(y, stable=True)
    sorted_y = y[order]
    starts = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty(total, dtype=torch.int64)
    rank[order] = torch.arange(total) - starts
    # Take everyone's 0th, then 1st, ... example, classes in a random order within a rank.
    key = rank * num_classes + class_priority[y]
    chosen = perm[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


def downsample(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool float images [n, C, 32, 32] to [n, C, r, r] (area down-sampling).

    Raises:
        ValueError: resolution not in ``RESOLUTIONS``.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be one of {RESOLUTIONS} (divisors of 32), got {resolution!r}"
        )
    k = IMAGE_SIZE // resolution
    return x if k == 1 else F.avg_pool2d(x, kernel_size=k)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """Random crop with ``padding`` (padded with per-channel ``fill``) then random h-flip.

    One gather for the whole batch (no loop over examples); output values are taken from ``x``
    or ``fill`` only.

    Args:
        x: float [B, C, H, W] on any device.
        generator: torch.Generator on ``x``'s device.
        padding: pixels of padding per side (>= 0).
        fill: [C] padding value per channel (e.g. black after normalization).

    Returns:
        Tensor with the shape, dtype and device of ``x``.

    Raises:
        ValueError: bad shape, negative padding, fill size, or generator on another device.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    if fill.shape != (c,):
        raise ValueError(f"fill must have shape ({c},), got {tuple(fill.shape)}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, data on {x.device}")
    dev = x.device
    padded = (
        fill.to(device=dev, dtype=x.dtype)
        .view(1, c, 1, 1)
        .expand(b, c, h + 2 * padding, w + 2 * padding)
        .clone()
    )
    padded[:, :, padding : padding + h, padding : padding + w] = x
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], ar_w.flip(0)[None, :], ar_w[None, :]) + ox[:, None]
    rows = ar_h[None, :] + oy[:, None]
    return padded[
        torch.arange(b, device=dev).view(b, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        rows.view(b, 1, h, 1),
        cols.view(b, 1, 1, w),
    ]


@dataclass(frozen=True, eq=False)
class DeviceData:
    """Normalized float images and labels on one device (build with ``prepare``).

    Attributes:
        train_x: [n_train, C, r, r]; train_y: int64 [n_train]; test_x / test_y likewise.
        name, classes: from the RawDataset.
        mean, std: the per-channel normalization applied to [0, 1] pixels.
        resolution: r.
        subset_indices: CPU int64 indices of the training subset into the raw train set, or None.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    subset_indices: torch.Tensor | None = None

    @property
    def train_size(self) -> int:
        return len(self.train_x)

    @property
    def test_size(self) -> int:
        return len(self.test_x)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def padding(self) -> int:
        """Crop padding: 4 at 32x32, scaled with the resolution, at least 1."""
        return max(1, CROP_PADDING * self.resolution // IMAGE_SIZE)

    @cached_property
    def fill(self) -> torch.Tensor:
        """[C] value of a black pixel after normalization (the crop padding value)."""
        # Same float32 arithmetic as ``prepare`` so the value equals a normalized black pixel.
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return ((torch.zeros(len(mean)) - mean) / std).to(self.device, self.train_x.dtype)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (padding ``self.padding``, black fill) + horizontal flip of a batch.

        Args:
            x: [B, C, r, r] on this data's device; generator: torch.Generator on that device.

        Returns:
            [B, C, r, r], same dtype and device.
        """
        return augment_batch(x, generator, padding=self.padding, fill=self.fill)

    def batch(
        self,
        indices: torch.Tensor,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples at ``indices`` (no bounds check beyond torch's own).

        Args:
            indices: int64 [B] (moved to this device if needed).
            augment: apply ``self.augment``; needs ``generator``.
            generator: torch.Generator on this device.

        Returns:
            (x [B, C, r, r], y int64 [B]) on this device.

        Raises:
            ValueError: non-integer / non-1-D indices, or augment without a generator.
        """
        if indices.dim() != 1 or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"indices must be a 1-D int64 tensor, got {indices.dtype} {tuple(indices.shape)}"
            )
        if augment and generator is None:
            raise ValueError("augment=True needs a generator (paperlib.seeding.generator(...))")
        indices = indices.to(self.device)
        x, y = self.train_x[indices], self.train_y[indices]
        return (self.augment(x, generator) if augment else x), y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in order, in slices of ``batch_size`` (the last may be smaller)."""
        return _slices(self.test_x, self.test_y, batch_size)

    def train_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (unaugmented) training set in order, e.g. for full-batch gradients."""
        return _slices(self.train_x, self.train_y, batch_size)


def _slices(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order slices of (x, y); validates ``batch_size`` eagerly."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    b = int(batch_size)
    return ((x[i : i + b], y[i : i + b]) for i in range(0, len(x), b))


def prepare(
    raw: RawDataset,
    *,
    subset: int | None = None,
    resolution: int = IMAGE_SIZE,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DeviceData:
    """Move a RawDataset to ``device`` as normalized float images, optionally subset/down-sampled.

    Args:
        raw: the decoded data set.
        subset: if given, keep a seeded class-balanced subset of this many training examples
            (1 <= subset <= n_train); the test set stays complete.
        resolution: side r in ``RESOLUTIONS``; images are average-pooled to r x r.
        device: target device.
        seed: subset seed.
        dtype: a floating dtype for the images.

    Returns:
        DeviceData with train_x [n, 3, r, r] (dtype, device) and int64 labels on ``device``.

    Raises:
        ValueError: bad subset, resolution or dtype, or unknown data set name.
    """
    if raw.name not in NORMALIZATION:
        raise ValueError(f"unknown dataset {raw.name!r}; expected one of {tuple(NORMALIZATION)}")
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be one of {RESOLUTIONS} (divisors of 32), got {resolution!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    device = torch.device(device)
    train_x, train_y, chosen = raw.train_x, raw.train_y, None
    if subset is not None:
        chosen = balanced_subset(raw.train_y, subset, seed)
        train_x, train_y = train_x[chosen], train_y[chosen]
    mean, std = NORMALIZATION[raw.name]

    def to_device(x: torch.Tensor) -> torch.Tensor:
        # uint8 travels (4x smaller), then [0, 1] -> pool -> normalize in float32, then cast.
        x = x.to(device).to(torch.float32).div_(255.0)
        x = downsample(x, resolution)
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        return x.sub_(m).div_(s).to(dtype).contiguous()

    return DeviceData(
        train_x=to_device(train_x),
        train_y=train_y.to(device),
        test_x=to_device(raw.test_x),
        test_y=raw.test_y.to(device),
        name=raw.name,
        classes=raw.classes,
        mean=tuple(mean),
        std=tuple(std),
        resolution=resolution,
        subset_indices=chosen,
    )


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _permutation(n: int, *keys: int) -> torch.Tensor:
    """randperm(n) from ``seeding.generator(*keys)`` (cached: reshuffle reuses it for an epoch)."""
    return torch.randperm(n, generator=seeding.generator(*keys))


@dataclass(frozen=True)
class Sampler:
    """Minibatch indices as a pure function of (seed, step): the paper's sampling schemes.

    Attributes:
        kind: "reshuffle" (new permutation each epoch, consecutive slices, drop_last), "iid"
            (each batch independent, distinct indices within it), "replacement" (uniform with
            replacement) or "fixed" (one permutation from the seed, same order every epoch).
        n: number of training examples.
        batch_size: B, 1 <= B <= n.
        seed: non-negative run seed (stream ``STREAM_BATCH``).
    """

    kind: str
    n: int
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; expected one of {SAMPLERS}")
        for field, value in (("n", self.n), ("batch_size", self.batch_size), ("seed", self.seed)):
            if not _is_int(value):
                raise ValueError(f"{field} must be an int, got {value!r}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 1 <= self.batch_size <= self.n:
            raise ValueError(
                f"batch_size must satisfy 1 <= batch_size <= n={self.n}, got {self.batch_size}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def steps_per_epoch(self) -> int:
        """n // batch_size (a nominal epoch for "iid" and "replacement")."""
        return self.n // self.batch_size

    def indices(self, step: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """The batch of step ``step`` (0-based): int64 [batch_size] on ``device``.

        Raises:
            ValueError: step not a non-negative int.
        """
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        b, stream = self.batch_size, seeding.STREAM_BATCH
        if self.kind in ("reshuffle", "fixed"):
            epoch, pos = divmod(step, self.steps_per_epoch)
            keys = (self.seed, stream, epoch) if self.kind == "reshuffle" else (self.seed, stream)
            out = _permutation(self.n, *keys)[pos * b : (pos + 1) * b].clone()
        elif self.kind == "iid":
            out = torch.randperm(self.n, generator=seeding.generator(self.seed, stream, step))[:b]
        else:
            g = seeding.generator(self.seed, stream, step)
            out = torch.randint(0, self.n, (b,), generator=g)
        return out.to(device)
