"""The accepted on-disk formats of the real data sets and their decoders, and the synthetic set.

Five sources decode to one ``RawDataset`` (uint8 NCHW tensors on the CPU): an ImageFolder tree,
a tar archive (of such a tree or of the pickled batches), the pickled CIFAR-10 / CIFAR-100
batches, SVHN's ``.mat`` files, and the seeded synthetic stand-in generated in memory. Where a
data set is looked for, and the decoded ``.pt`` cache, are in ``paperlib.data.loading``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from paperlib import seeding
from paperlib.constants import CIFAR10_CLASSES, CIFAR10_MEAN, IMAGE_SIZE

SVHN_CLASSES = tuple(str(d) for d in range(10))
SYNTHETIC_SEED = 20210101  # fixed: the synthetic set is the same everywhere
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


# ---- what torchvision downloads, and user paths ---------------------------------------------


def read_downloaded(name: str, root: Path) -> RawDataset:
    """Parse what ``loading._download`` left in ``root`` with the same readers as user paths."""
    if name == "svhn":
        return _read_svhn(root)
    return _read_pickles(name, _dir_reader(root / _PICKLE_LAYOUTS[name][0]))


def read_user_path(name: str, path: Path) -> RawDataset:
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
