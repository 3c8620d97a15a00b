"""The full-data update rules as step functions on any model: NGD and GD (eq. 3).

Each forms one step's gradient over the whole training set, accumulated over chunks so memory
stays flat in n, with per-example weights (:func:`paperlib.ngd.ngd_weights`,
:func:`paperlib.ngd.gd_weights`), and returns a :class:`StepStats`; ``shard=(rank, K)`` forms one
of K processes' parts. The nets must not couple the examples of a chunk (train-mode BatchNorm is
refused). The minibatch steps (SGD, SVAG) and the conventions all step functions share (the
per-example ``loss_fn``, ``params``, ``forward``) are in :mod:`paperlib.steps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ngd import gd_weights, ngd_weights, split_chunks
from .passes import LossFn, check_batch, example_losses, flat_grad
from .sampling import batch_coupled
from .stepstats import StepStats, step_parameters

__all__ = ["gd_step", "ngd_step"]


def _chunks(data, n: int | None, chunk_size: int):
    """(n, iterator of (x, y) chunks in a fixed order) from tensors or an iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        total = check_batch(x, y, "full-data step")
        if n is not None and n != total:
            raise ValueError(f"n={n} differs from the {total} examples in data")
        return total, ((x[s], y[s]) for s in split_chunks(total, chunk_size))
    if n is None:
        dataset = getattr(data, "dataset", None)
        if dataset is None:
            raise ValueError("pass n (the number of training examples) with an iterable of "
                             "batches that has no .dataset")
        n = len(dataset)
    return n, iter(data)


def _shard_slices(n: int, chunk_size: int, shard) -> list[slice]:
    """The chunks of ``split_chunks(n, chunk_size)`` that rank ``shard[0]`` of ``shard[1]``
    differentiates (chunk j on rank j mod K)."""
    rank, world = shard
    if not (isinstance(world, int) and isinstance(rank, int) and world >= 1
            and 0 <= rank < world):
        raise ValueError(f"shard={shard!r} is not allowed; give (rank, world) with "
                         "0 <= rank < world")
    return [s for j, s in enumerate(split_chunks(n, chunk_size)) if j % world == rank]


def _full_data_step(model, loss_fn, data, w_fn, n, chunk_size, params, forward, what,
                    shard=None):
    if batch_coupled(model):
        raise ValueError(f"{what} needs per-example losses that do not depend on the batch; the "
                         "net has train-mode BatchNorm (use GroupNorm or no normalization, or "
                         "put BatchNorm in eval mode)")
    params = step_parameters(model, params)
    if shard is not None and isinstance(data, tuple) and len(data) == 2:  # tensors: my chunks
        x_all, y_all = data
        n = check_batch(x_all, y_all, what) if n is None else n
        data = [(x_all[s], y_all[s]) for s in _shard_slices(n, chunk_size, shard)]
    if shard is not None and n is None:
        raise ValueError(f"{what} with shard= needs n (the number of training examples)")
    n, chunks = _chunks(data, n, chunk_size)
    device = params[0].device
    dtype = params[0].dtype if params[0].is_floating_point() else torch.float32
    w = w_fn(n, dtype, device)  # all n weights, drawn once: identical on every rank
    # Where each chunk's examples sit among the n: consecutive, or this rank's chunks.
    slices = iter(_shard_slices(n, chunk_size, shard)) if shard is not None else None
    total = None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    classify = True
    offset = count = 0
    for x, y in chunks:
        b = check_batch(x, y, what)
        if slices is not None:
            s = next(slices, None)
            if s is None or s.stop - s.start != b:
                raise ValueError(f"{what}: with shard={shard!r} the data must yield this rank's "
                                 f"chunks of split_chunks(n={n}, chunk_size={chunk_size})")
            offset = s.start
        elif offset + b > n:
            raise ValueError(f"{what}: the data yielded more than n={n} examples")
        losses, cr = example_losses(model, loss_fn, x, y, forward)
        grads = flat_grad((w[offset:offset + b] * losses).sum(), params)
        total = grads if total is None else total + grads
        loss_sum = loss_sum + losses.detach().sum()
        if cr is None:
            classify = False
        else:
            correct = correct + cr.sum()
        offset += b
        count += b
    if slices is not None:
        if next(slices, None) is not None:
            raise ValueError(f"{what}: the data yielded fewer chunks than rank {shard[0]} of "
                             f"{shard[1]} has")
        if total is None:  # more ranks than chunks: this rank adds nothing
            total = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
        return total, loss_sum, (correct if classify else None), count
    if offset != n:
        raise ValueError(f"{what}: the data yielded {offset} examples, expected n={n} (a "
                         "DataLoader with drop_last=True skips some)")
    return total, loss_sum, (correct if classify else None), n


def ngd_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    n: int | None = None,
    chunk_size: int = 1000,
    finite_population: bool = False,
    params=None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] | None = None,
) -> StepStats:
    """One NGD gradient (eq. 3): ∇L + ξ with ξ exactly Gaussian, Cov ξ = Σ₁/B (SGD's at batch B).

    Forms Σ_i w_i ∇ℓ_i over the whole training set with ``ngd_weights`` (drawn once per step
    from ``generator``: pass a fresh generator state each step, e.g. seeded by the step index),
    accumulated over chunks so memory stays flat in n.

    Args:
        model, loss_fn: the net (no batch coupling) and the per-example loss.
        data: ``(x, y)`` tensors of all n training examples (split into ``chunk_size`` chunks), or
            an iterable of ``(x, y)`` batches covering them once (e.g. a ``DataLoader`` with
            ``drop_last=False``; its order does not matter in distribution).
        batch_size: B, the SGD batch size whose noise covariance Σ₁/B is matched.
        generator: source of the Gaussian weights (None: torch's global RNG).
        n: number of training examples (default: ``len(data.dataset)`` or the tensors' length).
        chunk_size: examples per pass when ``data`` are tensors.
        finite_population: match without-replacement batches, Σ₁/B · (n − B)/(n − 1).
        params, forward: as in :func:`paperlib.sgd_step`.
        shard: ``(rank, K)`` for one of K processes (DDP): only the chunks j ≡ rank (mod K)
            of ``split_chunks(n, chunk_size)`` are differentiated (``data`` yields just those,
            in order, or is the tensors of all n); the weights are still drawn for all n (the
            same generator state on every rank gives the same weights), and the result is
            this rank's part: grad, loss and correct sums and ``count`` over its chunks, to be
            summed over the ranks (``torch.distributed.all_reduce``). ``n`` is required.

    Returns:
        :class:`StepStats` over the n examples (G, N None), or this rank's part with ``shard``.

    Raises:
        ValueError: a batch-coupled net, data that do not cover n examples exactly once, or
            invalid sizes.
    """
    def weights(n_, dtype, device):
        return ngd_weights(n_, batch_size, generator=generator, dtype=dtype, device=device,
                           finite_population=finite_population)

    g, loss_sum, correct, count = _full_data_step(model, loss_fn, data, weights, n, chunk_size,
                                                  params, forward, "ngd_step", shard)
    return StepStats(g, loss_sum, count, correct)


def gd_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data,
    *,
    n: int | None = None,
    chunk_size: int = 1000,
    params=None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] | None = None,
) -> StepStats:
    """The full-batch gradient ∇L (eq. 3 without noise), over the data as in :func:`ngd_step`.

    Its G = |∇L|² is exact and N = 0 (GD carries no noise). With ``shard`` (as in
    :func:`ngd_step`) the result is this rank's part and G, N are None (|∇L|² needs the sum).

    Raises:
        ValueError: as :func:`ngd_step`.
    """
    def weights(n_, dtype, device):
        return gd_weights(n_, dtype=dtype, device=device)

    g, loss_sum, correct, count = _full_data_step(model, loss_fn, data, weights, n, chunk_size,
                                                  params, forward, "gd_step", shard)
    if shard is not None:
        return StepStats(g, loss_sum, count, correct)
    return StepStats(g, loss_sum, count, correct, g.double().square().sum(),
                     torch.zeros((), device=g.device))
