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

This module holds the minibatch steps, :func:`sgd_step` and :func:`svag_step`; the full-data
steps :func:`ngd_step` and :func:`gd_step` are in :mod:`paperlib.full_data_steps` (importable
from here too), the passes both use in :mod:`paperlib.passes`; :class:`Sampling` and the
batch-coupling checks are in :mod:`paperlib.sampling`, :class:`StepStats` and :func:`set_grad`
in :mod:`paperlib.stepstats`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .full_data_steps import gd_step, ngd_step
from .nsr import online_nsr
from .passes import LossFn, cat_or_none, check_batch, example_losses, flat_grad, step_stats
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
    B = check_batch(x, y, "sgd_step")
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
            ls, cr = example_losses(model, loss_fn, x[s], y[s], forward)
            grads.append(flat_grad(ls.sum(), params))
            losses.append(ls)
            correct.append(cr)
        g = sum(grads) / B  # exact batch mean: Σ over parts of summed per-example grads / B
        G, N = online_nsr(grads[0] / b, grads[1] / b, b, B, n=sampling.population, disjoint=True)
        cr = None if correct[0] is None else torch.cat(correct)
        return step_stats(torch.cat(losses), cr, g, G, N)
    losses, correct = example_losses(model, loss_fn, x, y, forward)
    g = flat_grad(losses.mean(), params)
    G = N = None
    if measure:  # coupled: the independent extra batch, BN running statistics untouched
        xe, ye = extra
        if check_batch(xe, ye, "sgd_step extra batch") != B:
            raise ValueError(f"the extra batch must have the batch size B={B}, got {len(ye)}")
        with frozen_batchnorm_stats(model):
            le, _ = example_losses(model, loss_fn, xe, ye, forward)
            ge = flat_grad(le.mean(), params)
        warn_if_coupled_disjoint(sampling)
        G, N = online_nsr(g, ge, B, B, n=sampling.population, disjoint=sampling.disjoint)
    return step_stats(losses, correct, g, G, N)


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
    two_b = check_batch(x, y, "svag_step")
    if two_b % 2:
        raise ValueError(f"svag_step needs the two batches [γ1; γ2] concatenated (2B examples), "
                         f"got an odd count {two_b}")
    B = two_b // 2
    c1, c2 = svag_coefficients(l)
    coupled = batch_coupled(model)
    if measure:
        sampling = need_sampling(sampling, "measuring G/N")
    if coupled or measure:
        l1, a1 = example_losses(model, loss_fn, x[:B], y[:B], forward)
        g1 = flat_grad(l1.mean(), params)
        l2, a2 = example_losses(model, loss_fn, x[B:], y[B:], forward)
        g2 = flat_grad(l2.mean(), params)
        G = N = None
        if sampling is not None:
            if coupled:
                warn_if_coupled_disjoint(sampling)
            G, N = online_nsr(g1, g2, B, B, n=sampling.population, disjoint=sampling.disjoint)
        return step_stats(torch.cat([l1, l2]), cat_or_none(a1, a2), c1 * g1 + c2 * g2, G, N)
    # Weights before the forward pass: their host-to-device copy waits for the GPU, so done
    # here it does not stall the backward launches behind the forward (no effect on CPU).
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    w = svag_example_weights(l, B, dtype=dtype, device=x.device)
    losses, correct = example_losses(model, loss_fn, x, y, forward)
    g = flat_grad((w * losses).sum(), params)
    return step_stats(losses, correct, g)
