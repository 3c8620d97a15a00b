"""Tests for paperlib.data: loaders on tiny fake archives, cache, subset, resolution and
augmentation (the samplers: test_samplers.py). No network; the real CIFAR-10 test runs only with
CIFAR10_PATH set."""

import os
import pickle
import shutil
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from paperlib import data, seeding
from paperlib.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from paperlib.data import loading

MIRROR = os.environ.get("CIFAR10_PATH")  # read before the autouse fixture clears it
N_TRAIN, N_TEST = 3, 2  # fake images per class


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in loading.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


def _pixels(split: str, label: int, i: int) -> np.ndarray:
    """Deterministic HWC uint8 image for (split, label, i)."""
    rng = np.random.default_rng([split == "train", label, i])
    return rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def _expected(n_classes: int = 10):
    """Expected (train_x, train_y, test_x, test_y) in (class, index) order, NCHW."""
    out = []
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        keys = [(c, i) for c in range(n_classes) for i in range(n)]
        x = np.stack([_pixels(split, c, i) for c, i in keys]).transpose(0, 3, 1, 2)
        out += [torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([c for c, _ in keys])]
    return out


def _assert_matches(raw, expected, classes=CIFAR10_CLASSES):
    assert raw.classes == classes
    got = (raw.train_x, raw.train_y, raw.test_x, raw.test_y)
    for g, want in zip(got, expected, strict=True):
        assert g.dtype == want.dtype and torch.equal(g, want)
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape[1:] == (3, 32, 32)
    assert raw.train_y.dtype == torch.int64 and raw.test_y.dtype == torch.int64


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Fake CIFAR-10 sources: ImageFolder tree (one level down), its .tar.gz, pickled batches."""
    base = tmp_path_factory.mktemp("fakes")
    tree = base / "tree"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c, name in enumerate(CIFAR10_CLASSES):
            d = tree / "cifar10-png" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_pixels(split, c, i)).save(d / f"{i:04d}.png")
    (tree / "cifar10-png" / "README.txt").write_text("ignored")
    tgz = base / "cifar10-png.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        # Reverse order: the reader must not depend on the archive order.
        for f in sorted((tree / "cifar10-png").rglob("*"), reverse=True):
            tf.add(f, arcname=str(f.relative_to(tree)), recursive=False)

    train_x, train_y, test_x, test_y = _expected()
    batches = base / "py" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    flat = train_x.numpy().reshape(len(train_x), -1)
    parts = np.array_split(np.arange(len(train_x)), 5)
    for k, idx in enumerate(parts, start=1):  # bytes keys, as the real (py2) pickles load
        obj = {b"data": flat[idx], b"labels": train_y[idx].tolist(), b"batch_label": b"x"}
        (batches / f"data_batch_{k}").write_bytes(pickle.dumps(obj))
    obj = {b"data": test_x.numpy().reshape(len(test_x), -1), b"labels": test_y.tolist()}
    (batches / "test_batch").write_bytes(pickle.dumps(obj))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta))
    py_tgz = base / "cifar-10-python.tar.gz"
    with tarfile.open(py_tgz, "w:gz") as tf:
        tf.add(batches, arcname="cifar-10-batches-py")
    return {"tree": tree, "tgz": tgz, "batches": batches, "py_tgz": py_tgz}


# ---- loaders ---------------------------------------------------------------------------------


def test_imagefolder_tree(fakes, tmp_path):
    expected = _expected()
    for path in (fakes["tree"], fakes["tree"] / "cifar10-png"):  # one level down, or the tree
        raw = data.load_dataset("cifar10", path=path, root=tmp_path, expect_counts=False)
        assert raw.name == "cifar10"
        _assert_matches(raw, expected)


def test_imagefolder_tar_gz(fakes, tmp_path):
    raw = data.load_dataset("cifar10", path=fakes["tgz"], root=tmp_path, expect_counts=False)
    _assert_matches(raw, _expected())


def test_cifar10_batches_folder_parent_and_archive(fakes, tmp_path):
    expected = _expected()
    for path in (fakes["batches"], fakes["batches"].parent, fakes["py_tgz"]):
        raw = data.load_dataset("cifar10", path=path, root=tmp_path, expect_counts=False)
        _assert_matches(raw, expected)


def test_env_var_path(fakes, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_PATH", str(fakes["tgz"]))
    raw = data.load_dataset("cifar10", root=tmp_path, expect_counts=False)
    _assert_matches(raw, _expected())


def test_cifar100_folder(tmp_path):
    folder = tmp_path / "c100" / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class{i:03d}" for i in range(100)]
    rng = np.random.default_rng(0)
    split_data = {}
    for split, n in (("train", 7), ("test", 5)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, 100, size=n).tolist()
        split_data[split] = (x, y)
        obj = {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * n}
        (folder / split).write_bytes(pickle.dumps(obj))
    meta = {b"fine_label_names": [s.encode() for s in names], b"coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    for path in (folder, folder.parent):
        raw = data.load_dataset("cifar100", path=path, root=tmp_path, expect_counts=False)
        assert raw.classes == tuple(names) and raw.num_classes == 100
        x, y = split_data["train"]
        assert torch.equal(raw.train_x, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
        assert raw.train_y.tolist() == y and raw.train_y.dtype == torch.int64
        assert raw.test_x.shape == (5, 3, 32, 32) and raw.test_y.tolist() == split_data["test"][1]


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    want = {}
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [3]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        want[split] = (x, y)
    raw = data.load_dataset("svhn", path=tmp_path, root=tmp_path / "cache", expect_counts=False)
    assert raw.classes == tuple("0123456789")
    x, y = want["train"]
    assert raw.train_x.shape == (6, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert torch.equal(raw.train_x[2], torch.from_numpy(x[:, :, :, 2].transpose(2, 0, 1).copy()))
    assert raw.train_y.tolist() == [0, 1, 2, 0, 9, 3]  # label 10 is digit 0
    assert raw.test_y.tolist() == [0, 1, 2, 0]


def test_offline_error_names_all_options(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("cifar10", root=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "CIFAR10_PATH" in msg and "make figures CIFAR10=" in msg
    assert str(tmp_path / "cifar10.pt") in msg
    assert "torchvision" in msg and "no route to host" in msg
    with pytest.raises(data.DatasetNotFoundError, match="download=False"):
        data.load_dataset("cifar10", root=tmp_path, download=False)


def test_download_parsed_and_cached(fakes, tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_download(root, train, download):  # what torchvision leaves in root
        calls.append((train, download))
        shutil.copytree(
            fakes["batches"], os.path.join(root, "cifar-10-batches-py"), dirs_exist_ok=True
        )

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    raw = data.load_dataset("cifar10", root=tmp_path, expect_counts=False)
    assert calls == [(True, True), (False, True)]
    _assert_matches(raw, _expected())
    assert (tmp_path / "cifar10.pt").is_file()
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    again = data.load_dataset("cifar10", root=tmp_path, expect_counts=False)
    assert len(calls) == 2 and torch.equal(again.train_x, raw.train_x)


def test_bad_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.*ImageFolder"):
        data.load_dataset("cifar10", path=tmp_path / "nowhere", root=tmp_path)
    monkeypatch.setenv("CIFAR10_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="CIFAR10_PATH"):
        data.load_dataset("cifar10", root=tmp_path)
    junk = tmp_path / "junk.txt"
    junk.write_text("not data")
    with pytest.raises(data.DatasetFormatError, match="junk.txt.*cifar-10-batches-py"):
        data.load_dataset("cifar10", path=junk, root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetFormatError, match="empty"):
        data.load_dataset("cifar10", path=empty, root=tmp_path)
    with pytest.raises(ValueError, match="imagenet.*cifar10"):
        data.load_dataset("imagenet")


def _damaged(kind: str, fakes, tmp_path):
    """A data source of each damaged kind, with the name of the data set it claims to be."""
    if kind == "truncated archive":  # `head -c` half of it: gzip's EOFError before
        path = tmp_path / "half.tar.gz"
        blob = fakes["tgz"].read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
        return "cifar10", path
    if kind == "corrupt image":
        path = tmp_path / "tree"
        shutil.copytree(fakes["tree"], path)
        next(path.rglob("*.png")).write_bytes(b"\x89PNG not really")
        return "cifar10", path
    if kind == "corrupt pickle":
        path = tmp_path / "batches"
        shutil.copytree(fakes["batches"], path)
        (path / "data_batch_1").write_bytes(b"\x80\x04 truncated")
        return "cifar10", path
    path = tmp_path / "svhn"  # a .mat file that is not one
    path.mkdir()
    for split in ("train", "test"):
        (path / f"{split}_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, damaged")
    return "svhn", path


@pytest.mark.parametrize("kind", ["truncated archive", "corrupt image", "corrupt pickle",
                                  "corrupt mat"])
def test_unreadable_files_are_the_librarys_error_naming_the_path(kind, fakes, tmp_path):
    name, path = _damaged(kind, fakes, tmp_path)
    with pytest.raises(data.DatasetFormatError) as info:
        data.load_dataset(name, path=path, root=tmp_path / "cache", expect_counts=False)
    msg = str(info.value)
    assert str(path) in msg and "damaged or incomplete" in msg and "fetch it again" in msg
    assert not (tmp_path / "cache").exists()  # no cache of a bad read


def test_cli_reports_a_truncated_archive_and_writes_nothing(fakes, tmp_path, monkeypatch,
                                                             capsys):
    from paperlib.__main__ import main

    _, path = _damaged("truncated archive", fakes, tmp_path)
    monkeypatch.setenv("CIFAR10_PATH", str(path))
    monkeypatch.setenv("PAPERLIB_DATA", str(tmp_path / "data"))
    code = main(["train", "--preset", "smoke", "--device", "cpu", "--store",
                 str(tmp_path / "store"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot read the cifar10 data at"), err
    assert str(path) in err and "CIFAR10_PATH" in err
    assert not (tmp_path / "store").exists() and not (tmp_path / "data").exists()


def test_wrong_classes_and_counts(fakes, tmp_path):
    tree = tmp_path / "two"
    for split in ("train", "test"):
        for c in ("cats", "dogs"):
            (tree / split / c).mkdir(parents=True)
            Image.fromarray(_pixels(split, 0, 0)).save(tree / split / c / "0.png")
    with pytest.raises(data.DatasetFormatError, match="classes"):
        data.load_dataset("cifar10", path=tree, root=tmp_path, expect_counts=False)
    with pytest.raises(data.DatasetFormatError, match="counts"):
        data.load_dataset("cifar10", path=fakes["tgz"], root=tmp_path)


def test_cache_hit_and_identical(fakes, tmp_path, monkeypatch):
    src = tmp_path / "src.tar.gz"
    shutil.copy(fakes["tgz"], src)
    root = tmp_path / "cache"
    first = data.load_dataset("cifar10", path=src, root=root, expect_counts=False)
    assert (root / "cifar10.pt").is_file()
    assert not [p for p in root.iterdir() if p.name != "cifar10.pt"]  # no temp files left

    # Same unchanged user path: served from the cache, no decoding.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(loading, "read_user_path", no_decode)
        again = data.load_dataset("cifar10", path=src, root=root, expect_counts=False)

    src.unlink()  # no user path: the cache alone
    cached = data.load_dataset("cifar10", root=root, expect_counts=False)
    for a, b, c in zip(
        (first.train_x, first.train_y, first.test_x, first.test_y),
        (again.train_x, again.train_y, again.test_x, again.test_y),
        (cached.train_x, cached.train_y, cached.test_x, cached.test_y),
        strict=True,
    ):
        assert torch.equal(a, b) and torch.equal(a, c) and a.dtype == c.dtype
    assert cached.classes == first.classes == CIFAR10_CLASSES


def test_synthetic():
    a, b = data.load_dataset("synthetic"), data.load_dataset("synthetic")
    assert a.train_x.shape == (2000, 3, 32, 32) and a.test_x.shape == (1000, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.classes == CIFAR10_CLASSES
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_y.bincount().tolist() == [200] * 10
    # Learnable: class means of train classify the test set.
    x = a.train_x.flatten(1).float()
    means = torch.stack([x[a.train_y == c].mean(0) for c in range(10)])
    pred = torch.cdist(a.test_x.flatten(1).float(), means).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.9


# ---- on-device data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth():
    return data.load_dataset("synthetic")


def test_prepare_normalizes(synth):
    d = data.prepare(synth)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    want = (synth.test_x.float() / 255 - mean) / std
    torch.testing.assert_close(d.test_x, want)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert (d.train_size, d.test_size, d.num_classes, d.in_channels, d.resolution) == (
        2000,
        1000,
        10,
        3,
        32,
    )
    d64 = data.prepare(synth, dtype=torch.float64, subset=10)
    assert d64.train_x.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype"):
        data.prepare(synth, dtype=torch.int32)


def test_subset_deterministic_balanced(synth):
    a = data.prepare(synth, subset=105, seed=3)
    b = data.prepare(synth, subset=105, seed=3)
    c = data.prepare(synth, subset=105, seed=4)
    assert torch.equal(a.subset_indices, b.subset_indices) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.subset_indices, c.subset_indices)
    assert a.train_size == 105 and a.test_size == 1000  # test set complete
    assert len(set(a.subset_indices.tolist())) == 105
    counts = a.train_y.bincount(minlength=10)
    assert counts.min() == 10 and counts.max() == 11
    assert torch.equal(a.train_y, synth.train_y[a.subset_indices])
    for bad in (0, 2001, -1, 2.5):
        with pytest.raises(ValueError, match="subset"):
            data.prepare(synth, subset=bad)


def test_subset_with_small_class():
    labels = torch.tensor([0] * 2 + [1] * 20 + [2] * 20)
    idx = data.balanced_subset(labels, 12, seed=0)
    assert labels[idx].bincount().tolist() == [2, 5, 5]


def test_resolution_is_block_average(synth):
    full = data.prepare(synth, subset=20, seed=1)
    low = data.prepare(synth, subset=20, seed=1, resolution=8)
    assert low.train_x.shape == (20, 3, 8, 8) and low.resolution == 8
    blocks = full.train_x.reshape(20, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    torch.testing.assert_close(low.train_x, blocks, rtol=1e-5, atol=1e-5)
    assert data.prepare(synth, subset=10, resolution=1).train_x.shape == (10, 3, 1, 1)
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 8, 16, 32\)"):
        data.prepare(synth, resolution=12)
    assert [data.prepare(synth, subset=10, resolution=r).padding for r in (32, 16, 8, 4)] == [
        4,
        2,
        1,
        1,
    ]


def _aug_gen(seed=0, step=0):
    return seeding.generator(seed, seeding.STREAM_AUGMENT, step)


def test_augment_properties(synth):
    d = data.prepare(synth, subset=64)
    x = d.train_x
    out = d.augment(x, _aug_gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    lo = torch.minimum(x.min(), d.fill.min())
    assert out.min() >= lo and out.max() <= x.max()
    assert torch.equal(out, d.augment(x, _aug_gen()))  # same generator seed, same result
    assert not torch.equal(out, d.augment(x, _aug_gen(step=1)))
    assert not torch.equal(out, x)
    # Black padding: a black pixel normalized equals the fill value.
    black = (torch.zeros(3) - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    torch.testing.assert_close(d.fill, black, rtol=0, atol=0)


def test_augment_is_crop_then_flip(synth):
    d = data.prepare(synth, subset=24, resolution=16)
    x, p = d.train_x, d.padding
    out = d.augment(x, _aug_gen(5))
    padded = d.fill.view(1, 3, 1, 1).expand(24, 3, 16 + 2 * p, 16 + 2 * p).clone()
    padded[:, :, p:-p, p:-p] = x
    flips = 0
    for i in range(len(x)):
        crops = [
            padded[i, :, oy : oy + 16, ox : ox + 16]
            for oy in range(2 * p + 1)
            for ox in range(2 * p + 1)
        ]
        plain = any(torch.equal(out[i], c) for c in crops)
        flipped = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < len(x)


def test_batch_and_test_batches(synth):
    d = data.prepare(synth, subset=50)
    idx = torch.tensor([3, 1, 4, 1, 5])
    x, y = d.batch(idx)
    assert torch.equal(x, d.train_x[idx]) and torch.equal(y, d.train_y[idx])
    xa, ya = d.batch(idx, augment=True, generator=_aug_gen())
    assert xa.shape == x.shape and torch.equal(ya, y)
    with pytest.raises(ValueError, match="generator"):
        d.batch(idx, augment=True)
    got = list(d.test_batches(300))
    assert [len(b[0]) for b in got] == [300, 300, 300, 100]
    assert torch.equal(torch.cat([b[1] for b in got]), d.test_y)
    assert torch.equal(torch.cat([b[0] for b in got]), d.test_x)


# ---- the real data set (only with CIFAR10_PATH set) ----------------------------------------


@pytest.mark.skipif(not MIRROR, reason="set CIFAR10_PATH to run the real CIFAR-10 test")
def test_real_cifar10(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_PATH", MIRROR)
    raw = data.load_dataset("cifar10", root=tmp_path)
    assert raw.train_x.shape == (50_000, 3, 32, 32) and raw.test_x.shape == (10_000, 3, 32, 32)
    assert raw.classes == CIFAR10_CLASSES
    assert raw.train_y.bincount().tolist() == [5000] * 10
    assert raw.test_y.bincount().tolist() == [1000] * 10
    means = (raw.test_x.float() / 255).mean(dim=(0, 2, 3))
    # JPEG mirror (0.4943, 0.4853, 0.4508); original batches (0.4942, 0.4851, 0.4504).
    torch.testing.assert_close(means, torch.tensor([0.4943, 0.4853, 0.4508]), rtol=0, atol=1e-3)
    monkeypatch.delenv("CIFAR10_PATH")
    cached = data.load_dataset("cifar10", root=tmp_path)
    assert torch.equal(cached.test_x, raw.test_x) and torch.equal(cached.train_y, raw.train_y)
