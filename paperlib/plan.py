"""What training a list of runs will cost, said before it starts: runs, sample-gradients, FLOPs
and the wall time on this machine, measured by timing one forward + backward pass of each net
here. Work estimated at more than ``LONG_HOURS`` stops before it starts unless the user says to
go ahead (``--allow-long``, ``make ... ALLOW_LONG=1`` or ``PAPERLIB_ALLOW_LONG=1``).
"""

from __future__ import annotations

import functools
import math
import os
import time

from .config import RunConfig, resolve_device
from .constants import DATASET_CLASSES, DATASET_SIZES

LONG_HOURS = 3.0  # unattended work above this needs an explicit go-ahead
ALLOW_ENV = "PAPERLIB_ALLOW_LONG"  # 1: go ahead whatever the estimate
LIMIT_ENV = "PAPERLIB_LONG_HOURS"  # another limit, in hours
PROBE_BATCH = 256  # largest batch timed; larger passes are assumed to scale linearly


class TooLongError(RuntimeError):
    """The estimated wall time exceeds the limit and the user did not say to go ahead."""


def cost(config: RunConfig) -> float:
    """Sample-gradients the run computes (for ordering and for the compute estimate)."""
    per_step = {"sgd": config.batch_size, "svag": 2 * config.batch_size}.get(
        config.update_rule, config.train_size)
    return float(config.total_steps * per_step)


def _evaluations(config: RunConfig) -> int:
    every = config.eval_every * config.l_eff
    return 1 + int((1 - config.eval_from) * config.total_steps // every)


def estimate_compute(configs: list[RunConfig]) -> str:
    """Number of runs, sample-gradients and training FLOPs (3 × forward, FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import build_model

    flops_per_sample: dict[tuple, float] = {}
    total = 0.0
    for c in configs:
        key = (c.arch, c.width, c.norm, c.resolution, c.dataset)
        if key not in flops_per_sample:
            model = build_model(c.arch, width=c.width, norm=c.norm,
                                num_classes=DATASET_CLASSES[c.dataset])
            x = torch.zeros(2, 3, c.resolution, c.resolution)
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops_per_sample[key] = 3 * counter.get_total_flops() / 2
        total += cost(c) * flops_per_sample[key]
    samples = sum(cost(c) for c in configs)
    return (f"{len(configs)} runs, {samples / 1e6:.1f} M sample-gradients, "
            f"{total / 1e15:.2f} PFLOP (≈ {total / 100e12 / 3600:.2f} GPU-hours at 100 TFLOP/s)")


def estimate_seconds(configs: list[RunConfig]) -> list[float]:
    """Seconds each run should take in this process (its device and thread count): training
    sample-gradients and test-set evaluations times the measured time per example."""
    out = []
    for c in configs:
        per_pass = {"sgd": c.batch_size, "svag": 2 * c.batch_size}.get(c.update_rule,
                                                                         c.chunk_size)
        s = _seconds_per_example(c.arch, c.width, c.norm, c.resolution,
                                 DATASET_CLASSES[c.dataset], min(per_pass, PROBE_BATCH),
                                 device_of(c))
        evaluated = _evaluations(c) * DATASET_SIZES[c.dataset][1]
        out.append(s * (cost(c) + evaluated / 3))  # a forward pass is about 1/3 of fwd + bwd
    return out


def device_of(config: RunConfig) -> str:
    """The device the run will train on here (``device='auto'``: CUDA when present)."""
    return str(resolve_device(config.device))


@functools.lru_cache(maxsize=64)
def _seconds_per_example(arch: str, width: float, norm: str, resolution: int, num_classes: int,
                         batch: int, device: str) -> float:
    """Wall seconds of one forward + backward pass per example (one warm-up pass first, then
    the fastest of up to five timed passes)."""
    import torch
    import torch.nn.functional as F

    from .models import build_model

    model = build_model(arch, width=width, norm=norm, num_classes=num_classes).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(batch, 2), 3, resolution, resolution, generator=gen).to(device)
    y = torch.randint(num_classes, (len(x),), generator=gen).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    # The fastest of a few passes (≤ 5, ≤ ~1 s): other load on a shared machine only ever
    # slows a pass, and one timed pass swung the estimate ~200× under load.
    times, start = [], time.perf_counter()
    while len(times) < 5 and (not times or time.perf_counter() - start < 1.0):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times) / len(x)


def limit_hours() -> float:
    value = os.environ.get(LIMIT_ENV, "")
    try:
        hours = float(value) if value else LONG_HOURS
    except ValueError:
        hours = math.nan
    if not hours > 0:
        raise ValueError(f"{LIMIT_ENV}={value!r} is not allowed; give a number of hours > 0")
    return hours


def allowed_by_env() -> bool:
    return os.environ.get(ALLOW_ENV, "") not in ("", "0")


def check_budget(seconds: float, what: str, allow_long: bool | None = None) -> None:
    """Raise TooLongError when ``seconds`` exceeds the limit and going ahead was not allowed
    (``allow_long`` None: the environment decides)."""
    allow = allowed_by_env() if allow_long is None else allow_long
    limit = limit_hours()
    if allow or seconds <= limit * 3600:
        return
    raise TooLongError(
        f"{what} is estimated at {duration(seconds)} on this machine, more than the "
        f"{limit:g} h this project starts without asking; nothing was trained. To go ahead, "
        "add --allow-long (python -m paperlib train / figures), ALLOW_LONG=1 (make figures) "
        f"or set {ALLOW_ENV}=1 (a notebook run with papermill); to see the figure on this "
        "machine first, use the cpu or smoke preset.")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
