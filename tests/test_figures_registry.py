"""The figure registry (paperlib.notebooks.FIGURES): every entry names a real notebook and real
parameters, its runs validate at every preset it runs at, and the committed executed notebook
exists for every figure that `make figures` runs at cpu."""

import json

import pytest

from paperlib import parameters
from paperlib.figures import registered
from paperlib.make_figures import execute_all
from paperlib.notebooks import FIGURES, NOTEBOOK_DIR, default_parameters, select

BY_ID = {f.id: f for f in FIGURES}


def _parameter_cell(notebook: str) -> dict:
    return default_parameters(notebook)


# paperlib.figures.registered mirrors each notebook's one paperlib call (the notebooks
# themselves are executed at smoke by test_notebooks.py and re-executed by nbval).
_configs = registered.configs


def test_ids_are_unique_and_main_figures_run_in_place():
    ids = [f.id for f in FIGURES]
    assert len(ids) == len(set(ids))
    for f in FIGURES:
        assert (NOTEBOOK_DIR / f"{f.notebook}.ipynb").exists(), f.id
        if f.appendix:
            assert f.output.parent.name == "appendix"
            assert f.note, f"{f.id}: say what the appendix variant changes"
        else:
            assert f.output == NOTEBOOK_DIR / f"{f.notebook}.ipynb"
        if f.scaled is None:
            assert "paper only" in f.note, f"{f.id}: say why it does not run at cpu"


@pytest.mark.parametrize("fig", FIGURES, ids=lambda f: f.id)
@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_parameters_exist_in_the_notebook_and_their_runs_validate(fig, preset):
    if not fig.runs_at(preset):
        pytest.skip(f"{fig.id} runs at paper only")
    defaults = _parameter_cell(fig.notebook)
    params = fig.parameters(preset)
    unknown = set(params) - set(defaults)
    assert not unknown, f"{fig.id}: {unknown} are not parameters of {fig.notebook}"
    for k, v in params.items():  # same kind as the default (papermill injects literals)
        if defaults[k] is None:  # an optional parameter: the notebook's own check decides
            parameters.check({k: v})
            continue
        assert isinstance(v, type(defaults[k])) or (
            isinstance(defaults[k], float) and isinstance(v, int)), (fig.id, k, v)
    configs = _configs(fig.notebook, {**defaults, **params})  # raises on a bad value
    if configs is not None:
        assert configs and all(c.arch for c in configs)


def test_appendix_figures_differ_from_their_main_figure():
    for f in FIGURES:
        if f.appendix and f.notebook in ("fig1", "fig3_lsr", "fig4_svag"):
            for preset in ("cpu", "paper"):
                if not f.runs_at(preset):
                    continue
                main = next(m for m in FIGURES if m.notebook == f.notebook and not m.appendix)
                p = {**_parameter_cell(f.notebook), **f.parameters(preset)}
                q = {**_parameter_cell(f.notebook), **main.parameters(preset)}
                mine = set(_configs(f.notebook, p))
                theirs = set(_configs(f.notebook, q))
                assert mine - theirs, f"{f.id} at {preset} adds no run of its own"


@pytest.mark.parametrize("fig", [f for f in FIGURES if f.runs_at("cpu")], ids=lambda f: f.id)
def test_each_cpu_figure_is_committed_executed_with_its_parameters(fig):
    assert fig.output.exists(), f"{fig.output} missing: run `make figures ONLY={fig.id}`"
    nb = json.loads(fig.output.read_text())
    injected = next((c for c in nb["cells"]
                     if "injected-parameters" in c["metadata"].get("tags", [])), None)
    assert injected is not None, f"{fig.output} was not executed by papermill"
    src = "".join(injected["source"])
    for k, v in fig.parameters("cpu").items():
        assert f"{k} = {v!r}" in src or f"{k} = {json.dumps(v)}" in src, (fig.id, k)


def test_selection_and_bad_names():
    assert [f.id for f in select(["fig3_lsr", "fig3"])] == ["fig3"]
    assert select(None) == list(FIGURES)
    with pytest.raises(ValueError, match="figA-nope"):
        select(["figA-nope"])
    with pytest.raises(ValueError, match="preset='gpu'"):
        execute_all("gpu")


@pytest.mark.parametrize("notebook", sorted({f.notebook for f in FIGURES}))
def test_papermill_reads_every_parameter(notebook):
    """`papermill --help-notebook` and `-p NAME value` see each parameter with its comment as
    help (papermill skips a line with a second '=', e.g. one in the comment)."""
    import papermill

    found = {name: p["help"] for name, p in
             papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{notebook}.ipynb")).items()}
    assert set(found) == set(_parameter_cell(notebook)), notebook
    assert all(found.values()), f"{notebook}: every parameter needs a help comment"
