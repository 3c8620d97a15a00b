"""Every notebook runs end to end at the `smoke` preset and writes its figure files."""

import json
import os
from pathlib import Path

import pytest

from paperlib.notebooks import NOTEBOOK_DIR
from paperlib.paths import data_root

FIGURE_NOTEBOOKS = {"fig1", "fig3_lsr", "fig4_svag", "sampling"}  # need CIFAR-10
HAVE_CIFAR = bool(os.environ.get("CIFAR10_PATH")) or (data_root() / "cifar10.pt").exists()

pytestmark = pytest.mark.notebook


def _fig_ids(path: Path) -> list[str]:
    """The FIG_ID parameter of a notebook (or the theory-* ids it saves)."""
    nb = json.loads(path.read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    for line in "".join(params["source"]).splitlines():
        if line.startswith("FIG_ID"):
            return [line.split("=", 1)[1].split("#")[0].strip().strip('"')]
    return []


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_and_writes_its_figures(path, tmp_path, monkeypatch):
    import papermill as pm

    if path.stem in FIGURE_NOTEBOOKS and not HAVE_CIFAR:
        pytest.skip("needs CIFAR-10 (set CIFAR10_PATH)")
    monkeypatch.delenv("PAPERLIB_NO_TRAIN", raising=False)  # smoke runs train, into tmp_path
    figs = tmp_path / "figs"
    pm.execute_notebook(str(path), str(tmp_path / path.name), cwd=str(path.parent),
                        parameters={"PRESET": "smoke", "FIG_DIR": str(figs),
                                    "RUNS_DIR": str(tmp_path / "runs"), "WORKERS": 1},
                        progress_bar=False)
    written = sorted(p.name for p in figs.glob("*"))
    assert written, "the notebook wrote no figure"
    for fig_id in _fig_ids(path):
        assert f"{fig_id}.pdf" in written and f"{fig_id}.png" in written
        assert f"{fig_id}.claims.csv" in written  # the README's claims table reads these
    if not _fig_ids(path):  # theory notebooks: several figures, one claims file
        assert f"{path.stem}.claims.csv" in written
