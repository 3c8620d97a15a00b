"""The run store: ``run(config)`` = cached | resumed | trained.

Layout: ``<runs_root>/<run_id>/`` with ``config.json``, ``history.csv``, ``checkpoint.pt`` and
``manifest.json``. The manifest is written last (atomically) and holds the sha256 of every other
file, the status (``partial`` | ``complete`` | ``diverged``) and the code identity; a file whose
checksum does not match is never used (a truncated history is recomputed, a bad checkpoint
discarded). The run id hashes the config (minus ``device``) together with ``RESULTS_VERSION``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .config import RunConfig
from .paths import runs_root

RESULTS_VERSION = 1  # bump when a change alters what a run computes or records
FILES = ("config.json", "history.csv")


class StaleResultError(RuntimeError):
    """A result needed by a notebook under test is missing or stale (training is not allowed)."""


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    history: pd.DataFrame  # one row per logged step (see train.HISTORY_COLUMNS)
    status: str  # complete | diverged
    diverged_step: int | None
    path: Path
    meta: dict  # the manifest (wall time, versions, device)

    @property
    def final(self) -> pd.Series:
        """The last history row with a test evaluation."""
        evaluated = self.history.dropna(subset=["test_acc"])
        return evaluated.iloc[-1] if len(evaluated) else self.history.iloc[-1]


def run_id(config: RunConfig) -> str:
    """sha256 of the config (device excluded: a result is valid on any device) + version."""
    d = config.to_dict()
    d.pop("device")
    blob = json.dumps({"config": d, "results_version": RESULTS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_dir(config: RunConfig, root: Path | str | None = None) -> Path:
    return Path(root or runs_root()) / run_id(config)


# --- atomic, checksummed files ------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def history_to_csv(history: pd.DataFrame) -> bytes:
    return history.to_csv(index=False, float_format="%.17g").encode()


def read_history(path: Path) -> pd.DataFrame:
    from .train import history_frame

    return history_frame(pd.read_csv(path))


def _write_manifest(d: Path, status: str, extra: dict) -> dict:
    files = {name: _sha256(d / name) for name in (*FILES, "checkpoint.pt") if (d / name).exists()}
    manifest = {
        "status": status,
        "files": files,
        "results_version": RESULTS_VERSION,
        "paperlib_version": __version__,
        "torch_version": torch.__version__,
        **extra,
    }
    atomic_write_bytes(d / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def load_manifest(d: Path) -> dict | None:
    """The manifest if it parses and every file it lists matches its checksum, else None."""
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        for name, digest in manifest["files"].items():
            if _sha256(d / name) != digest:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_result(config: RunConfig, root: Path | str | None = None) -> RunResult | None:
    """The finished (complete or diverged) result of ``config`` if stored intact, else None."""
    d = run_dir(config, root)
    manifest = load_manifest(d)
    if manifest is None or manifest["status"] not in ("complete", "diverged"):
        return None
    if any(name not in manifest["files"] for name in FILES):
        return None
    return RunResult(config, read_history(d / "history.csv"), manifest["status"],
                     manifest.get("diverged_step"), d, manifest)


# --- run(config) ----------------------------------------------------------------------------

def run(
    config: RunConfig,
    root: Path | str | None = None,
    *,
    allow_train: bool = True,
    progress: bool = True,
    step_callback=None,
) -> RunResult:
    """Return the result of ``config``: from the store when complete, else resume or train.

    Args:
        allow_train: False (notebooks under test) raises StaleResultError instead of training.
        step_callback: called as ``step_callback(step)`` after every optimizer step (tests use
            it to simulate a killed run).
    """
    from .train import train  # train imports data/models; keep the store importable alone

    cached = load_result(config, root)
    if cached is not None:
        return cached
    d = run_dir(config, root)
    if not allow_train:
        raise StaleResultError(
            f"result {d} is missing or stale for run [{config.summary()}]; regenerate it with "
            "`make figures` (or the notebook at its preset) outside the tests"
        )
    resume = _load_checkpoint(d)
    if resume is None and d.exists():
        shutil.rmtree(d)  # partial or corrupt leftovers: start clean
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / "config.json", json.dumps(config.to_dict(), indent=1).encode())
    t0 = time.time()
    wall_before = resume["wall_s"] if resume else 0.0

    def save_checkpoint(state: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "wall_s": wall_before + time.time() - t0}, buf)
        atomic_write_bytes(d / "checkpoint.pt", buf.getvalue())
        atomic_write_bytes(d / "history.csv", history_to_csv(pd.DataFrame(state["history"])))
        _write_manifest(d, "partial", {"step": state["step"]})

    result = train(config, resume=resume, on_checkpoint=save_checkpoint, progress=progress,
                   step_callback=step_callback)
    atomic_write_bytes(d / "history.csv", history_to_csv(result.history))
    save_checkpoint(result.state)
    manifest = _write_manifest(d, result.status, {
        "step": result.state["step"],
        "diverged_step": result.diverged_step,
        "wall_s": wall_before + time.time() - t0,
        "device": result.device,
    })
    return RunResult(config, read_history(d / "history.csv"), result.status,
                     result.diverged_step, d, manifest)


def _load_checkpoint(d: Path) -> dict | None:
    manifest = load_manifest(d)
    if manifest is None or "checkpoint.pt" not in manifest["files"]:
        return None
    return torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
