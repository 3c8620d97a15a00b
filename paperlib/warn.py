"""Warnings that point at the user's line: the first frame outside paperlib and the libraries
that call it (torch, Lightning, Hugging Face), not the paperlib line that raised them.

A warning from a callback otherwise names a line inside ``transformers`` or ``lightning`` (the
frame that called the hook), which says nothing to the user; Python's ``skip_file_prefixes``
(3.12) would do this, but paperlib supports 3.10 and 3.11.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["warn_user"]

# modules whose frames are skipped: paperlib's own and the frameworks that call its callbacks
LIBRARIES = ("paperlib", "torch", "transformers", "accelerate", "lightning", "pytorch_lightning")


def _in_library(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in LIBRARIES)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost frame outside
    ``LIBRARIES`` (the user's training loop, ``trainer.fit(...)`` or ``trainer.train()``)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: warn_user's caller
    while frame.f_back is not None and _in_library(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
