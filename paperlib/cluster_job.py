"""The job a submitit executor runs for one run of a sweep (:mod:`paperlib.cluster`); its own
module because it needs submitit at import, an optional dependency (``paperlib[cluster]``)."""

from __future__ import annotations

import time

import submitit

from .config import RunConfig
from .store import diagnose, run, run_id


class RunJob(submitit.helpers.Checkpointable):
    """One job: ``store.run(config, root)`` in a fresh process, one intra-op thread per rank.

    submitit calls :meth:`checkpoint` (inherited) when the job is preempted or about to time
    out; it returns this same call, which submitit requeues. No state is pickled beyond the
    config: the run's own checkpoint in the store is the state the requeued job resumes from.
    With ``nproc`` > 1 the job's tasks are the ranks of one DDP run
    (``submitit.helpers.TorchDistributedEnvironment`` sets the ``torch.distributed``
    environment; :mod:`paperlib.distributed` does the rest).
    """

    def __call__(self, config: RunConfig, root: str, nproc: int = 1) -> tuple[str, str, float]:
        import torch

        torch.set_num_threads(1)  # as make figures' workers: the same numerics
        t0 = time.time()
        state = diagnose(config, root)
        if state != "not stored":  # e.g. requeued after preemption: resumes from its checkpoint
            print(f"run {run_id(config)}: {state}", flush=True)
        if nproc > 1:
            from . import distributed

            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
            with distributed.process_group():
                result = run(config, root, progress=False)
        else:
            result = run(config, root, progress=False)
        return run_id(config), result.status, time.time() - t0
