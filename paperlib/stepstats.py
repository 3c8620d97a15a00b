"""What a step function returns (:class:`StepStats`) and how the caller hands its gradient to
any torch optimizer (:func:`set_grad`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import trained_parameters

__all__ = ["StepStats", "set_grad", "step_parameters"]


@dataclass(frozen=True)
class StepStats:
    """What one step computed (tensors stay on the model's device: no host synchronisation).

    Attributes:
        grad: ``[d]`` flattened gradient of the step over the trained parameters (in
            ``model.parameters()`` order), weight decay excluded; the model's dtype.
        loss_sum: 0-d, sum of the per-example losses of the ``count`` examples the step used.
        count: number of examples the step used (B for SGD, 2B for SVAG, n for NGD/GD).
        correct: 0-d integer count of correct argmax predictions, or None when the output is not
            ``[b, classes]`` logits with integer targets ``[b]``.
        G: 0-d float64, unbiased estimate of |∇L|² at the step's point, or None (not measured).
        N: 0-d float64, unbiased estimate of N = Tr Σ_B at the step's batch size B, or None.
    """

    grad: torch.Tensor
    loss_sum: torch.Tensor
    count: int
    correct: torch.Tensor | None = None
    G: torch.Tensor | None = None
    N: torch.Tensor | None = None

    @property
    def loss(self) -> torch.Tensor:
        """0-d mean per-example loss over the step's examples."""
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> torch.Tensor | None:
        """0-d accuracy in percent, or None when ``correct`` is None."""
        return None if self.correct is None else 100.0 * self.correct / self.count

    @property
    def grad_sq(self) -> torch.Tensor:
        """0-d float64 |g|² of the step's gradient."""
        return self.grad.double().square().sum()


def step_parameters(model: torch.nn.Module, params) -> list[torch.Tensor]:
    out = trained_parameters(model) if params is None else list(params)
    if not out:
        raise ValueError("the model has no parameter with requires_grad=True to differentiate")
    return out



def set_grad(model_or_params, grad: torch.Tensor) -> None:
    """Write a flattened gradient ``[d]`` into ``p.grad`` of the trained parameters (in
    ``parameters()`` order), so that any torch optimizer can take the step.

    Args:
        model_or_params: a module (its parameters with ``requires_grad``) or a list of tensors.
        grad: ``[d]`` with d the total number of their entries (e.g. ``StepStats.grad``).

    Raises:
        ValueError: if ``grad`` is not 1-D or its length differs from d.
    """
    params = (step_parameters(model_or_params, None) if isinstance(model_or_params, torch.nn.Module)
              else list(model_or_params))
    d = sum(p.numel() for p in params)
    if grad.dim() != 1 or grad.numel() != d:
        raise ValueError(f"grad must have shape [{d}] (the parameters' total size), got "
                         f"{tuple(grad.shape)}")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = grad[offset:offset + n].view_as(p).clone()
        offset += n
