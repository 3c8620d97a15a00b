"""Where a data set comes from, in order, and the decoded ``.pt`` cache.

Loading order for a real data set (``load_dataset``):

1. a user path (``path=`` or ``CIFAR10_PATH`` / ``CIFAR100_PATH`` / ``SVHN_PATH``): an ImageFolder
   tree, a tar archive of one, or the standard pickled / ``.mat`` files (``formats``);
2. the decoded cache ``<root>/<name>.pt``;
3. a torchvision download into ``root``, parsed by the same readers as (1).

Whatever arrives is checked (shapes, dtypes, classes, the official counts) before it is cached.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from paperlib import paths
from paperlib.constants import CIFAR10_CLASSES, DATASET_CLASSES, DATASET_SIZES, DATASETS

from .formats import (
    ACCEPTED_FORMATS,
    SVHN_CLASSES,
    DatasetFormatError,
    DatasetNotFoundError,
    RawDataset,
    make_synthetic,
    read_downloaded,
    read_user_path,
)

ENV_VARS = {"cifar10": "CIFAR10_PATH", "cifar100": "CIFAR100_PATH", "svhn": "SVHN_PATH"}
CACHE_VERSION = 1


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
        raw = _read_or_explain(name, path, origin, lambda: read_user_path(name, path))
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
                           lambda: read_downloaded(name, root))
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
    elif len(set(raw.classes)) != (k := DATASET_CLASSES[name]) or len(raw.classes) != k:
        problems.append(f"{len(raw.classes)} classes, expected {k} distinct ones")
    counts = (len(raw.train_x), len(raw.test_x))
    if expect_counts and counts != DATASET_SIZES[name]:
        problems.append(f"(train, test) counts {counts}, expected {DATASET_SIZES[name]}")
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
