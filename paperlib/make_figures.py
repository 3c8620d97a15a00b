"""``make figures``: execute each registered figure's notebook (``paperlib.notebooks.FIGURES``)
with papermill at a preset, record its wall time in ``figures/timings.json`` and, for the
committed outputs, write the README's figure and claims tables.

Figures whose results are all in the store are re-plotted first, ``REPLOT_PARALLEL`` notebooks at a
time (each a kernel of its own, with ``PAPERLIB_NO_TRAIN`` set: a notebook that would train stops
at once); the others then run one after another, each training its missing runs on every core.

Each notebook executes into ``build/executing/`` and replaces its output only when it finished,
after the run-to-run noise papermill adds (timestamps, durations, the injected cell's random id,
the split of printed text into chunks, absolute paths) is taken out: re-plotting unchanged results
leaves every committed file as it was.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import paths
from .notebooks import NOTEBOOK_DIR, claims_markdown, figure_table, select
from .paths import REPO, committed_outputs, output_root, store_root
from .validate import check_choice

EXECUTING_DIR = paths.BUILD / "executing"  # notebooks while papermill runs them
# Re-plots at once: each is a kernel of a few hundred MB whose time is mostly imports and plotting,
# one core's worth; figures that train run alone and use every core.
REPLOT_PARALLEL = max(2, min(4, os.cpu_count() or 1))


def sync_readme(readme: Path = paths.README, preset: str = "cpu") -> None:
    """Write the figure table and the claims table into the README (``make figures`` does)."""
    from .docs import update_section

    update_section(readme, "table", figure_table(preset), prefix="figures")
    update_section(readme, "claims", claims_markdown(), prefix="figures")


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

    check_choice("preset", preset, PRESETS)
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

    params = {}
    for f in figures:
        params[f.id] = f.parameters(preset)
        if not committed:
            params[f.id]["FIG_DIR"] = str(root / "figures")
    t_start = time.time()
    replotted = replot_stored(figures, params, root)
    times, pending = {}, {}
    n_computed = 0  # results the one-at-a-time notebooks computed (trained or derived)
    for f in figures:
        if f.id in replotted:
            times[f.id], stored = replotted[f.id]
            record_timing(f.id, preset, times[f.id], 0, len(stored),
                          path=root / "figures" / "timings.json",
                          train_s=stored_training_seconds(stored, preset))
            continue
        print(f"\n=== {f.id}: {f.paper} ===", flush=True)
        t0 = time.time()
        try:
            stored, computed = execute(f.notebook, f.output_under(root), params[f.id])
        except PapermillExecutionError as e:
            if e.ename != "RunsPendingError":  # cluster.RunsPendingError: submitted, not done
                raise
            pending[f.id] = e.evalue
            print(f"=== {f.id}: runs pending in cluster jobs; not plotted ===", flush=True)
            continue
        times[f.id] = time.time() - t0
        n_computed += len(computed)
        print(f"=== {f.id}: {times[f.id]:.0f} s; {len(computed)} result(s) computed, "
              f"{len(stored)} loaded from the store ===", flush=True)
        record_timing(f.id, preset, times[f.id], len(computed), len(stored),
                      path=root / "figures" / "timings.json",
                      train_s=stored_training_seconds(stored | computed, preset))
    print(f"\n{len(times) + len(pending)} figure(s) in {time.time() - t_start:.0f} s: "
          f"{len(replotted)} re-plotted from the store ({REPLOT_PARALLEL} at a time), "
          f"{len(times) + len(pending) - len(replotted)} one at a time ({n_computed} result(s) "
          "computed)", flush=True)
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


def replot_stored(figures: list, params: dict[str, dict], root: Path,
                  parallel: int | None = None) -> dict[str, tuple[float, set]]:
    """Execute, ``parallel`` at a time (default ``REPLOT_PARALLEL``), the notebooks of the
    ``figures`` whose results are all stored, into their outputs under ``root``; return, per
    figure re-plotted, its wall seconds and the results it loaded.

    Every notebook is tried with training forbidden (``PAPERLIB_NO_TRAIN``): one that needs a
    result not in the store stops at its first sweep and is left to the sequential pass of
    :func:`execute_all`, as is one that fails for any other reason (it fails there again, with
    its output on the terminal). Each notebook's output is printed in one block when it ends.
    """
    parallel = REPLOT_PARALLEL if parallel is None else parallel
    if parallel < 2 or len(figures) < 2:
        return {}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done = {}
    # spawn, not fork: the parent may hold threads (papermill's, zmq's) that fork would copy
    pool = ProcessPoolExecutor(parallel, mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(_replot_one, f.notebook, str(f.output_under(root)),
                               params[f.id]): f for f in figures}
        for future in as_completed(futures):
            f = futures[future]
            ok, seconds, stored, text = future.result()
            if ok:
                done[f.id] = (seconds, stored)
                print(f"\n=== {f.id}: {f.paper} ===\n{text.rstrip()}\n=== {f.id}: {seconds:.0f} s; "
                      f"re-plotted from {len(stored)} stored result(s) ===", flush=True)
            else:
                print(f"=== {f.id}: {text}; it runs after the re-plots ===", flush=True)
    except BaseException:  # Ctrl-C, SIGTERM: stop the workers (each shuts its kernel down)
        for child in mp.active_children():
            child.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return done


def _replot_one(notebook: str, target: str, parameters: dict) -> tuple[bool, float, set, str]:
    """In a worker process: (finished, seconds, results loaded, its output or why not)."""
    import io
    import signal

    from papermill.exceptions import PapermillExecutionError

    from .store import NO_TRAIN_ENV

    # SIGTERM (the parent stopping) as Ctrl-C: papermill then shuts the kernel down
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ[NO_TRAIN_ENV] = "1"  # the kernel inherits it: missing results raise
    out = io.StringIO()
    t0 = time.time()
    try:
        stored, computed = execute(notebook, Path(target), parameters, stream=out)
    except PapermillExecutionError as e:
        why = ("results not in the store" if e.ename == "StaleResultError"
               else f"{e.ename} without training")
        return False, 0.0, set(), why
    return not computed, time.time() - t0, stored, out.getvalue()


def execute(notebook: str, target: Path, parameters: dict, stream=None) -> tuple[set, set]:
    """Run ``notebooks/<notebook>.ipynb`` with papermill into ``target``; return the names of the
    results it loaded from the store and of those it computed.

    The notebook's output streams to ``stream`` (default: this terminal) as it runs. It is
    executed into ``build/executing/`` and moved to ``target`` (normalized) only when every cell
    finished: a failed or interrupted execution leaves ``target`` untouched and the partial
    notebook there.
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
                                 progress_bar=False, stdout_file=stream or sys.stdout,
                                 stderr_file=stream or sys.stderr)
        atomic_write_bytes(target, normalized(nb, notebook, target))
        running.unlink()
        events = [json.loads(line) for line in Path(log).read_text().splitlines() if line]
    except BaseException:
        print(f"(the partial notebook is {running}; {target} was not replaced)",
              file=stream or sys.stderr)
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
    estimate shown while no from-scratch time covers all of them; updated when the figure is
    computed from scratch or its number of results changes, not when some are recomputed)."""
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
    # the training seconds follow the set of results (from scratch, or runs added), not a rerun
    # of some of them: a recomputed run's new wall time would rewrite the file by a second
    if train_s is not None and (("train_s" not in entry) or (computed and not stored)
                                or entry.get("results") != computed + stored):
        entry["train_s"] = round(train_s)
    entry["results"] = computed + stored
    if entry == data[preset].get(fig_id):
        return
    data[preset][fig_id] = entry
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
