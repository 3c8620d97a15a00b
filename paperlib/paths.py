"""Where the project keeps things; each location has its own override.

* ``data_root()``: decoded data sets and torchvision downloads (``PAPERLIB_DATA``, else
  ``<repo>/data``). Gitignored: nothing derived from a data set is committed.
* ``store_root(preset)``: results (``PAPERLIB_STORE``, else ``<repo>/data`` for the ``cpu``
  preset and for callers that do not name one, else ``<repo>/build/<preset>/store``): training
  runs in ``<store>/runs/<id>/``, theory results in ``<store>/theory/``. The default store holds
  the committed results; another store (e.g. an empty one, to retrain everything) leaves them
  alone and keeps the decoded data where it is.
* ``output_root(preset)``: where figures, claims and executed notebooks go. The committed ones
  (``figures/``, ``notebooks/``) are those of the ``cpu`` preset from the default store; every
  other preset or store writes under ``<repo>/build/<preset>/`` (gitignored).

Relative paths in the environment resolve against the current directory, like any path a user
types; relative output locations given to a notebook resolve against the repository
(:func:`in_repo`), so they do not depend on where the kernel runs.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the one place that locates the repository
NOTEBOOKS = REPO / "notebooks"  # the figure notebooks (appendix/ below), as committed
FIGURES = REPO / "figures"  # the committed figures, claims tables and timings.json
BUILD = REPO / "build"  # gitignored: other presets' stores and outputs, notebooks in flight
README = REPO / "README.md"
COMMITTED_PRESET = "cpu"  # the preset whose figures, claims and notebooks are committed
COMMITTED_RUNS = REPO / "data" / "runs"  # the committed store's runs (whatever PAPERLIB_STORE says)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value).expanduser().resolve() if value else None


def data_root() -> Path:
    return _env_path("PAPERLIB_DATA") or REPO / "data"


def store_root(preset: str | None = None) -> Path:
    """The results store: ``PAPERLIB_STORE``, else the committed one (``<repo>/data``) for the
    committed preset (or no preset named), else ``<repo>/build/<preset>/store`` (gitignored:
    smoke or paper runs never mix with the committed ones)."""
    env = _env_path("PAPERLIB_STORE")
    if env is not None:
        return env
    if preset is None or preset == COMMITTED_PRESET:
        return REPO / "data"
    return build_root(preset) / "store"


def runs_root(preset: str | None = None) -> Path:
    return store_root(preset) / "runs"


def theory_root(preset: str | None = None) -> Path:
    return store_root(preset) / "theory"


def default_store() -> bool:
    """Whether results come from (and go to) the committed store."""
    return store_root() == (REPO / "data").resolve()


def committed_outputs(preset: str) -> bool:
    """Whether figures, claims and executed notebooks of ``preset`` are the committed ones."""
    return preset == COMMITTED_PRESET and default_store()


def output_root(preset: str) -> Path:
    """``<repo>`` for the committed outputs, else ``<repo>/build/<preset>``."""
    return REPO if committed_outputs(preset) else build_root(preset)


def build_root(preset: str) -> Path:
    """``<repo>/build/<preset>``: where a preset's results and outputs go when not committed."""
    return BUILD / preset


def in_repo(path: str | os.PathLike) -> Path:
    """An absolute path; a relative one is taken relative to the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p
