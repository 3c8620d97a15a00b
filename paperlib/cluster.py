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

This module holds the options (:class:`ClusterOptions`, :func:`from_env`, Slurm's time forms);
:mod:`paperlib.cluster_submit` submits the jobs, records them and waits for local ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field

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
