"""Stochastic Variance Amplified Gradient (SVAG), eq. (5) of Li, Malladi, Arora (2021).

SVAG with hyperparameter ``l`` replaces the minibatch loss by

    L^l_{γ̄}(x) = c1 · L_{γ1}(x) + c2 · L_{γ2}(x),   c1,2 = (1 ± sqrt(2l − 1)) / 2,

where γ1, γ2 are two independently sampled batches of size B, and takes the step
x ← x − (η / l) ∇L^l_{γ̄}(x). Because c1 + c2 = 1 and c1² + c2² = l, the gradient of L^l is
unbiased and its covariance is l · Σ_B, so the one-step increment Δ = −(η/l)∇L^l satisfies
Lemma 4.7 (i)-(ii):

    E Δ    = −(η/l) ∇L,
    E ΔΔᵀ  = (η²/l) Σ_B + (η²/l²) ∇L ∇Lᵀ,

and the third moment is O(l⁻²) (Lemma 4.7 (iii); see ``tests/test_svag.py`` for the exact
expression). Running SVAG for ``l`` times as many steps with LR η/l simulates the same continuous
time as ``steps`` SGD steps with LR η, and converges to the Itô SDE (2) as l → ∞ (Thm 4.3).

The training loop feeds the concatenation [γ1; γ2] of two batches (2B examples) through the
network and weights the per-example losses with :func:`svag_example_weights`. With
normalization layers that couple examples (BatchNorm) each half must get its own forward pass
(per-B statistics, as in the authors' code); the weights are the same either way.

``l = 1`` gives (c1, c2) = (1, 0): SVAG is then plain SGD, and the second half is wasted compute
(the loop may special-case it).

Lemma 4.7 assumes γ1, γ2 independent. If instead the 2B examples are one slice of a random
permutation of n examples (the authors' loader), the halves are negatively correlated,
Cov(g_γ1, g_γ2) = −Σ₁/(n − 1) (Σ₁: 1/n-normalized per-example covariance), and the update
covariance becomes (η/l)² Σ₁ [l (n − B)/(B(n − 1)) + (l − 1)/(n − 1)] instead of
(η/l)² · l Σ_B with Σ_B = Σ₁ (n − B)/(B(n − 1)): a relative excess of (1 − 1/l) B/(n − B)
(0.26% for CIFAR-10 at B = 128, but 2.6% on a 5 000-example subset). The mean is unaffected.
"""

import math
from collections.abc import Callable

import torch

from paperlib.validate import as_real, check_int

__all__ = [
    "SVAGSchedule",
    "stretch_schedule",
    "svag_coefficients",
    "svag_example_weights",
    "svag_lr",
    "svag_steps",
]


def _check_l(l: float) -> float:
    lf = as_real("l", l)
    if lf < 1.0:
        raise ValueError(f"l={l!r} is not allowed; SVAG's l must be a real number ≥ 1 (eq. 5)")
    return lf


def svag_coefficients(l: float) -> tuple[float, float]:
    """The SVAG loss weights (c1, c2) of eq. (5).

    c1 = (1 + sqrt(2l − 1)) / 2,  c2 = (1 − sqrt(2l − 1)) / 2, so that c1 + c2 = 1 (unbiased
    gradient) and c1² + c2² = l (covariance amplified by l). ``l`` need not be an integer
    (the construction only needs 2l − 1 ≥ 1); ``l = 1`` gives (1, 0), i.e. plain SGD.

    Args:
        l: the SVAG hyperparameter, a finite real number ≥ 1.

    Returns:
        ``(c1, c2)`` as Python floats; c1 ≥ 1 and c2 ≤ 0.

    Raises:
        ValueError: if ``l`` is not a finite number ≥ 1.
    """
    lf = _check_l(l)
    root = math.sqrt(2.0 * lf - 1.0)
    return (1.0 + root) / 2.0, (1.0 - root) / 2.0


def svag_example_weights(
    l: float,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per-example loss weights of SVAG (eq. 5) for one pass over the concatenation [γ1; γ2].

    The first ``batch_size`` entries are c1 / B and the last ``batch_size`` are c2 / B, so for
    per-example losses ℓ_i of the 2B concatenated examples

        Σ_i w_i ℓ_i = c1 · L_{γ1} + c2 · L_{γ2} = L^l_{γ̄}     (L_γ = mean loss over batch γ).

    The gradient of this weighted sum is ∇L^l_{γ̄}; the SVAG step is then
    x ← x − svag_lr(η, l) · ∇(Σ_i w_i ℓ_i) (plus weight decay, which is not part of L^l).

    Args:
        l: the SVAG hyperparameter, a finite real number ≥ 1.
        batch_size: B, the size of each of the two batches (a positive integer).
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape ``[2 * batch_size]``.

    Raises:
        ValueError: if ``l`` < 1 or not finite, ``batch_size`` < 1 or not an integer, or
            ``dtype`` is not a floating dtype.
    """
    c1, c2 = svag_coefficients(l)
    check_int("batch_size", batch_size, 1)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    w = torch.empty(2 * batch_size, dtype=torch.float64)
    w[:batch_size] = c1 / batch_size
    w[batch_size:] = c2 / batch_size
    return w.to(device=device, dtype=dtype)


def svag_lr(lr: float, l: float) -> float:
    """The SVAG learning rate η / l of eq. (5).

    Args:
        lr: the base LR η (of the l = 1 run), a finite number > 0.
        l: the SVAG hyperparameter, ≥ 1.

    Returns:
        η / l as a float.

    Raises:
        ValueError: if ``lr`` is not a finite positive number or ``l`` < 1.
    """
    lf = _check_l(l)
    lr_f = as_real("lr", lr)
    if lr_f <= 0.0:
        raise ValueError(f"lr={lr!r} is not allowed; lr must be a finite number > 0")
    return lr_f / lf


def svag_steps(steps: int, l: float) -> int:
    """Number of SVAG steps, l · steps, that cover the continuous time of ``steps`` base steps.

    SVAG step k corresponds to base time k / l (Thm 4.3 compares x_k^{η/l} with X_{kη/l}), so
    ``steps`` steps of the l = 1 run become ``steps * l`` SVAG steps. ``l`` need not be an
    integer, but ``steps * l`` must be one (e.g. l = 1.5 needs an even ``steps``).

    Args:
        steps: number of base (l = 1) steps, an integer ≥ 0.
        l: the SVAG hyperparameter, ≥ 1.

    Returns:
        ``steps * l`` as an int.

    Raises:
        ValueError: if ``steps`` is not a non-negative integer, ``l`` < 1, or ``steps * l`` is
            not an integer (to within 1e-9).
    """
    lf = _check_l(l)
    check_int("steps", steps, 0)
    total = steps * lf
    rounded = round(total)
    if abs(total - rounded) > 1e-9 * max(1.0, abs(total)):
        raise ValueError(
            f"steps * l must be an integer, got steps={steps}, l={l!r} (steps * l = {total})"
        )
    return int(rounded)


def stretch_schedule(schedule: Callable[[float], float], l: float) -> Callable[[int], float]:
    """A schedule of base time, stretched for SVAG: step k of the l-run is at base time k / l.

    ``schedule(t)`` is the LR multiplier at base step t of the l = 1 run; the result maps SVAG's
    step index k to ``schedule(k / l)``, so every milestone, knot and period stretches by l (Thm
    4.3 compares SVAG step k with SDE time kη/l). Use it with ``torch.optim.lr_scheduler.LambdaLR``
    on an optimizer whose LR is already η/l (:func:`svag_lr`).

    Args:
        schedule: multiplier as a function of base steps (float → float).
        l: the SVAG hyperparameter, ≥ 1.

    Returns:
        ``f(k) = schedule(k / l)``.

    Raises:
        ValueError: if ``l`` is not a finite number ≥ 1 or ``schedule`` is not callable.
    """
    lf = _check_l(l)
    if not callable(schedule):
        raise ValueError(f"schedule must be a function of base time, got {schedule!r}")
    return lambda k: schedule(k / lf)


class SVAGSchedule:
    """Drives any torch LR scheduler at base time: it advances once per l SVAG steps.

    Build the user's scheduler (``MultiStepLR``, ``CosineAnnealingLR``, ``LambdaLR``, a chain,
    ...) as for the l = 1 run, with its milestones in base steps, on an optimizer whose LR was
    set to η/l (:func:`svag_lr`); wrap it and call :meth:`step` after every SVAG step.
    Schedulers that set absolute learning rates instead of multiplying the optimizer's
    (``OneCycleLR``'s ``max_lr``, ``CyclicLR``'s ``base_lr``/``max_lr``) need those values
    divided by l too (``svag_lr(max_lr, l)``): they overwrite the η/l of the optimizer. The LR of
    SVAG step k is then (η/l) · s(⌊k/l⌋), with s the l = 1 schedule: exactly the l = 1 run's
    schedule stretched by l for schedules that change at whole base steps (step decays), and a
    staircase of it otherwise (use :func:`stretch_schedule` with ``LambdaLR`` for the exact
    continuous stretch).

    Args:
        scheduler: a ``torch.optim.lr_scheduler.LRScheduler`` (anything with ``step()``).
        l: the SVAG hyperparameter, an integer ≥ 1.

    Raises:
        ValueError: if ``l`` is not an integer ≥ 1 or ``scheduler`` has no ``step`` method.
    """

    def __init__(self, scheduler, l: int):
        lf = _check_l(l)
        if lf != int(lf):
            raise ValueError(f"SVAGSchedule needs an integer l >= 1, got {l!r}")
        if not callable(getattr(scheduler, "step", None)):
            raise ValueError(f"scheduler must have a step() method, got {scheduler!r}")
        self.scheduler, self.l, self.steps = scheduler, int(lf), 0

    def step(self) -> None:
        """Call after every SVAG step."""
        self.steps += 1
        if self.steps % self.l == 0:
            self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "l": self.l, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.l = int(state["steps"]), int(state["l"])
        self.scheduler.load_state_dict(state["scheduler"])
