"""Submitting a sweep's missing runs as submitit jobs (:mod:`paperlib.cluster` explains the two
executors and holds their options), recording which run is in which job
(``<runs>/.jobs/<run_id>.json``), and waiting for the local executor's jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from .cluster import ClusterOptions, RunsPendingError
from .config import RunConfig
from .files import atomic_write_bytes
from .paths import runs_root
from .store import load_result, run_id

# sacct states of a job that may still produce its result (submitit requeues a preempted or
# timed-out job, which sacct then shows as REQUEUED / PENDING).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
UNKNOWN_GRACE_S = 600  # sacct may not list a job for a while after sbatch returned
POLL_S = 0.5  # local executor: how often the waiting sweep looks at its jobs



# --- job records: which runs are in flight, in which jobs ------------------------------------

def jobs_dir(root) -> Path:
    """``<runs>/.jobs``: one JSON record per run submitted to a cluster, and submitit's files."""
    return Path(root or runs_root()) / ".jobs"


def _record_path(root, rid: str) -> Path:
    return jobs_dir(root) / f"{rid}.json"


def read_record(root, rid: str) -> dict | None:
    """The job record of run ``rid`` (job id, executor, submitit folder, time), or None."""
    try:
        return json.loads(_record_path(root, rid).read_text())
    except (OSError, ValueError):
        return None


def _write_record(root, config: RunConfig, job, options: ClusterOptions, folder: Path) -> None:
    rid = run_id(config)
    rec = {"run_id": rid, "job_id": str(job.job_id), "executor": options.executor,
           "folder": str(folder), "submitted": time.time(), "summary": config.summary(),
           "options": asdict(replace(options, folder=str(folder)))}
    atomic_write_bytes(_record_path(root, rid), json.dumps(rec, indent=1).encode())


def job_state(record: dict) -> str:
    """How the job of a record stands: "active" (queued, running or being requeued) or the
    reason it will not produce the result (its final Slurm state, or "gone")."""
    if record["executor"] == "slurm":
        import submitit

        state = submitit.SlurmJob(record["folder"], record["job_id"]).state.upper()
        state = state.split()[0] if state else "UNKNOWN"
        if state in ACTIVE_STATES:
            return "active"
        if state in ("UNKNOWN", "") and time.time() - record["submitted"] < UNKNOWN_GRACE_S:
            return "active"
        return state
    pid = int(record["job_id"])  # a local job's id is its controller's pid
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return "gone"
    with contextlib.suppress(OSError):  # a recycled pid is not our job
        if b"submitit" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return "gone"
    return "active"


def _stderr_of(record: dict) -> str:
    from submitit.core.utils import JobPaths

    return str(JobPaths(record["folder"], record["job_id"], 0).stderr)


# --- submitting --------------------------------------------------------------------------------

def make_executor(options: ClusterOptions, folder: Path):
    """A configured ``submitit.AutoExecutor`` for ``options`` (jobs and logs in ``folder``).

    Raises:
        ValueError: an sbatch option in ``slurm_extra`` that submitit does not know.
    """
    import submitit

    cluster = "slurm" if options.executor == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster,
                               slurm_max_num_timeout=options.max_requeues,
                               local_max_num_timeout=options.max_requeues)
    params = dict(name="paperlib", timeout_min=options.time_limit, nodes=1,
                  tasks_per_node=options.nproc_per_run, gpus_per_node=options.gpus,
                  cpus_per_task=2)
    if cluster == "slurm":
        params.update(slurm_array_parallelism=options.parallelism,
                      slurm_partition=options.partition,
                      **{f"slurm_{k}": v for k, v in options.slurm_extra.items()})
    try:
        ex.update_parameters(**params)
    except NameError as e:  # submitit's message lists the valid options
        raise ValueError(f"slurm_extra={options.slurm_extra!r} is not allowed: {e}") from None
    return ex


def train_runs(todo: list[RunConfig], root, options: ClusterOptions):
    """Train ``todo`` as submitit jobs; yield ``(index, status, seconds)`` per finished run.

    Local: submits at most ``parallelism`` jobs at a time, yields as they finish and cancels
    the live jobs when interrupted (Ctrl-C, SIGTERM) or when a job fails. Slurm: submits the
    runs that are not in a live job as one array, then raises :class:`RunsPendingError`.

    Raises:
        RunsPendingError: Slurm jobs are in flight (nothing to wait for here).
        RuntimeError: a local job failed (its run, job id, error and log are named).
    """
    from .cluster_job import RunJob

    root = str(root or runs_root())
    folder = Path(options.folder) if options.folder else jobs_dir(root) / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    in_flight, to_submit = [], []
    for i, c in enumerate(todo):
        rec = read_record(root, run_id(c))
        state = job_state(rec) if rec is not None else None
        if state == "active":
            in_flight.append((i, rec))
            continue
        if rec is not None:
            print(f"  resubmitting {run_id(c)}: its job {rec['job_id']} ended ({state}) without "
                  f"a result; log {_stderr_of(rec)}", flush=True)
        to_submit.append(i)
    executor = make_executor(options, folder)
    if not options.waits:
        jobs = []
        if to_submit:
            with executor.batch():  # one job array
                for i in to_submit:
                    jobs.append(executor.submit(RunJob(), todo[i], root, options.nproc_per_run))
        for i, job in zip(to_submit, jobs, strict=True):
            _write_record(root, todo[i], job, options, folder)
        pending = [(run_id(todo[i]), str(j.job_id), todo[i].summary())
                   for i, j in zip(to_submit, jobs, strict=True)]
        pending += [(rec["run_id"], rec["job_id"], rec["summary"]) for _, rec in in_flight]
        print(f"submitted {len(jobs)} run(s) to Slurm"
              + (f" (array job {jobs[0].job_id.split('_')[0]})" if jobs else "")
              + f"; {len(in_flight)} already queued or running", flush=True)
        raise RunsPendingError(pending, len(jobs))
    yield from _wait_local(todo, root, options, executor, folder, to_submit, in_flight)


def _wait_local(todo, root, options, executor, folder, to_submit, in_flight):
    """Local jobs, at most ``options.parallelism`` alive (submitit's LocalExecutor starts
    every job it is given at once, unlike Slurm's ``--array=...%P``)."""
    from .cluster_job import RunJob

    queue = list(to_submit)
    live: dict = {}  # index -> job
    foreign = dict(in_flight)  # jobs of an earlier sweep still running: wait for their result
    try:
        while queue or live or foreign:
            while queue and len(live) + len(foreign) < options.parallelism:
                i = queue.pop(0)
                job = executor.submit(RunJob(), todo[i], root, options.nproc_per_run)
                _write_record(root, todo[i], job, options, folder)
                live[i] = job
            time.sleep(POLL_S)
            for i, job in list(live.items()):
                if not job.done():
                    continue
                del live[i]
                error = job.exception()
                if error is not None:
                    raise RuntimeError(
                        f"run {run_id(todo[i])} [{todo[i].summary()}] failed in local job "
                        f"{job.job_id}: {error}\n(log: {job.paths.stderr})")
                _rid, status, took = job.result()
                _forget(root, todo[i])
                yield i, status, took
            for i, rec in list(foreign.items()):
                if load_result(todo[i], root) is not None:
                    del foreign[i]
                    _forget(root, todo[i])
                    yield i, "complete", 0.0
                elif job_state(rec) != "active":  # it died: train the run ourselves
                    del foreign[i]
                    queue.append(i)
    finally:
        for job in live.values():  # stop what we started (Ctrl-C, SIGTERM, a failed run)
            job.cancel(check=False)


def _forget(root, config: RunConfig) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(root, run_id(config)).unlink()


def forget_finished(configs, root) -> None:
    """Remove the job records of runs whose result is stored (after a Slurm sweep finished)."""
    for c in configs:
        if _record_path(root, run_id(c)).exists() and load_result(c, root) is not None:
            _forget(root, c)
