"""Where the project keeps data: `PAPERLIB_DATA` if set, else `<repo>/data`.

Decoded data sets are cached there (gitignored); run results live in `<data>/runs/`.
"""

import os
from pathlib import Path


def data_root() -> Path:
    env = os.environ.get("PAPERLIB_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def runs_root() -> Path:
    return data_root() / "runs"
