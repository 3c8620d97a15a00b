"""Small file primitives shared by the run store, the claims and the figures: atomic writes,
checksums, and the error raised when a result must exist but does not."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["StaleResultError", "atomic_write", "atomic_write_bytes", "sha256"]


class StaleResultError(RuntimeError):
    """A result needed by a notebook under test is missing or stale (training is not allowed)."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` into a temporary file next to ``path``, fsync, then rename over ``path``:
    readers (and a killed writer) see the old file or the new one, never a part of one.

    The temporary file is created with mode 0o666 minus the user's umask, as ``open`` would
    create ``path`` (``tempfile.mkstemp`` makes it 0o600, which the rename would keep).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))
