"""Execute the figure notebooks with papermill (``make figures``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"



def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if only:
        names = {p.stem for p in paths}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"notebook(s) {unknown} not found; available: {sorted(names)}")
        paths = [p for p in paths if p.stem in only]
    return paths


def execute_all(preset: str = "cpu", only: list[str] | None = None) -> dict[str, float]:
    """Run each notebook in place with ``PRESET=preset``; return wall seconds per notebook."""
    import papermill as pm

    from .constants import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; choose one of {list(PRESETS)}")
    times = {}
    paths = notebook_paths(only)
    print(f"executing {len(paths)} notebook(s) at preset {preset!r}")
    for path in paths:
        t0 = time.time()
        pm.execute_notebook(str(path), str(path), parameters={"PRESET": preset},
                            cwd=str(path.parent), progress_bar=False)
        times[path.stem] = time.time() - t0
        print(f"{path.name}: {times[path.stem]:.0f} s", flush=True)
        _record_timing(path.stem, preset, times[path.stem])
    return times


def _record_timing(name: str, preset: str, seconds: float) -> None:
    """figures/timings.json: wall seconds of the last `make figures` per (preset, notebook).
    A rerun that finds its results in the store records the re-plot time, not the training."""
    from .store import atomic_write_bytes

    path = NOTEBOOK_DIR.parent / "figures" / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(preset, {})[name] = round(seconds, 1)
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
