"""The figure notebooks' parameters: what each accepts, and turning what papermill injects into
it. ``papermill -p SEEDS "[0, 1, 2]"`` injects the string "[0, 1, 2]" (papermill's ``-p`` only
converts numbers, True/False and None), so list parameters are parsed as YAML (``-y`` gives the
same). A bad value stops the notebook at its first cell with the parameter's name and what it
allows. Each notebook's first code cell runs ``globals().update(parameters.check(globals()))``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

from .config import validate_arch
from .constants import DATASETS, NORMS, PRESETS, SAMPLERS, SCHEDULES
from .paths import build_root, in_repo, output_root, runs_root, store_root
from .validate import is_real, is_whole

_FIG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _as_list(v):
    """A list parameter: a list as given, or parsed from papermill's string ("[0, 1]")."""
    if isinstance(v, str):
        try:
            v = yaml.safe_load(v)
        except yaml.YAMLError:
            return None
    if isinstance(v, tuple):
        v = list(v)
    return v if isinstance(v, list) else [v] if v is not None and v != "" else []


def _choice(allowed) -> Callable:
    def ok(v):
        return v in allowed
    return ok


def _arch_ok(v) -> bool:
    try:
        validate_arch(v)
    except ValueError:
        return False
    return True


def _panels_ok(v) -> bool:
    return all(isinstance(p, list) and len(p) == 2 and is_whole(p[0]) and p[0] >= 1
               and is_real(p[1]) and p[1] > 0 for p in v)


# name: (kind, check, what is allowed). Kinds: "str", "int", "float", "list".
# OPTIONAL parameters also take None: "the preset's value" (never 0 or "", which are values).
RULES: dict[str, tuple[str, Callable, str]] = {
    "PRESET": ("str", lambda v: v in PRESETS, f"one of {list(PRESETS)}"),
    "SEEDS": ("list", lambda v: v and all(is_whole(s) and s >= 0 for s in v),
              'a non-empty list of integers ≥ 0, e.g. -p SEEDS "[0, 1]"'),
    "GAP_SEEDS": ("list", lambda v: all(is_whole(s) and s >= 0 for s in v),
                  'a list of integers ≥ 0, e.g. -p GAP_SEEDS "[0, 1]"'),
    "BATCH_SIZE": ("int", lambda v: v >= 1, "an integer ≥ 1, or None for the preset's"),
    "BATCH_SIZES": ("list", lambda v: all(is_whole(b) and b >= 1 for b in v),
                    'a list of batch sizes ≥ 1 ([] for the preset\'s), e.g. "[16, 64, 256]"'),
    "GAP_BATCH_SIZES": ("list", lambda v: all(is_whole(b) and b >= 1 for b in v),
                        'a list of batch sizes ≥ 1, e.g. "[16, 64]"'),
    "WIDTH": ("float", lambda v: v > 0, "a width factor > 0, or None for the preset's"),
    "LS": ("list", lambda v: v and all(is_whole(x) and x >= 1 for x in v),
           'a non-empty list of integers l ≥ 1 (SVAG, eq. 5), e.g. "[1, 2, 4, 8]"'),
    "PANELS": ("list", _panels_ok,
               'a list of [B, η] pairs with B ≥ 1 and η > 0 ([] for the preset\'s), e.g. '
               '"[[16, 0.4], [128, 3.2]]"'),
    "SAMPLERS": ("list", lambda v: v and all(s in SAMPLERS for s in v),
                 f"a non-empty list of samplers from {list(SAMPLERS)}"),
    "ARCH": ("str", _arch_ok, "None for the preset's, preresnet<6n+2>, resnet<6n+2>, vgg11/13/"
                              "16/19 or convnet"),
    "NORM": ("str", _choice(NORMS), f"None for the preset's, or one of {list(NORMS)}"),
    "DATASET": ("str", _choice(DATASETS), f"None for the preset's, or one of {list(DATASETS)}"),
    "SCHEDULE": ("str", _choice(SCHEDULES),
                 f"None for the preset's (step), or one of {list(SCHEDULES)}"),
    "C2": ("float", lambda v: v > 1, "the threshold C² of Thm 5.6, a number > 1"),
    "BASE_LR": ("float", lambda v: v > 0, "an LR η > 0 at the smallest B, or None for the "
                                          "preset's"),
    "MONITOR_DIR": ("str", lambda v: True, "a folder (\"\" for the store's monitor/)"),
    "WORKERS": ("int", lambda v: v >= 0, "a number of processes ≥ 1, or 0 for one per core"),
    "RUNS_DIR": ("str", lambda v: True, "a folder (\"\" for the store's runs/)"),
    "FIG_DIR": ("str", lambda v: True, "a folder (\"\" for the preset's figures/)"),
    "FIG_ID": ("str", lambda v: bool(_FIG_ID.match(v)),
               "a file name stem of letters, digits, '.', '_' and '-'"),
}


OPTIONAL = frozenset({"BATCH_SIZE", "WIDTH", "ARCH", "NORM", "DATASET", "SCHEDULE", "BASE_LR"})


def _convert(kind: str, v):
    if kind == "list":
        return _as_list(v)
    if kind == "str":
        return str(v) if is_real(v) else v if isinstance(v, str) else None
    if kind == "int":
        return int(v) if is_whole(v) else None
    return float(v) if is_real(v) else None  # float


def check(values: dict) -> dict:
    """The notebook parameters found in ``values`` (a notebook's globals), converted to their
    kinds and checked, with ``FIG_DIR`` and ``RUNS_DIR`` made absolute: "" means the output
    folder of these parameters (``figures/`` for a registered figure at the cpu preset from the
    default store, else ``build/<preset>/figures``) and the preset's store's ``runs/``
    (``paths.store_root``); a relative folder is taken relative to the repository.

    Raises:
        ValueError: naming the first parameter with a bad value and what it allows.
    """
    out = {}
    for name, (kind, ok, allowed) in RULES.items():
        if name not in values:
            continue
        if values[name] is None and name in OPTIONAL:
            out[name] = None
            continue
        v = _convert(kind, values[name])
        if v is None or not ok(v):
            raise ValueError(f"notebook parameter {name}={values[name]!r} is not allowed; "
                             f"give {allowed}")
        out[name] = v
    if "FIG_DIR" in out:
        out["FIG_DIR"] = str(in_repo(out["FIG_DIR"]) if out["FIG_DIR"] else _figures_dir(out))
    if "RUNS_DIR" in out:
        out["RUNS_DIR"] = str(in_repo(out["RUNS_DIR"]) if out["RUNS_DIR"]
                              else runs_root(out.get("PRESET")))
    if "MONITOR_DIR" in out:
        out["MONITOR_DIR"] = str(in_repo(out["MONITOR_DIR"]) if out["MONITOR_DIR"]
                                 else store_root(out.get("PRESET")) / "monitor")
    return out


_SETTINGS_ONLY = ("WORKERS", "FIG_DIR")  # do not change what a figure shows


def _figures_dir(p: dict):
    """The committed ``figures/`` receive only a registered figure with its registered
    parameters at the committed preset from the default store; any other run of a notebook
    (another preset, store or parameter) writes to ``build/<preset>/figures``."""
    from .notebooks import registered_parameters

    preset = p.get("PRESET", "cpu")
    registered = registered_parameters(p["FIG_ID"], preset) if "FIG_ID" in p else {}
    runs = in_repo(p["RUNS_DIR"]) if p.get("RUNS_DIR") else runs_root(preset)
    default_runs = runs.resolve() == runs_root(preset).resolve()
    same = registered is not None and default_runs and all(
        p[k] == _convert(RULES[k][0], v) for k, v in registered.items()
        if k in p and k not in _SETTINGS_ONLY)
    return (output_root(preset) if same else build_root(preset)) / "figures"
