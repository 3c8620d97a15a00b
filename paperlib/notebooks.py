"""Which notebook, with which parameters, makes which paper figure; and executing them
(``make figures``).

A paper figure is a (notebook, parameters) pair with an id: ``figures/<id>.pdf|png``. The main
figures run their notebook in place (``notebooks/fig1.ipynb``); the appendix variants run the same
notebook with other parameters into ``notebooks/appendix/<id>.ipynb``. Parameters can differ by
preset: ``params`` hold at every preset, ``scaled`` replaces some of them at ``cpu`` and ``smoke``
(the 2-core version of the same panel). ``scaled=None`` marks a figure whose smallest honest
version does not fit the 2-core budget: it runs at ``paper`` only and ``note`` says why.

``make figures`` writes the committed files only for the ``cpu`` preset from the default store
(``paths.committed_outputs``); other presets and stores write under ``build/<preset>/``. Each
notebook executes into ``build/executing/`` and replaces its output only when it finished, after
the run-to-run noise papermill adds (timestamps, durations, the injected cell's random id, the
split of printed text into chunks, absolute paths) is taken out: re-plotting unchanged results
leaves every committed file as it was.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .paths import REPO, committed_outputs, output_root, store_root

NOTEBOOK_DIR = paths.NOTEBOOKS
APPENDIX_DIR = NOTEBOOK_DIR / "appendix"
EXECUTING_DIR = paths.BUILD / "executing"  # notebooks while papermill runs them


@dataclass(frozen=True)
class Figure:
    id: str  # figures/<id>.pdf and .png
    notebook: str  # source notebook, notebooks/<notebook>.ipynb
    paper: str  # the figure of the paper it reproduces
    params: dict = field(default_factory=dict)  # papermill parameters at every preset
    scaled: dict | None = field(default_factory=dict)  # replaced at cpu / smoke; None: paper only
    note: str = ""  # what the cpu version changes, or why it does not run at cpu

    @property
    def appendix(self) -> bool:
        return self.id not in MAIN_IDS

    @property
    def output(self) -> Path:
        """The executed notebook that is committed."""
        return self.output_under(REPO)

    def output_under(self, root: Path) -> Path:
        """The executed notebook under an output root (``<root>/notebooks/...``)."""
        if self.appendix:
            return root / "notebooks" / "appendix" / f"{self.id}.ipynb"
        return root / "notebooks" / f"{self.notebook}.ipynb"

    def runs_at(self, preset: str) -> bool:
        return preset == "paper" or self.scaled is not None

    def parameters(self, preset: str) -> dict:
        """Papermill parameters of this figure at ``preset`` (PRESET and FIG_ID included)."""
        p = {"PRESET": preset, **self.params}
        if preset != "paper":
            p.update(self.scaled or {})
        if self.appendix:
            p.update(FIG_ID=self.id)
        return p


# SVAG's l: the paper and the authors sweep l = 1 … 32; at cpu, 1 … 8 (each doubling of l doubles
# a run's steps, and the claims compare l = 4 with l = 8 as the paper compares the largest two).
PAPER_LS = [1, 2, 4, 8, 16, 32]
CPU_LS = [1, 2, 4, 8]

MAIN_IDS = ("fig1", "fig3", "fig4", "figA-sampling", "theory-sde", "theory-noise",
            "monitor-mlp")  # in place

FIGURES: tuple[Figure, ...] = (
    Figure("fig1", "fig1", "Fig 1: SGD vs NGD vs GD"),
    Figure("fig3", "fig3_lsr", "Fig 3: predicting the failure of the LSR"),
    Figure("fig3b", "fig3_lsr", "Fig 3, second panel: PreResNet-32 GN",
           params={"NORM": "gn"}, scaled=None,
           note="paper only: at cpu Fig 3's panel is already GN; the BN convnet costs 1.8× its "
                "step time (≈ 25 core-minutes per seed), which the 90-minute budget does not "
                "leave"),
    Figure("fig3c", "fig3_lsr", "Fig 3, third panel: VGG-19 GN",
           params={"ARCH": "vgg19", "NORM": "gn"}, scaled=None,
           note="paper only: at cpu a VGG-19 sweep costs many times the convnet's (a "
                "quarter-width VGG-16 already measured 5× the convnet's step time at 8×8)"),
    Figure("fig4", "fig4_svag", "Fig 4: SVAG converges", params={"LS": PAPER_LS},
           scaled={"LS": CPU_LS}),
    Figure("figA-sampling", "sampling", "App.: sampling schemes"),
    Figure("theory-sde", "theory-sde", "Lemma 4.7, Thm 4.3, App. B.1 (theory-lemma47, "
           "theory-weak-ou, theory-weak-double-well, theory-lsr)"),
    Figure("theory-noise", "theory-noise", "Eqs. 10-12, Thm 5.2, App. B.3 "
           "(theory-equilibrium, theory-tail-index)"),
    Figure("monitor-mlp", "noise_monitor", "Beyond the paper: Thm 5.6 on an MLP, G/N from "
           "NoiseMonitor in a plain loop with gradient accumulation"),
    # --- NGD (App. F.3): Fig 1 repeated -----------------------------------------------------
    Figure("figA-ngd-small-batch", "fig1", "App. F.3: NGD with a smaller batch size",
           params={"BATCH_SIZE": 64, "SEEDS": [0], "GAP_BATCH_SIZES": []},
           scaled={"BATCH_SIZE": 8, "SEEDS": [0, 1]},
           note="paper: B = 64 (our choice; our copy of the paper omits the appendix's value); "
                "cpu: B = 8, half the main figure's; GD does not depend on B and is shared "
                "with fig1"),
    Figure("figA-ngd-wide", "fig1", "App. F.3: NGD with a 4x wide PreResNet-32 GN",
           params={"WIDTH": 4.0, "SEEDS": [0], "GAP_BATCH_SIZES": []}, scaled=None,
           note="paper only: at cpu even width 2 makes each GD / NGD run ≈ 16 core-minutes "
                "(235 ms per full-data step × 4000 steps), beyond the 90-minute budget"),
    # --- further LSR verification (App. F): Fig 3's sweep on other nets -------------------
    Figure("figA-lsr-resnet32", "fig3_lsr", "App. F: LSR on ResNet-32 BN (not scale-invariant)",
           params={"ARCH": "resnet32", "NORM": "bn", "SEEDS": [0]},
           scaled={"ARCH": "resnet8", "WIDTH": 1.0, "SEEDS": [0, 1]},
           note="cpu: ResNet-8 (the same post-activation recipe, 16/32/64 channels), two seeds "
                "(the claims' seed noise needs two)"),
    Figure("figA-lsr-4x-bn", "fig3_lsr", "App. F: LSR on PreResNet-32 4x BN",
           params={"WIDTH": 4.0, "NORM": "bn", "SEEDS": [0]}, scaled=None,
           note="paper only: at cpu the 4x convnet (width 8) costs ≈ 2.8× (GN) to 5× (BN) "
                "the main sweep per seed, ≈ 35-60 core-minutes"),
    Figure("figA-lsr-4x-gn", "fig3_lsr", "App. F: LSR on PreResNet-32 4x GN",
           params={"WIDTH": 4.0, "NORM": "gn", "SEEDS": [0]}, scaled=None,
           note="paper only: see figA-lsr-4x-bn"),
    # --- SVAG groups (App. F): Fig 4 on other settings ------------------------------------
    Figure("figA-svag-baselines", "fig4_svag", "App. F: SVAG baselines (the other norm)",
           params={"NORM": "gn", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"NORM": "bn", "SEEDS": [0, 1], "LS": CPU_LS},
           note="Fig 4 uses BN at paper and GN at cpu; this group shows the other one, "
                "small and large batch; two seeds at cpu (the claims' seed noise needs two)"),
    Figure("figA-svag-4x", "fig4_svag", "App. F: SVAG on a 4x wide PreResNet-32 BN",
           params={"WIDTH": 4.0, "SEEDS": [0], "PANELS": [[128, 0.8]], "LS": PAPER_LS},
           scaled={"WIDTH": 2.0, "PANELS": [[16, 0.4]], "SEEDS": [0, 1], "LS": CPU_LS},
           note="cpu: the convnet at width 2 (2× the main figure's), small batch, two seeds"),
    Figure("figA-svag-vgg16-bn", "fig4_svag", "App. F: SVAG on VGG-16 BN",
           params={"ARCH": "vgg16", "NORM": "bn", "SEEDS": [0], "PANELS": [[128, 0.8]],
                   "LS": PAPER_LS},
           scaled=None,
           note="paper only: at cpu even a quarter-width VGG-16 is 5× the convnet, ≈ 30 "
                "core-minutes for one panel and seed"),
    Figure("figA-svag-vgg16-gn", "fig4_svag", "App. F: SVAG on VGG-16 GN",
           params={"ARCH": "vgg16", "NORM": "gn", "SEEDS": [0], "PANELS": [[128, 0.8]],
                   "LS": PAPER_LS},
           scaled=None, note="paper only: see figA-svag-vgg16-bn"),
    Figure("figA-svag-no-norm", "fig4_svag", "App. F: SVAG on an unnormalized VGG (η = 0.01)",
           params={"ARCH": "vgg16", "NORM": "none", "SEEDS": [0], "PANELS": [[128, 0.01]],
                   "LS": PAPER_LS},
           scaled={"ARCH": "convnet", "PANELS": [[16, 0.05]], "SEEDS": [0, 1], "LS": CPU_LS},
           note="cpu: the convnet without normalization at B = 16, two seeds"),
    Figure("figA-svag-triangle", "fig4_svag", "App. F: SVAG with the triangle LR schedule",
           params={"SCHEDULE": "triangle", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"SEEDS": [0, 1], "LS": CPU_LS},
           note="two cycles over the whole run; every knot stretches with l; two seeds at cpu"),
    Figure("figA-svag-cosine", "fig4_svag", "App. F: SVAG with the cosine LR schedule",
           params={"SCHEDULE": "cosine", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"SEEDS": [0, 1], "LS": CPU_LS},
           note="η → η/800 over the run; two seeds at cpu"),
)


def describe(fig_id: str, preset: str) -> str:
    """One paragraph for the top of an executed notebook: what figure this is, at which preset,
    with which registry parameters and what they change."""
    f = {f.id: f for f in FIGURES}.get(fig_id)
    if f is None:
        return f"{fig_id}: not in the registry (custom parameters), preset {preset}"
    params = {k: v for k, v in f.parameters(preset).items()
              if k not in ("PRESET", "FIG_ID", "FIG_DIR")}
    text = f"{f.id} — {f.paper}; preset {preset}"
    if params:
        text += "; parameters " + ", ".join(f"{k}={v!r}" for k, v in params.items())
    return text + (f". {f.note}" if f.note else "")


def default_parameters(notebook: str) -> dict:
    """The values of the ``parameters`` cell of ``notebooks/<notebook>.ipynb``."""
    import ast

    nb = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse("".join(cell["source"])).body}


def registered_parameters(fig_id: str, preset: str) -> dict | None:
    """Every parameter of figure ``fig_id`` as ``make figures`` runs it at ``preset`` (the
    notebook's defaults with the registry's values), or None for an id not in the registry."""
    f = {f.id: f for f in FIGURES}.get(fig_id)
    if f is None or not f.runs_at(preset):
        return None
    return {**default_parameters(f.notebook), **f.parameters(preset)}


def _fmt_params(p: dict) -> str:
    p = {k: v for k, v in p.items() if k not in ("PRESET", "FIG_ID", "FIG_DIR")}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in p.items()) or "defaults"


def figure_table(preset: str = "cpu", timings: Path | None = None) -> str:
    """The README's table: paper figure → id → notebook → parameters → measured wall time."""
    path = timings or paths.FIGURES / "timings.json"
    measured = json.loads(path.read_text()).get(preset, {}) if path.exists() else {}
    lines = [f"| paper figure | id (`figures/<id>.*`) | notebook → executed copy | parameters "
             f"at `{preset}` | parameters at `paper` | wall time at `{preset}` (2 cores) |",
             "|---|---|---|---|---|---|"]
    for f in FIGURES:
        nb = f"`{f.notebook}.ipynb`"
        if f.appendix:
            nb += f" → `appendix/{f.id}.ipynb`"
        if not f.runs_at(preset):
            here, wall = "paper only", f.note.removeprefix("paper only: ")
        else:
            here = _fmt_params(f.parameters(preset))
            e = measured.get(f.id) if isinstance(measured.get(f.id), dict) else {}
            parts = []
            complete = e.get("results_computed") in (None, e.get("results"))
            if "wall_s_with_training" in e and complete:
                parts.append(f"{e['wall_s_with_training'] / 60:.1f} min from scratch")
            elif e.get("train_s"):  # not measured end to end for its current runs
                parts.append(f"≈ {e['train_s'] / 2 / 60:.1f} min from scratch (estimated: its "
                             f"{e['results']} runs' stored training time over 2 workers)")
            if "wall_s" in e:
                parts.append(f"{e['wall_s']:.0f} s re-plot")
            wall = ", ".join(parts) or "not measured"
        lines.append(f"| {f.paper} | `{f.id}` | {nb} | {here} | "
                     f"{_fmt_params(f.parameters('paper'))} | {wall} |")
    return "\n".join(lines)


def claims_markdown(fig_dir: Path | None = None) -> str:
    """The README's claims table, from the ``figures/<id>.claims.csv`` the notebooks write."""
    import pandas as pd

    fig_dir = fig_dir or paths.FIGURES
    lines = ["| figure | claim | paper | measured [95 % interval] | threshold | verdict | "
             "seeds / sample | uncertainty |",
             "|---|---|---|---|---|---|---|---|"]
    for f in FIGURES:
        path = fig_dir / f"{f.id}.claims.csv"
        if not path.exists():
            continue
        for r in pd.read_csv(path, dtype=str, keep_default_na=False).itertuples():
            cells = [f"`{f.id}`", r.claim, r.paper, f"{r.measured} {r.interval}", r.threshold,
                     f"**{r.verdict}**", r.seeds, r.uncertainty]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


README = paths.README


def sync_readme(readme: Path = README, preset: str = "cpu") -> None:
    """Write the figure table and the claims table into the README (``make figures`` does)."""
    from .docs import update_section

    update_section(readme, "table", figure_table(preset), prefix="figures")
    update_section(readme, "claims", claims_markdown(), prefix="figures")


def select(only: list[str] | None = None) -> list[Figure]:
    """Figures by id (or by notebook name for the main ones, e.g. ``fig3_lsr``)."""
    if not only:
        return list(FIGURES)
    by_name = {f.id: f for f in FIGURES} | {f.notebook: f for f in FIGURES if not f.appendix}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"figure(s) {unknown} not found; available: {[f.id for f in FIGURES]}")
    ids = list(dict.fromkeys(by_name[n].id for n in only))
    return [f for f in FIGURES if f.id in ids]


def notebook_paths() -> list[Path]:
    """The source notebooks (each runs at smoke in the tests)."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def execute_all(preset: str = "cpu", only: list[str] | None = None,
                out: Path | None = None) -> dict[str, float]:
    """Execute each figure's notebook with its parameters at ``preset``; return wall seconds
    per figure id. Figures that do not run at ``preset`` are listed with the reason.

    Args:
        out: write ``figures/`` and ``notebooks/`` under this folder (default: the repository
            for the committed outputs, else ``build/<preset>/``).

    Raises:
        FiguresPendingError: after every figure was tried, when some had runs in cluster
            jobs still queued or running (those notebooks were not replaced).
    """
    from .constants import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; choose one of {list(PRESETS)}")
    figures = select(only)
    committed = out is None and committed_outputs(preset)
    root = Path(out) if out is not None else output_root(preset)
    skipped = [f for f in figures if not f.runs_at(preset)]
    figures = [f for f in figures if f.runs_at(preset)]
    where = "the committed figures/ and notebooks/" if committed else f"{root}/"
    print(f"executing {len(figures)} figure notebook(s) at preset {preset!r} into {where}; "
          f"results store {store_root(preset)}", flush=True)
    for f in skipped:
        print(f"  skipped {f.id} ({f.note})")
    from papermill.exceptions import PapermillExecutionError

    times, pending = {}, {}
    for f in figures:
        params = f.parameters(preset)
        if not committed:
            params["FIG_DIR"] = str(root / "figures")
        print(f"\n=== {f.id}: {f.paper} ===", flush=True)
        t0 = time.time()
        try:
            stored, computed = execute(f.notebook, f.output_under(root), params)
        except PapermillExecutionError as e:
            if e.ename != "RunsPendingError":  # cluster.RunsPendingError: submitted, not done
                raise
            pending[f.id] = e.evalue
            print(f"=== {f.id}: runs pending in cluster jobs; not plotted ===", flush=True)
            continue
        times[f.id] = time.time() - t0
        print(f"=== {f.id}: {times[f.id]:.0f} s; {len(computed)} result(s) computed, "
              f"{len(stored)} loaded from the store ===", flush=True)
        record_timing(f.id, preset, times[f.id], len(computed), len(stored),
                      path=root / "figures" / "timings.json",
                      train_s=stored_training_seconds(stored | computed, preset))
    if committed and not pending:
        sync_readme()
    if pending:
        raise FiguresPendingError(pending)
    return times


class FiguresPendingError(Exception):
    """Some figures were not plotted: their runs are in cluster jobs that have not finished
    (``make figures EXECUTOR=slurm``). ``pending``: figure id -> the sweep's message (the
    runs and job ids)."""

    def __init__(self, pending: dict[str, str]):
        self.pending = pending
        super().__init__(f"{len(pending)} figure(s) wait for cluster jobs: "
                         f"{', '.join(pending)}")


def execute(notebook: str, target: Path, parameters: dict) -> tuple[set, set]:
    """Run ``notebooks/<notebook>.ipynb`` with papermill into ``target``; return the names of the
    results it loaded from the store and of those it computed.

    The notebook's output streams to this terminal as it runs. It is executed into
    ``build/executing/`` and moved to ``target`` (normalized) only when every cell finished: a
    failed or interrupted execution leaves ``target`` untouched and the partial notebook there.
    """
    import papermill as pm

    from .files import atomic_write_bytes
    from .store import RESULT_LOG_ENV

    EXECUTING_DIR.mkdir(parents=True, exist_ok=True)
    running = EXECUTING_DIR / target.name
    fd, log = tempfile.mkstemp(prefix="results-", suffix=".jsonl", dir=EXECUTING_DIR)
    os.close(fd)
    previous = os.environ.get(RESULT_LOG_ENV)
    os.environ[RESULT_LOG_ENV] = log  # the kernel inherits it and notes every result it uses
    try:
        nb = pm.execute_notebook(str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(running),
                                 parameters=parameters, cwd=str(NOTEBOOK_DIR),
                                 progress_bar=False, stdout_file=sys.stdout,
                                 stderr_file=sys.stderr)
        atomic_write_bytes(target, normalized(nb, notebook, target))
        running.unlink()
        events = [json.loads(line) for line in Path(log).read_text().splitlines() if line]
    except BaseException:
        print(f"(the partial notebook is {running}; {target} was not replaced)", file=sys.stderr)
        raise
    finally:
        os.unlink(log)
        if previous is None:
            os.environ.pop(RESULT_LOG_ENV, None)
        else:
            os.environ[RESULT_LOG_ENV] = previous
    computed = {(e["kind"], e["name"]) for e in events if e["event"] == "computed"}
    stored = {(e["kind"], e["name"]) for e in events if e["event"] == "stored"} - computed
    return stored, computed


_VOLATILE = ("start_time", "end_time", "duration")  # papermill's timing metadata


def normalized(nb, notebook: str, target: Path) -> bytes:
    """The executed notebook as bytes that depend only on its inputs and outputs: no
    timestamps or durations, a fixed id for the injected-parameters cell, consecutive printed
    chunks merged into one output, and repository-relative paths."""
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    meta = nb.metadata.get("papermill", {})
    for key in _VOLATILE:
        meta.pop(key, None)
    meta["input_path"] = f"notebooks/{notebook}.ipynb"
    meta["output_path"] = _relative(target)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for key in _VOLATILE:
            cell.metadata.get("papermill", {}).pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    return (nbformat.writes(nb) + "\n").encode()


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def stored_training_seconds(results: set, preset: str) -> float:
    """The training seconds the store recorded for these ``(kind, name)`` results (runs and
    monitor runs; each run's own wall time, as it trained beside the other worker)."""
    total = 0.0
    for kind, name in results:
        path = {"run": store_root(preset) / "runs" / name / "manifest.json",
                "monitor": store_root(preset) / "monitor" / f"{name}.json"}.get(kind)
        if path is not None and path.exists():
            total += float(json.loads(path.read_text()).get("wall_s", 0.0))
    return total


def record_timing(fig_id: str, preset: str, seconds: float, computed: int, stored: int = 0,
                  path: Path | None = None, train_s: float | None = None) -> None:
    """figures/timings.json, {preset: {id: entry}}: ``wall_s_with_training`` and
    ``results_computed`` of the last execution that computed every result it used (from an
    empty store), ``wall_s`` of a re-plot from the store (recorded once: a re-plot does not
    rewrite the file, so re-plotting leaves the committed files unchanged), and ``results`` and
    ``train_s``: how many results the figure uses and their stored training seconds (the
    estimate shown while no from-scratch time covers all of them)."""
    from .files import atomic_write_bytes

    path = path or paths.FIGURES / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = data.setdefault(preset, {}).get(fig_id)
    entry = dict(entry) if isinstance(entry, dict) else {}
    if computed and not stored:
        entry.update(wall_s_with_training=round(seconds, 1), results_computed=computed)
    elif computed:
        print(f"{fig_id}: {computed} of {computed + stored} results recomputed; not recorded as "
              "a from-scratch time", flush=True)
    elif "wall_s" not in entry:
        entry["wall_s"] = round(seconds, 1)
    entry["results"] = computed + stored
    if train_s is not None:
        entry["train_s"] = round(train_s)
    if entry == data[preset].get(fig_id):
        return
    data[preset][fig_id] = entry
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
