"""Sweeps on a cluster, or in local jobs, through submitit: each run not yet in the store is one
job (one task of a Slurm job array), and the store stays the only record of results.

Two executors (``ClusterOptions.executor``):

* ``"slurm"``: every missing run goes into ONE Slurm job array (``sbatch --array=0-(n-1)%P``,
  P = ``array_parallelism``) and the caller returns at once with :class:`RunsPendingError`,
  naming the runs still in flight; it never waits for the queue. The job ids are recorded in
  ``<runs>/.jobs/<run_id>.json``, so the next sweep (``make figures`` again) does not submit
  a run whose job is still queued or running, resubmits one whose job ended without a result
  (it says how the job ended and where its log is), and plots once every result is stored.
* ``"local"``: the same jobs through submitit's ``LocalExecutor`` on this machine (one process
  per run, at most ``array_parallelism`` at a time), and the caller waits: what the tests and
  a workstation use.

A job is :class:`paperlib.cluster_job.RunJob`, a ``submitit.helpers.Checkpointable`` around
``store.run(config)``. On preemption or when the time limit nears, Slurm signals the job and
submitit requeues the same call; ``store.run`` then resumes from the run's last checkpoint in
the store (written every ``checkpoint_every`` base steps, so at most that much training is
redone). A run that needs more wall time than ``time_limit`` therefore finishes over several
requeues (at most ``max_requeues`` timeouts). Every job trains with one intra-op thread, as the
local process pool does, so a run trained by a job is bitwise the run trained by ``make
figures`` on the same kind of machine.

``make figures EXECUTOR=slurm`` reaches the notebooks' kernels through the environment
(``PAPERLIB_EXECUTOR``, ``PAPERLIB_PARTITION``, ... : :data:`ENV`), as ``PAPERLIB_STORE`` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config import RunConfig
from .files import atomic_write_bytes
from .paths import runs_root
from .store import load_result, run_id
from .validate import check_int

EXECUTORS = ("local", "slurm")
ENV = {  # ClusterOptions field -> environment variable (what `make figures` passes on)
    "executor": "PAPERLIB_EXECUTOR",
    "partition": "PAPERLIB_PARTITION",
    "gpus_per_job": "PAPERLIB_GPUS_PER_JOB",
    "time_limit": "PAPERLIB_TIME_LIMIT",
    "array_parallelism": "PAPERLIB_ARRAY_PARALLELISM",
    "nproc_per_run": "PAPERLIB_NPROC_PER_RUN",
    "slurm_extra": "PAPERLIB_SLURM_EXTRA",
}
# sacct states of a job that may still produce its result (submitit requeues a preempted or
# timed-out job, which sacct then shows as REQUEUED / PENDING).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
UNKNOWN_GRACE_S = 600  # sacct may not list a job for a while after sbatch returned
POLL_S = 0.5  # local executor: how often the waiting sweep looks at its jobs


class RunsPendingError(Exception):
    """Runs of a sweep are in cluster jobs that have not finished: plot again later.

    Attributes:
        pending: ``[(run_id, job_id, summary)]`` of the runs still in flight.
    """

    def __init__(self, pending: list[tuple[str, str, str]], submitted: int):
        self.pending = pending
        self.submitted = submitted
        jobs = sorted({j.split("_")[0] for _, j, _ in pending})
        lines = "\n  ".join(f"{r} (job {j}): {s}" for r, j, s in pending)
        super().__init__(
            f"{len(pending)} run(s) pending in Slurm job(s) {', '.join(jobs)} ({submitted} "
            f"submitted now, {len(pending) - submitted} already queued or running); run the "
            f"same command again when they finish (squeue -j {','.join(jobs)}):\n  {lines}")


def parse_time_limit(value: str | int) -> int:
    """Minutes from Slurm's time forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M`` or
    ``D-H:M:S`` (as ``sbatch --time`` reads them: two numbers are minutes:seconds); seconds
    round up to the next minute.

    Raises:
        ValueError: anything else, or a limit under one minute.
    """
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?", text)
    if not m:
        raise ValueError(f"time_limit={value!r} is not allowed; give minutes (e.g. 1440), "
                         "M:S, H:M:S, D-H, D-H:M or D-H:M:S (Slurm's forms)")
    days, a, b, c = m.groups()
    n = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mins, secs = (n + [0, 0])[:3]
        minutes = int(days) * 1440 + h * 60 + mins + (secs > 0)
    elif len(n) == 1:  # M
        minutes = n[0]
    elif len(n) == 2:  # M:S
        minutes = n[0] + (n[1] > 0)
    else:  # H:M:S
        minutes = n[0] * 60 + n[1] + (n[2] > 0)
    if minutes < 1:
        raise ValueError(f"time_limit={value!r} is not allowed; at least one minute")
    return minutes


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how the runs of a sweep are submitted (defaults in brackets).

    Attributes:
        executor: "local" (submitit's LocalExecutor on this machine; the sweep waits) or
            "slurm" (one job array; the sweep returns with :class:`RunsPendingError`).
        partition: Slurm partition [the cluster's default].
        gpus_per_job: GPUs per job [slurm: 1; local: 0, i.e. CPU, or 1 when CUDA is present].
        time_limit: minutes per job before it is requeued from its checkpoint [1440 = 24 h].
        array_parallelism: jobs running at once [slurm: 64; local: the number of cores].
        nproc_per_run: processes (DDP ranks, ``tasks_per_node``) per run [1]; see
            :mod:`paperlib.distributed` for what K ranks compute.
        max_requeues: timeouts a job may be requeued after [30].
        slurm_extra: further sbatch options by submitit name, e.g. ``{"account": "abc",
            "qos": "high", "constraint": "a100"}`` [none].
        folder: submitit's job files and logs [``<runs>/.jobs/submitit``].

    Raises:
        ValueError: an unknown executor, a non-positive count or time, options that the
            executor does not use (a partition for local), or GPUs fewer than ranks.
    """

    executor: str = "local"
    partition: str | None = None
    gpus_per_job: int | None = None
    time_limit: int = 1440
    array_parallelism: int | None = None
    nproc_per_run: int = 1
    max_requeues: int = 30
    slurm_extra: dict = field(default_factory=dict)
    folder: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r} is not allowed; choose one of "
                             f"{list(EXECUTORS)}")
        for name, low in (("gpus_per_job", 0), ("array_parallelism", 1), ("nproc_per_run", 1),
                          ("max_requeues", 0), ("time_limit", 1)):
            check_int(name, getattr(self, name), low, allow_none=True)
        if self.executor == "local" and (self.partition or self.slurm_extra):
            raise ValueError(f"partition={self.partition!r} / slurm_extra={self.slurm_extra!r} "
                             "are Slurm options; the local executor does not use them")
        if not isinstance(self.slurm_extra, dict):
            raise ValueError(f"slurm_extra={self.slurm_extra!r} is not allowed; a dict of sbatch "
                             "options by submitit name")
        if importlib.util.find_spec("submitit") is None:
            raise ValueError(f"executor={self.executor!r} needs submitit: pip install "
                             "'paperlib[cluster]' (or the executor 'pool')")
        if self.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise ValueError("executor='slurm' needs Slurm's sbatch and srun on PATH; this "
                             "machine has none (use EXECUTOR=local here)")
        gpus = self.gpus
        if gpus and self.nproc_per_run > 1 and gpus != self.nproc_per_run:
            raise ValueError(f"gpus_per_job={gpus} with nproc_per_run={self.nproc_per_run}: "
                             "each rank uses one GPU, so give as many GPUs as ranks (or 0)")

    @property
    def waits(self) -> bool:
        """Whether the sweep waits for its jobs (local) or returns once submitted (Slurm)."""
        return self.executor == "local"

    @property
    def gpus(self) -> int:
        if self.gpus_per_job is not None:
            return self.gpus_per_job
        if self.executor == "slurm":
            return self.nproc_per_run
        import torch

        return 1 if torch.cuda.is_available() else 0

    @property
    def parallelism(self) -> int:
        if self.array_parallelism is not None:
            return self.array_parallelism
        return 64 if self.executor == "slurm" else os.cpu_count() or 1

    def to_env(self) -> dict[str, str]:
        """The environment variables that make :func:`from_env` return these options."""
        out = {}
        for name, var in ENV.items():
            v = getattr(self, name)
            if v is None or v == {}:
                continue
            out[var] = json.dumps(v) if name == "slurm_extra" else str(v)
        return out


def from_env(environ=None) -> ClusterOptions | None:
    """The options ``make figures EXECUTOR=...`` put in the environment, or None when
    ``PAPERLIB_EXECUTOR`` is unset or "pool" (the default local process pool).

    Raises:
        ValueError: a variable with a value that is not allowed (named with its value).
    """
    env = os.environ if environ is None else environ
    executor = env.get(ENV["executor"], "")
    if executor in ("", "pool"):
        others = [v for k, v in ENV.items() if k != "executor" and env.get(v)]
        if others:
            raise ValueError(f"{', '.join(others)} set without {ENV['executor']}=slurm or local "
                             "(the local process pool does not use them)")
        return None
    kw: dict = {"executor": executor}
    for name, var in ENV.items():
        value = env.get(var, "")
        if name == "executor" or value == "":
            continue
        if name == "partition":
            kw[name] = value
        elif name == "time_limit":
            kw[name] = parse_time_limit(value)
        elif name == "slurm_extra":
            try:
                kw[name] = json.loads(value)
            except ValueError:
                raise ValueError(f"{var}={value!r} is not allowed; a JSON object, e.g. "
                                 '\'{"account": "abc"}\'') from None
        else:
            try:
                kw[name] = int(value)
            except ValueError:
                raise ValueError(f"{var}={value!r} is not allowed; an integer") from None
    return ClusterOptions(**kw)


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
