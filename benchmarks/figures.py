"""Wall time of ``make figures`` per figure notebook, read from ``figures/timings.json`` (written
by ``paperlib.make_figures.execute_all``): from an empty store, and the re-plot from the store.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness import Row
from paperlib.paths import REPO

GROUP = "figures"  # the rows' name in the table and in --only

TIMINGS_JSON = REPO / "figures" / "timings.json"


def rows(path: Path = TIMINGS_JSON) -> list[Row]:
    if not path.is_file():
        return [Row(GROUP, "`make figures` wall time", "cpu preset", None, "s",
                    note=f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} absent")]
    # {preset: {figure id: {wall_s, results_computed, wall_s_with_training}}}, written by
    # paperlib.make_figures.execute_all (`make figures`).
    by_preset = json.loads(path.read_text())
    out = []
    for preset_name, entries in sorted(by_preset.items()):
        total = 0.0
        for name, e in sorted(entries.items()):
            sec = e.get("wall_s_with_training", e["wall_s"])
            total += sec
            how = ("from scratch" if "wall_s_with_training" in e
                   else "re-plot from the store")
            out.append(Row(GROUP, "`make figures` wall time", f"{name}, {preset_name} preset",
                           float(sec), "s", note=f"{how}; re-plot {e['wall_s']:.0f} s"))
        out.append(Row(GROUP, "`make figures` wall time, all figures", f"{preset_name} preset",
                       total, "s", note="sum of the executions that trained each figure's runs"))
    return out
