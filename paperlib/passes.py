"""The passes of the step functions (:mod:`paperlib.steps`, :mod:`paperlib.full_data_steps`):
per-example losses of one forward, a flattened gradient over the trained parameters, and the
:class:`StepStats` of a step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .stepstats import StepStats

__all__ = ["LossFn", "cat_or_none", "check_batch", "evaluate", "example_losses", "flat",
           "flat_grad", "step_stats"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flat(grads) -> torch.Tensor:
    """The tensors concatenated into one flat ``[d]`` vector (parameter order)."""
    return torch.cat([g.reshape(-1) for g in grads])


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    """∇ ``loss`` with respect to ``params``, flattened to ``[d]``."""
    return flat(torch.autograd.grad(loss, params))


def example_losses(model, loss_fn: LossFn, x, y, forward):
    """Per-example losses [b] and correct predictions (None when not a classifier)."""
    out = model(x) if forward is None else forward(x)
    losses = loss_fn(out, y)
    if losses.shape != (y.shape[0],):
        raise ValueError(f"loss_fn must return per-example losses of shape [{y.shape[0]}] "
                         f"(e.g. reduction='none'), got shape {tuple(losses.shape)}")
    classify = out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()
    return losses, ((out.argmax(1) == y) if classify else None)


def step_stats(losses, correct, g, G=None, N=None) -> StepStats:
    """The :class:`StepStats` of a step from its per-example losses and correct predictions."""
    return StepStats(g, losses.detach().sum(), losses.numel(),
                     None if correct is None else correct.sum(), G, N)


def cat_or_none(a, b):
    """``torch.cat([a, b])``, or None when the first is None (no accuracy)."""
    return None if a is None else torch.cat([a, b])


def check_batch(x, y, what: str) -> int:
    """The batch size of ``(x, y)``; ValueError naming ``what`` if they differ or are empty."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(f"{what}: x and y must have the same non-zero length, got "
                         f"{x.shape[0]} and {y.shape[0]}")
    return int(y.shape[0])


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on the whole test set of ``data`` (a
    :class:`paperlib.data.DeviceData`), in batches of ``batch_size``, BatchNorm in eval mode."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in data.test_batches(batch_size):
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    return loss / count, 100.0 * correct / count
