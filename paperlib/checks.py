"""Checks that need more than the config's values: whether its net can run and train at its
resolution and batch size, and whether its data set can be read. Both run before anything is
written for a run (``store.run``, ``sweeps.run_all``, the CLI); ``config.validate`` judges
the values themselves.
"""

from __future__ import annotations

import functools

from .config import RunConfig
from .constants import DATASET_CLASSES

MIN_VALUES_PER_GROUP = 2  # a normalization group of one value has zero variance: 0/0 with eps = 0


def check_trainable(config: RunConfig) -> None:
    """Raise ValueError naming the settings when the config's net cannot be trained.

    The net is built and run once on two random images at the config's resolution. Refused:
    a net that does not build (e.g. a width that gives fractional channels) or does not run,
    a GroupNorm layer whose groups hold fewer than 2 values per image, a BatchNorm layer that sees
    fewer than 2 values per channel in a training batch, and a net whose output at
    initialization is not finite. Each of these would otherwise be stored as a run that
    "diverged" at step 1, whatever the learning rate.
    """
    # SVAG's and the half-batch estimator's passes are per-example for GN nets; BN nets (the
    # only batch-coupled ones) always see whole batches of B.
    problem = _net_problem(config.arch, config.width, config.norm, config.resolution,
                           DATASET_CLASSES[config.dataset], config.batch_size)
    if problem:
        raise ValueError(
            f"arch={config.arch!r} width={config.width:g} norm={config.norm!r} "
            f"resolution={config.resolution} batch_size={config.batch_size} cannot train: "
            f"{problem}")


@functools.lru_cache(maxsize=64)
def _net_problem(arch: str, width: float, norm: str, resolution: int, num_classes: int,
                 batch_size: int) -> str | None:
    import torch
    from torch import nn

    from .models import build_model

    try:
        model = build_model(arch, width=width, norm=norm, num_classes=num_classes)
    except ValueError as e:
        return f"the net does not build ({e})"
    problems: list[str] = []

    def inspect(name: str, module: nn.Module, inputs: tuple) -> None:
        c, h, w = inputs[0].shape[1:]
        if isinstance(module, nn.GroupNorm):
            per_group = c // module.num_groups * h * w
            if per_group < MIN_VALUES_PER_GROUP:
                problems.append(
                    f"GroupNorm layer {name!r} normalizes groups of {per_group} value(s) ({c} "
                    f"channels in {module.num_groups} groups at {h}×{w} pixels); each group "
                    f"needs ≥ {MIN_VALUES_PER_GROUP}: use a larger resolution or width")
        elif isinstance(module, nn.BatchNorm2d) and batch_size * h * w < MIN_VALUES_PER_GROUP:
            problems.append(
                f"BatchNorm layer {name!r} sees {batch_size * h * w} value(s) per channel in a "
                f"batch of {batch_size} at {h}×{w} pixels; it needs ≥ {MIN_VALUES_PER_GROUP}: "
                "use a larger batch size or resolution")

    for name, module in model.named_modules():
        if isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
            module.register_forward_pre_hook(functools.partial(inspect, name))
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError) as e:
        return problems[0] if problems else f"the net does not run on {resolution}×{resolution} " \
                                            f"images ({e})"
    if problems:
        return problems[0]
    if not torch.isfinite(out).all():
        return "the net's output at initialization is not finite"
    return None


def check_data(dataset: str) -> None:
    """Load the data set once (decoding it into the cache if needed): an unreadable or missing
    file stops a sweep here, before any run starts, with the loader's own message."""
    from .data import load_dataset

    load_dataset(dataset)
