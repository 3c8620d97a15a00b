"""Sweeps: a list of RunConfig → the runs (from the store, or trained through an executor) →
one tidy DataFrame, one row per run × logged step, carrying each run's config.

The figure modules (:mod:`paperlib.figures`) build the configs and compute summaries and claims
from the frame this module returns; a user's own sweep calls :func:`sweep` the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, as_completed
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .checks import check_data, check_trainable
from .cluster import ClusterOptions
from .cluster import from_env as executor_from_env
from .cluster_submit import forget_finished, train_runs
from .config import RunConfig, refuse_ignored
from .equilibrium import run_equilibrium_stats
from .files import StaleResultError
from .plan import check_budget, cost, device_of, duration, estimate_compute, estimate_seconds
from .store import (
    RunResult,
    diagnose,
    load_result,
    note_result,
    run,
    run_id,
    training_allowed,
)

RUN_COLUMNS = ("algo", "l", "batch_size", "lr", "wd", "seed", "sampler", "arch", "width", "norm",
               "resolution", "subset")


# --- running a sweep ------------------------------------------------------------------------------

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool's terminate() ends a worker now


def _run_one(job: tuple[int, RunConfig, str | None]) -> tuple[int, str, float]:
    i, config, root = job
    t0 = time.time()
    result = run(config, root, progress=False)
    return i, result.status, time.time() - t0


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while training, so a `kill` stops the worker processes
    as Ctrl-C does (the pool is terminated on the way out) instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_all(todo: list[RunConfig], root, workers: int | None, executor: Executor | None,
               allow_long: bool | None) -> None:
    """Train ``todo`` (longest first), printing the plan and one line per finished run."""
    root = None if root is None else str(root)
    workers = workers or os.cpu_count() or 1
    jobs = [(i, c, root) for i, c in enumerate(todo)]
    with _sigterm_as_interrupt():
        if isinstance(executor, ClusterOptions):  # submitit: local jobs, or a Slurm job array
            print("wall time: not estimated (submitit executor)", flush=True)
            _report(todo, train_runs(todo, root, executor), None, 1)
            return
        if executor is not None:  # any concurrent.futures.Executor
            print("wall time: not estimated (external executor)", flush=True)
            futures = [executor.submit(_run_one, job) for job in jobs]
            try:
                _report(todo, (f.result() for f in as_completed(futures)), None, 1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            return
        if workers == 1:  # in-process: no pool start-up (smoke runs)
            seconds, _ = _measure(todo)
            _check_plan(todo, seconds, 1, allow_long)
            _report(todo, map(_run_one, jobs), seconds, 1)
            return
        # A pool whose terminate() kills the workers at once (Ctrl-C, SIGTERM, a failed run,
        # a plan over budget). The estimate is measured in a worker, as the runs will train;
        # this process must not touch CUDA before it forks (torch then refuses CUDA in the
        # workers), so the workers also say which device the runs use.
        pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker,
                                                  initargs=(1,))
        try:
            seconds, on_cpu = pool.apply(_measure, (todo,))
            parallel = min(workers, len(todo)) if on_cpu else 1  # GPU workers share a device
            _check_plan(todo, seconds, parallel, allow_long)
            _report(todo, pool.imap_unordered(_run_one, jobs), seconds, parallel)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()


def _measure(todo: list[RunConfig]) -> tuple[list[float], bool]:
    """Seconds per run measured in this process, and whether every run trains on the CPU."""
    return estimate_seconds(todo), all(device_of(c) == "cpu" for c in todo)


def _check_plan(todo, seconds: list[float], parallel: int, allow_long: bool | None) -> None:
    wall = sum(seconds) / parallel
    print(f"estimated wall time on this machine: {duration(wall)} ({duration(sum(seconds))} "
          f"of training over {parallel} parallel run(s))", flush=True)
    check_budget(wall, f"training {len(todo)} run(s)", allow_long)


def _report(todo, finished, seconds: list[float] | None, parallel: int) -> None:
    t0 = time.time()
    left = set(range(len(todo)))
    for n, (i, status, took) in enumerate(finished, 1):
        left.discard(i)
        c = todo[i]
        note_result("run", run_id(c), "computed")
        eta = ""
        if seconds is not None and left:
            eta = f", ≈ {duration(sum(seconds[j] for j in left) / parallel)} left"
        print(f"[{n}/{len(todo)}] {status} in {duration(took)}: {run_id(c)} {c.summary()} "
              f"(elapsed {duration(time.time() - t0)}{eta})", flush=True)


def run_all(
    configs: list[RunConfig],
    *,
    root: str | Path | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    allow_long: bool | None = None,
) -> list[RunResult]:
    """Results of all ``configs``, training the missing ones in parallel worker processes.

    Prints the plan first (runs stored, to train and recomputed with the reason; compute and
    the wall time estimated on this machine), then one line per finished run. Every run to
    train is checked before any starts (its values, its net, its data set).

    Args:
        workers: processes with one torch thread each (default: one per core; on 2 cores this
            measured 1.3× the throughput of one 2-thread process).
        executor: a ``cluster.ClusterOptions`` (submitit: local jobs, or a Slurm job array
            that returns at once with ``cluster.RunsPendingError``), or any
            ``concurrent.futures.Executor``; replaces the default process pool. None: the
            environment's ``PAPERLIB_EXECUTOR`` (``cluster.from_env``), else the pool.
        allow_long: go ahead when the estimate exceeds ``plan.LONG_HOURS`` (None: the
            environment variable ``PAPERLIB_ALLOW_LONG`` decides).
    Raises:
        StaleResultError: when training is not allowed (PAPERLIB_NO_TRAIN=1) and runs are missing.
        cluster.RunsPendingError: runs are in Slurm jobs that have not finished (after
            submitting the missing ones); nothing to plot yet.
        plan.TooLongError: the estimate exceeds the limit and going ahead was not allowed.
        ValueError: a run cannot train (nothing was started).
    """
    if executor is None:
        executor = executor_from_env()  # make figures EXECUTOR=... reaches the kernel so
    unique = list(dict.fromkeys(configs))
    todo = [c for c in unique if load_result(c, root) is None]
    reasons = {c: diagnose(c, root) for c in todo}
    recomputed = [c for c in todo if reasons[c] != "not stored"]
    print(f"{len(unique)} runs: {len(unique) - len(todo)} stored, {len(todo)} to train"
          + (f", of which {len(recomputed)} recomputed" if recomputed else ""))
    for c in recomputed:
        print(f"  recomputing {run_id(c)} [{c.summary()}]: {reasons[c]}")
    for c in unique:
        if c not in reasons:
            note_result("run", run_id(c), "stored")
    if todo and not training_allowed():
        names = "\n  ".join(f"{run_id(c)} ({reasons[c]}): {c.summary()}" for c in todo)
        raise StaleResultError(
            f"{len(todo)} result(s) missing or stale; regenerate them with `make figures` "
            f"(or this notebook at its preset) outside the tests:\n  {names}")
    if todo:
        for c in todo:
            refuse_ignored(c)
            check_trainable(c)
        for name in sorted({c.dataset for c in todo}):
            check_data(name)
        print("to train:", estimate_compute(todo), flush=True)
        todo.sort(key=cost, reverse=True)  # longest first: better packing on few workers
        _train_all(todo, root, workers, executor, allow_long)
    results = [load_result(c, root) for c in unique]
    if isinstance(executor, ClusterOptions):
        forget_finished(unique, root)  # their jobs' records
    by_config = dict(zip(unique, results, strict=True))
    return [by_config[c] for c in configs]


def sweep(configs: list[RunConfig], **run_all_kw) -> tuple[pd.DataFrame, list[RunResult]]:
    """``run_all`` then ``tidy``: what each figure function returns to its notebook."""
    results = run_all(configs, **run_all_kw)
    return tidy(results), results


def given(**kw) -> dict:
    """RunConfig overrides from optional parameters: None means "the preset's value" (so 0,
    0.0 and "" stay real values, e.g. ``momentum=0`` or ``eval_from=0.0``)."""
    return {k: v for k, v in kw.items() if v is not None}


def tidy(results: list[RunResult], **labels) -> pd.DataFrame:
    """One DataFrame, one row per run × logged step: the history columns, the run's settings
    (``RUN_COLUMNS``), ``run_id``, ``status``, ``diverged_step``, ``total_effective_steps`` and
    the run's whole ``RunConfig`` in ``config`` (what summaries and claims need beyond the
    columns)."""
    frames = []
    for r in results:
        h = r.history.copy()
        for col in RUN_COLUMNS:
            h[col] = getattr(r.config, col)
        h["config"] = [r.config] * len(h)
        h["run_id"] = r.path.name
        h["status"] = r.status
        h["diverged_step"] = r.diverged_step
        h["total_effective_steps"] = r.config.base_steps
        frames.append(h)
    df = pd.concat(frames, ignore_index=True)
    for k, v in labels.items():
        df[k] = v
    return df


def final_test_acc(df: pd.DataFrame, last_frac: float = 0.1) -> pd.DataFrame:
    """Per run: mean test accuracy (%) over the evaluations in the last ``last_frac`` of training
    (several evaluations average out evaluation noise; diverged runs get NaN), with the run's
    settings and ``config``; ``final_evals`` and ``final_test_acc_sd`` (the spread of those
    evaluations: the within-run noise, which does not include seed-to-seed variation)."""
    rows = []
    for rid, h in df.groupby("run_id", sort=False):
        ev = h.dropna(subset=["test_acc"])
        end = h["total_effective_steps"].iloc[0]
        late = ev[ev["effective_step"] >= (1 - last_frac) * end]
        ok = len(late) and h["status"].iloc[0] == "complete"
        rows.append({"run_id": rid, **{c: h[c].iloc[0] for c in RUN_COLUMNS},
                     "config": h["config"].iloc[0], "status": h["status"].iloc[0],
                     "final_test_acc": late["test_acc"].mean() if ok else np.nan,
                     "final_evals": len(late) if ok else 0,
                     "final_test_acc_sd": late["test_acc"].std() if ok else np.nan})
    return pd.DataFrame(rows)


def equilibrium_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per completed run: :func:`paperlib.equilibrium.run_equilibrium_stats` (window means of
    G, N, R with standard errors, eq. (11)'s sides and gap) with the run's settings."""
    rows = []
    for rid, h in df.groupby("run_id", sort=False):
        if h["status"].iloc[0] != "complete":
            continue
        stats = run_equilibrium_stats(h, h["config"].iloc[0])
        rows.append({"run_id": rid, **{c: h[c].iloc[0] for c in RUN_COLUMNS}, **stats})
    if not rows:  # every run diverged: the same columns, no rows
        return pd.DataFrame(columns=["run_id", *RUN_COLUMNS, "G", "N", "R", "N_over_G_se",
                                     "eq11_rel_err", "eq11_gap", "eq11_gap_se", "R_drift"])
    return pd.DataFrame(rows)


