"""Theory results in the run store's checksummed format.

``@cached(name, field)`` makes ``f(S) -> DataFrame`` load from or save to
``<store>/theory/<name>-<preset>-<key>/`` (``paths.theory_root``), where ``key`` hashes the
settings ``S.<field>``, ``CACHE_VERSION`` and paperlib's version. The folder holds

* ``settings.json``: what the key hashes (experiment, preset, settings, versions);
* ``result.csv``: the frame, floats as ``%.17g`` (float64 values round-trip exactly);
* ``manifest.json``: written last, with the sha256 of both (``store.write_manifest``).

A result is used only when its manifest vouches for both files (``store.load_manifest``); a
truncated, edited or half-written result is recomputed, or, with ``PAPERLIB_NO_TRAIN=1``
(``store.training_allowed``), raises :class:`~paperlib.files.StaleResultError`. Every result used
is noted with ``store.note_result`` (``make figures`` counts stored and computed results).
The ``smoke`` preset (``S.cache`` False) always computes and never touches the store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy

from .. import __version__
from ..files import StaleResultError, atomic_write_bytes
from ..paths import theory_root
from ..store import load_manifest, note_result, numerics, training_allowed, write_manifest
from .settings import TheorySettings

CACHE_VERSION = 1  # bump when a change alters what a cached experiment computes
FILES = ("settings.json", "result.csv")


def result_dir(name: str, S: TheorySettings, field_name: str) -> tuple[Path, dict]:
    """The folder of experiment ``name``'s result for ``S.<field_name>``, and what its key
    hashes."""
    meta = {"experiment": name, "preset": S.preset,
            "settings": dataclasses.asdict(getattr(S, field_name)),
            "cache_version": CACHE_VERSION, "paperlib_version": __version__}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return theory_root(S.preset) / f"{name}-{S.preset}-{key}", meta


def roundtrip(df: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """CSV bytes of ``df`` and the frame read back from them (same dtypes fresh or stored)."""
    blob = df.to_csv(index=False, float_format="%.17g").encode()
    return blob, pd.read_csv(io.BytesIO(blob))


def load(d: Path) -> pd.DataFrame | None:
    """The stored frame in ``d`` when its manifest vouches for every file, else None."""
    manifest = load_manifest(d)
    if manifest is None or manifest.get("status") != "complete" or \
            any(name not in manifest["files"] for name in FILES):
        return None
    return pd.read_csv(d / "result.csv")


def save(d: Path, blob: bytes, meta: dict) -> None:
    """Write a result folder (files first, manifest last) and remove every other result of the
    same experiment and preset (one per experiment: older settings, older layouts)."""
    for old in d.parent.glob(f"{meta['experiment']}-{meta['preset']}-*"):
        if old.is_dir():
            shutil.rmtree(old)
        else:  # a result file of the layout before the checksummed folders
            old.unlink()
    d.mkdir(parents=True)
    atomic_write_bytes(d / "settings.json", json.dumps(meta, indent=1).encode())
    atomic_write_bytes(d / "result.csv", blob)
    write_manifest(d, "complete", {"cache_version": CACHE_VERSION, "numerics": numerics("cpu"),
                                   "numpy_version": np.__version__,
                                   "scipy_version": scipy.__version__}, files=FILES)


def cached(name: str, field_name: str):
    """Decorator: ``f(S)`` is loaded from / stored to its result folder (:func:`result_dir`)
    when ``S.cache``; otherwise (``smoke``) computed every time."""

    def wrap(compute: Callable[[TheorySettings], pd.DataFrame]):
        @functools.wraps(compute)
        def run(S: TheorySettings) -> pd.DataFrame:
            if not isinstance(S, TheorySettings):
                raise ValueError(f"expected TheorySettings (theory.settings(preset)), got {S!r}")
            if not S.cache:
                return roundtrip(compute(S))[1]
            d, meta = result_dir(name, S, field_name)
            df = load(d)
            if df is not None:
                note_result("theory", d.name, "stored")
                return df
            if not training_allowed():
                why = "not stored" if not d.exists() else \
                    "a file is missing or does not match the checksum in its manifest"
                raise StaleResultError(
                    f"theory result {d} is missing or stale ({why}; PAPERLIB_NO_TRAIN is set); "
                    f"regenerate it by running the theory notebooks at PRESET={S.preset!r} "
                    "(make figures) outside the tests")
            blob, df = roundtrip(compute(S))
            save(d, blob, meta)
            note_result("theory", d.name, "computed")
            return df

        return run

    return wrap


def fmt(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A copy of ``df`` with floats as strings of ``digits`` significant digits (stable output)."""
    return df.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else v)
