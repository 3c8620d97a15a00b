"""Small file primitives shared by the run store, the claims and the figures: atomic writes,
checksums, and the error raised when a result must exist but does not."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["StaleResultError", "atomic_write_bytes", "sha256"]


class StaleResultError(RuntimeError):
    """A result needed by a notebook under test is missing or stale (training is not allowed)."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``: a reader (or a
    killed writer) never sees a half-written file."""
    path = Path(path)
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
