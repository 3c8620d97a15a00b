"""The paper's update rules as step functions on any model: SGD with the online G/N estimate,
SVAG (eq. 5), NGD and GD (eq. 3).

Each function forms ONE step's gradient on the caller's ``torch.nn.Module`` with the caller's
per-example loss, and returns a :class:`StepStats`. The caller applies the gradient with any
torch optimizer::

    stats = paperlib.sgd_step(model, loss_fn, x, y, sampling=paperlib.Sampling.shuffled(n))
    paperlib.set_grad(model, stats.grad)
    optimizer.step()

``loss_fn(output, target)`` must return per-example losses of shape ``[b]`` (e.g.
``torch.nn.CrossEntropyLoss(reduction="none")``): SVAG and NGD weight the examples. The gradient
excludes weight decay (the optimizer adds it, as in the paper's update x ← x − η(g + λx)).

Nets whose examples interact through the batch (train-mode BatchNorm, "batch-coupled") are
detected: SVAG then takes one pass per batch (per-batch statistics, as in the authors' code), SGD
needs an independent extra batch for its G/N estimate, and NGD/GD refuse (their per-example
weighted sum needs per-example losses that do not depend on the chunk).

How the batches were drawn decides the unbiased G/N estimator (Sec. 5; finite-population
factors in :mod:`paperlib.nsr`). It is stated in words with :class:`Sampling`, never through the
estimator's low-level arguments.

This module holds the four step functions and their autograd helpers; :class:`Sampling` and the
batch-coupling checks are in :mod:`paperlib.sampling`, :class:`StepStats` and :func:`set_grad`
in :mod:`paperlib.stepstats`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ngd import gd_weights, ngd_weights, split_chunks
from .nsr import online_nsr
from .sampling import (
    Sampling,
    batch_coupled,
    frozen_batchnorm_stats,
    need_sampling,
    warn_if_coupled_disjoint,
)
from .stepstats import StepStats, step_parameters
from .svag import svag_coefficients, svag_example_weights

__all__ = ["gd_step", "ngd_step", "sgd_step", "svag_step"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- helpers ---------------------------------------------------------------------------------

def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _grad(loss: torch.Tensor, params) -> torch.Tensor:
    return _flat(torch.autograd.grad(loss, params))


def _losses(model, loss_fn: LossFn, x, y, forward):
    """Per-example losses [b] and correct predictions (None when not a classifier)."""
    out = model(x) if forward is None else forward(x)
    losses = loss_fn(out, y)
    if losses.shape != (y.shape[0],):
        raise ValueError(f"loss_fn must return per-example losses of shape [{y.shape[0]}] "
                         f"(e.g. reduction='none'), got shape {tuple(losses.shape)}")
    classify = out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()
    return losses, ((out.argmax(1) == y) if classify else None)


def _stats(losses, correct, g, G=None, N=None) -> StepStats:
    return StepStats(g, losses.detach().sum(), losses.numel(),
                     None if correct is None else correct.sum(), G, N)


def _cat(a, b):
    return None if a is None else torch.cat([a, b])


def _check_batch(x, y, what: str) -> int:
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(f"{what}: x and y must have the same non-zero length, got "
                         f"{x.shape[0]} and {y.shape[0]}")
    return int(y.shape[0])


# --- SGD (eq. 1) with the online G/N estimate (Sec. 5) ---------------------------------------

def sgd_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sampling: Sampling | None = None,
    measure: bool = False,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    params=None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepStats:
    """The minibatch gradient ∇L_γ of eq. (1) and, with ``measure``, unbiased G and N = Tr Σ_B.

    Without batch coupling the estimate is free of extra examples: the batch is split in two
    halves of b = ⌊B/2⌋ (an odd B leaves one example in a third part), each differentiated on its
    own, and g = Σ of the parts' summed gradients / B is the batch mean (equal to the one-pass
    gradient up to float rounding). (G, N) = ``online_nsr`` of the two half-batch means, which
    are disjoint parts of one draw. With train-mode BatchNorm, splitting would change the
    gradient; then ``extra`` (an independent batch of the same size, drawn as ``sampling``
    says) is differentiated with the running statistics frozen, and (G, N) come from the pair
    (g, g_extra).

    Args:
        model, loss_fn: the net and the per-example loss ``loss_fn(output, target) -> [b]``.
        x, y: the batch, ``[B, ...]`` and ``[B, ...]`` on the model's device.
        sampling: how batches are drawn (required when measuring).
        measure: also return G and N (two half passes instead of one; same cost in examples).
        extra: ``(x_e, y_e)`` of size B, required when measuring a batch-coupled net.
        params: the tensors to differentiate (default: parameters with ``requires_grad``).
        forward: ``forward(x) -> output`` instead of ``model(x)`` (autocast, memory format).

    Returns:
        :class:`StepStats` with ``count`` = B (the extra batch is not counted).

    Raises:
        ValueError: mismatched x/y, measuring with B < 2 or without ``sampling``, a coupled
            net measured without a same-size ``extra`` batch, or a loss that is not per-example.
    """
    params = step_parameters(model, params)
    B = _check_batch(x, y, "sgd_step")
    coupled = batch_coupled(model)
    if measure:
        sampling = need_sampling(sampling, "measuring G/N")
        if not coupled and B < 2:
            raise ValueError(f"measuring G/N from half batches needs B >= 2, got B={B}")
        if coupled and extra is None:
            raise ValueError("the net has train-mode BatchNorm, so the batch cannot be split to "
                             "measure G/N; pass extra=(x_e, y_e), an independent batch of size B")
    if measure and not coupled:
        b = B // 2
        parts = [slice(0, b), slice(b, 2 * b)] + ([slice(2 * b, B)] if B % 2 else [])
        grads, losses, correct = [], [], []
        for s in parts:
            ls, cr = _losses(model, loss_fn, x[s], y[s], forward)
            grads.append(_grad(ls.sum(), params))
            losses.append(ls)
            correct.append(cr)
        g = sum(grads) / B  # exact batch mean: Σ over parts of summed per-example grads / B
        G, N = online_nsr(grads[0] / b, grads[1] / b, b, B, n=sampling.population, disjoint=True)
        cr = None if correct[0] is None else torch.cat(correct)
        return _stats(torch.cat(losses), cr, g, G, N)
    losses, correct = _losses(model, loss_fn, x, y, forward)
    g = _grad(losses.mean(), params)
    G = N = None
    if measure:  # coupled: the independent extra batch, BN running statistics untouched
        xe, ye = extra
        if _check_batch(xe, ye, "sgd_step extra batch") != B:
            raise ValueError(f"the extra batch must have the batch size B={B}, got {len(ye)}")
        with frozen_batchnorm_stats(model):
            le, _ = _losses(model, loss_fn, xe, ye, forward)
            ge = _grad(le.mean(), params)
        warn_if_coupled_disjoint(sampling)
        G, N = online_nsr(g, ge, B, B, n=sampling.population, disjoint=sampling.disjoint)
    return _stats(losses, correct, g, G, N)


# --- SVAG (eq. 5) ----------------------------------------------------------------------------

def svag_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    l: float,
    sampling: Sampling | None = None,
    measure: bool = False,
    params=None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepStats:
    """The SVAG gradient ∇(c1·L_γ1 + c2·L_γ2) of eq. (5), c1,2 = (1 ± sqrt(2l − 1))/2.

    ``x, y`` hold the two batches concatenated, [γ1; γ2] (2B examples: e.g. one batch of 2B from
    a DataLoader, or ``torch.cat`` of two batches of B). Without batch coupling this is one fused
    pass with per-example weights c1/B, c2/B (``svag_example_weights``); with train-mode
    BatchNorm, or when measuring, two passes of B (per-batch statistics) whose gradients also
    give (G, N) through ``online_nsr`` for free (so a coupled net is always measured when
    ``sampling`` is given). Take the step with LR η/l (``svag_lr``) for l× as many steps
    (``svag_steps``); ``SVAGSchedule`` / ``stretch_schedule`` stretch an LR schedule by l.
    With l = 1 this is SGD's gradient on γ1 (c2 = 0), but it costs 2B examples: call
    :func:`sgd_step` on γ1 instead (bitwise the same update on the two-pass path; the fused
    pass runs γ1 in a batch of 2B, whose kernels round differently, so only to float rounding).

    Args:
        model, loss_fn: the net and the per-example loss ``loss_fn(output, target) -> [2B]``.
        x, y: ``[2B, ...]`` on the model's device, γ1 first.
        l: the SVAG hyperparameter, a finite number ≥ 1.
        sampling: how γ1, γ2 were drawn (required when measuring).
        measure: also return G and N at batch size B.
        params, forward: as in :func:`sgd_step`.

    Returns:
        :class:`StepStats` over the 2B examples.

    Raises:
        ValueError: an odd or empty batch, l < 1, measuring without ``sampling``, or a loss that
            is not per-example.
    """
    params = step_parameters(model, params)
    two_b = _check_batch(x, y, "svag_step")
    if two_b % 2:
        raise ValueError(f"svag_step needs the two batches [γ1; γ2] concatenated (2B examples), "
                         f"got an odd count {two_b}")
    B = two_b // 2
    c1, c2 = svag_coefficients(l)
    coupled = batch_coupled(model)
    if measure:
        sampling = need_sampling(sampling, "measuring G/N")
    if coupled or measure:
        l1, a1 = _losses(model, loss_fn, x[:B], y[:B], forward)
        g1 = _grad(l1.mean(), params)
        l2, a2 = _losses(model, loss_fn, x[B:], y[B:], forward)
        g2 = _grad(l2.mean(), params)
        G = N = None
        if sampling is not None:
            if coupled:
                warn_if_coupled_disjoint(sampling)
            G, N = online_nsr(g1, g2, B, B, n=sampling.population, disjoint=sampling.disjoint)
        return _stats(torch.cat([l1, l2]), _cat(a1, a2), c1 * g1 + c2 * g2, G, N)
    # Weights before the forward pass: their host-to-device copy waits for the GPU, so done
    # here it does not stall the backward launches behind the forward (no effect on CPU).
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    w = svag_example_weights(l, B, dtype=dtype, device=x.device)
    losses, correct = _losses(model, loss_fn, x, y, forward)
    g = _grad((w * losses).sum(), params)
    return _stats(losses, correct, g)


# --- NGD and GD (eq. 3) ----------------------------------------------------------------------

def _chunks(data, n: int | None, chunk_size: int):
    """(n, iterator of (x, y) chunks in a fixed order) from tensors or an iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        total = _check_batch(x, y, "full-data step")
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
        n = _check_batch(x_all, y_all, what) if n is None else n
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
        b = _check_batch(x, y, what)
        if slices is not None:
            s = next(slices, None)
            if s is None or s.stop - s.start != b:
                raise ValueError(f"{what}: with shard={shard!r} the data must yield this rank's "
                                 f"chunks of split_chunks(n={n}, chunk_size={chunk_size})")
            offset = s.start
        elif offset + b > n:
            raise ValueError(f"{what}: the data yielded more than n={n} examples")
        losses, cr = _losses(model, loss_fn, x, y, forward)
        grads = _grad((w[offset:offset + b] * losses).sum(), params)
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
        params, forward: as in :func:`sgd_step`.
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

