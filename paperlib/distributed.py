"""One run on K processes (DDP ranks): ``torchrun --nproc-per-node K -m paperlib train ...``, or
the K tasks of a submitit job (``make figures NPROC_PER_RUN=K``).

The ranks run paperlib's one training loop (:func:`paperlib.train.train`) in lockstep; only the
forming of a step's gradient is split (``train.gradient``, onto the same public step functions),
and the results are summed with ``torch.distributed.all_reduce`` (gloo on CPU, NCCL on CUDA):

* **SGD**: the batch of B (drawn and augmented identically on every rank: counter-based
  seeds) is cut into K contiguous parts of B/K; rank r differentiates part r; the gradient is
  the mean of the K part gradients. G and N come free from the same K gradients: each rank's
  |g_r|² and the all-reduced mean's |ḡ|² go into the monitor's k-sample estimator
  (:func:`paperlib.monitor.estimate_from_norms`, K sources of B/K; with K = 2 the two parts are
  the single process's two half batches, so the estimate is the same).
* **SVAG**: the 2B examples [γ1; γ2] are cut into K parts (K even, so each part lies in one of
  the two batches); the step's gradient c1·ḡ1 + c2·ḡ2 is all-reduced with each part weighted
  by its batch's coefficient. On measuring steps the two batches' gradient sums are
  all-reduced as a [2, d] stack instead, giving ḡ1, ḡ2 and the single process's two-batch
  estimate (:func:`paperlib.nsr.online_nsr`).
* **GD / NGD**: the full-data pass is split by chunk (chunk j of ``split_chunks(n,
  chunk_size)`` on rank j mod K); the NGD weights are drawn once per step for all n examples
  from the step's generator, identically on every rank, and each rank uses its chunks' slice.

Every rank then applies the same all-reduced gradient, so the parameters stay identical and
every rank keeps the same history (each evaluates the test set; rank 0 alone writes the store:
checkpoints, history, manifest). A checkpoint holds no per-rank state, so a run resumes with any
K. With K = 1 nothing is split: the run is bitwise the plain one.

**BatchNorm** (train-mode BN couples a batch's examples): a rank normalizes over its own part
only, so SGD on K ranks would be SGD with BN statistics over B/K examples, another algorithm
than the run's (and the run id would not say so): refused. SVAG on K = 2 ranks is exact: each
rank holds one of SVAG's two batches, whose statistics the single process also computes per
batch; the running statistics (used at evaluation) are merged after each step into the value
the single process reaches by updating with γ1 then γ2.

Results equal the single process's up to the order of float reductions (a sum over ranks
instead of over one batch, a mean of K means), i.e. ~1e-7 relative per step in float32, which
training then amplifies; ``tests/test_distributed.py`` states the tolerance it checks.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .monitor import estimate_from_norms
from .nsr import online_nsr
from .sampling import Sampling
from .stepstats import StepStats
from .svag import svag_coefficients

__all__ = ["Ranks", "check_supported", "current", "is_writer", "launched", "process_group"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the K ranks of one run."""

    rank: int
    world: int

    def owns(self, chunk: int) -> bool:
        """Whether full-data chunk ``chunk`` is differentiated here (round robin)."""
        return chunk % self.world == self.rank

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a batch ``[m, ...]`` (m divisible by K)."""
        size = t.shape[0] // self.world
        return t[self.rank * size:(self.rank + 1) * size]


def launched() -> bool:
    """Whether this process was started as one of several ranks (torchrun, submitit tasks)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current() -> Ranks | None:
    """The ranks of the initialized process group, or None for one process (K = 1 too)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size())


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextlib.contextmanager
def process_group():
    """Join the process group described by the environment (``MASTER_ADDR``, ``RANK``, ...)
    for the block: NCCL when CUDA is present (each rank on GPU ``LOCAL_RANK``), else gloo.
    Without those variables, a no-op (one process)."""
    if not launched() or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_supported(config, coupled: bool, ranks: Ranks | None) -> None:
    """Refuse, before anything trains, a run that K ranks cannot split exactly.

    Raises:
        ValueError: naming K and what the run would need.
    """
    if ranks is None:
        return
    K, rule, B = ranks.world, config.update_rule, config.batch_size
    if rule == "sgd":
        if coupled:
            raise ValueError(
                f"SGD on {K} ranks with train-mode BatchNorm (norm='bn') would normalize over "
                f"B/K = {B / K:g} examples per rank, another algorithm than this run's; train "
                "it on one process (or use GroupNorm, or SVAG on 2 ranks)")
        if B % K:
            raise ValueError(f"batch_size={B} is not divisible by the {K} ranks; each rank "
                             "takes B/K examples of a step's batch")
    elif rule == "svag":
        if K % 2 or (2 * B) % K:
            raise ValueError(f"SVAG on {K} ranks: each rank takes 2B/K of the step's 2B = "
                             f"{2 * B} examples within one of its two batches, so K must be "
                             "even and divide 2B")
        if coupled and K != 2:
            raise ValueError(f"SVAG with train-mode BatchNorm runs on 1 or 2 ranks (one of its "
                             f"two batches each, as their statistics are per batch), not {K}")


def _sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def _scalars(parts: list[StepStats], extra: list[torch.Tensor] = ()) -> torch.Tensor:
    """float64 [loss_sum, correct (NaN: not a classifier), *extra] summed over ranks."""
    s = parts[0]
    nan = torch.full((), float("nan"), dtype=torch.float64, device=s.grad.device)
    v = torch.stack([s.loss_sum.double(), nan if s.correct is None else s.correct.double(),
                     *[e.double() for e in extra]])
    return _sum(v)


def _stats(grad, scalars, count, G=None, N=None) -> StepStats:
    correct = None if torch.isnan(scalars[1]) else scalars[1].round().long()
    return StepStats(grad, scalars[0], count, correct, G, N)


def reduce_parts(part: StepStats, ranks: Ranks, *, batch_size: int,
                 sampling: Sampling | None) -> StepStats:
    """SGD: the step's StepStats from this rank's part (``part.grad`` its mean gradient over
    B/K examples); with ``sampling``, G and N from the K part gradients (K sources)."""
    K = ranks.world
    grad = _sum(part.grad.clone()) / K
    scalars = _scalars([part], [part.grad_sq])
    G = N = None
    if sampling is not None:
        G, N = estimate_from_norms(float(scalars[2]), float(grad.double().square().sum()),
                                   sources=K, batch_size=batch_size, sampling=sampling)
        G, N = (torch.tensor(v, dtype=torch.float64, device=grad.device) for v in (G, N))
    return _stats(grad, scalars, batch_size, G, N)


def reduce_svag(part: StepStats, ranks: Ranks, *, l: float, batch_size: int,
                sampling: Sampling | None) -> StepStats:
    """SVAG: the step's StepStats from this rank's part of [γ1; γ2] (its mean gradient over
    2B/K examples); with ``sampling``, G and N from ḡ1 and ḡ2 as in :func:`svag_step`."""
    half = ranks.world // 2
    c1, c2 = svag_coefficients(l)
    first = ranks.rank < half  # this part lies in γ1
    scalars = _scalars([part])
    if sampling is None:
        grad = _sum(part.grad * ((c1 if first else c2) / half))
        return _stats(grad, scalars, 2 * batch_size)
    stack = torch.zeros((2, part.grad.numel()), dtype=part.grad.dtype, device=part.grad.device)
    stack[0 if first else 1] = part.grad
    g1, g2 = _sum(stack) / half
    G, N = online_nsr(g1, g2, batch_size, batch_size, n=sampling.population,
                      disjoint=sampling.disjoint)
    return _stats(c1 * g1 + c2 * g2, scalars, 2 * batch_size, G, N)


def reduce_full_data(part: StepStats, *, gd: bool) -> StepStats:
    """GD / NGD: the sums over every rank's chunks (``part`` from ``gd_step`` / ``ngd_step``
    with ``shard=``); GD's G = |∇L|² of the summed gradient, N = 0."""
    grad = _sum(part.grad.clone())
    scalars = _scalars([part])
    count = int(_sum(torch.tensor([part.count], device=grad.device))[0])
    if not gd:
        return _stats(grad, scalars, count)
    return _stats(grad, scalars, count, grad.double().square().sum(),
                  torch.zeros((), device=grad.device))


class BatchNormMerge:
    """SVAG with BatchNorm on 2 ranks: after a step, the running statistics the single process
    would hold after updating with γ1 (rank 0's update) and then γ2 (rank 1's).

    With r the statistics before the step and r0, r1 the two ranks' after it, rank 1 updated
    r1 = r + m1 (μ2 − r), so the sequential value is r0 + m2 (μ2 − r0) with
    μ2 = r + (r1 − r)/m1 (m the momentum, or 1/t for a cumulative average).
    """

    def __init__(self, model: torch.nn.Module):
        self.bns = [m for m in model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                    and m.track_running_stats]

    def before(self) -> None:
        self.saved = [(m.running_mean.clone(), m.running_var.clone()) for m in self.bns]

    @torch.no_grad()
    def after(self) -> None:
        for m, (mean0, var0) in zip(self.bns, self.saved, strict=True):
            t = int(m.num_batches_tracked)  # this rank's count: one update this step
            m1 = 1.0 / t if m.momentum is None else m.momentum
            m2 = 1.0 / (t + 1) if m.momentum is None else m.momentum
            mine = torch.stack([m.running_mean, m.running_var])
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine)
            for k, r in enumerate((mean0, var0)):
                r0, r1 = both[0][k], both[1][k]
                mu2 = r + (r1 - r) / m1
                (m.running_mean if k == 0 else m.running_var).copy_(r0 + m2 * (mu2 - r0))
            m.num_batches_tracked.add_(1)

