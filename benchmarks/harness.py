"""The measuring machinery of ``make bench``: sizes (profiles), paired interleaved timing, the
table's rows, and ``Bench``, which builds paperlib's training step for a config.

Every number with a target is a RATIO of two measurements taken in this process on one device.
The two sides run interleaved (A B, B A, A B, ...) so that drift on a shared machine hits both,
warm-up steps are excluded, and the ratio is the median over repeats of the paired ratios. Rows
whose target is a small overhead also give the median's 95 % interval (order statistics of the
paired ratios, no assumption on their distribution) and hold only when the whole interval meets
the target, fail when none of it does, and are inconclusive otherwise.

A step is a training loop written with paperlib's public API only, doing what one iteration of
``paperlib.train``'s loop body does without logging: the config's batch from a ``Sampler``
(augmented on the device by ``DeviceData.batch``), the update rule's public step function
(``sgd_step``, ``svag_step``, ``ngd_step``, ``gd_step``; G/N on the config's measuring steps, a
BatchNorm net's extra batch, SVAG's 2B, NGD / GD over ``chunk_size`` chunks), ``set_grad``, the
optimizer step and an on-device tally of the step's statistics. ``tests/test_bench.py`` checks
that its gradients are bitwise those of ``paperlib.train``'s loop for every update rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from paperlib import Sampling, StepStats, gd_step, ngd_step, seeding, set_grad, sgd_step, svag_step
from paperlib.config import RunConfig, preset
from paperlib.data import DeviceData, Sampler, prepare
from paperlib.models import accelerate, build_model, trained_parameters
from paperlib.ngd import split_chunks
from paperlib.sampling import batch_coupled
from paperlib.store import numerics

NEVER = 10**9  # nsr_every / nsr_extra_every that never fires (step counters start at 1)
PAPER_N = 50_000  # CIFAR-10 training set: the epoch of the online G/N and epoch rows


# --- sizes ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """What to measure, and how often; nets are (arch, norm, resolution, B) tuples."""

    name: str
    svag_nets: tuple[tuple[str, str, int, int], ...]  # SVAG at B vs SGD at 2B
    nsr_nets: tuple[tuple[str, str, int, int], ...]  # SGD at B, G/N on vs off
    direct_net: tuple[str, str, int]  # the authors' G/N estimator: (arch, norm, r)
    direct_batches: tuple[int, ...]
    ngd_net: tuple[str, str, int]  # NGD / GD and the max-pool route
    ngd_n: int  # N of the NGD / GD timing
    memory_ns: tuple[int, ...]  # N of the NGD memory measurement
    chunk_size: int
    pipeline_nets: tuple[tuple[str, str, int], ...]  # vs a DataLoader, at 32x32: (arch, norm, B)
    epoch_nets: tuple[tuple[str, str, int], ...]  # epoch time at resolution 32: (arch, norm, B)
    subset: int | None  # N of the step timings (sampler only; None: the whole training set)
    warmup: int = 2
    repeats: int = 7
    steps: int = 3  # steps per timed repeat


PROFILES = {
    # 2 CPU cores, one torch thread: the cpu preset's net and a small PreResNet at 16×16.
    "cpu": Profile(
        name="cpu",
        svag_nets=(("convnet", "gn", 8, 16), ("preresnet8", "gn", 16, 64),
                   ("preresnet8", "none", 16, 64), ("preresnet8", "bn", 16, 64)),
        nsr_nets=(("convnet", "gn", 8, 16), ("preresnet8", "gn", 16, 128),
                  ("preresnet8", "bn", 16, 128)),
        direct_net=("preresnet8", "bn", 16), direct_batches=(128, 1024),
        ngd_net=("convnet", "gn", 8), ngd_n=5_000, memory_ns=(5_000, 10_000, 50_000),
        chunk_size=1000, pipeline_nets=(("convnet", "gn", 128),),
        epoch_nets=(("convnet", "gn", 128),), subset=10_000, repeats=15,
    ),
    # One GPU: the paper's PreResNet-32 at 32×32, B = 128 and 1024.
    "gpu": Profile(
        name="gpu",
        svag_nets=tuple(("preresnet32", norm, 32, b) for b in (128, 1024)
                        for norm in ("gn", "none", "bn")),
        nsr_nets=tuple(("preresnet32", norm, 32, b) for b in (128, 1024) for norm in ("gn", "bn")),
        direct_net=("preresnet32", "bn", 32), direct_batches=(128, 1024),
        ngd_net=("preresnet32", "gn", 32), ngd_n=50_000, memory_ns=(5_000, 10_000, 50_000),
        chunk_size=1000, pipeline_nets=(("preresnet32", "bn", 128), ("preresnet32", "bn", 1024)),
        epoch_nets=(("preresnet32", "gn", 128), ("preresnet32", "bn", 128)), subset=None,
        warmup=3, repeats=7, steps=5,
    ),
}


def quick_profile(p: Profile) -> Profile:
    """Seconds-long version of ``p``: same nets and rows, tiny images, batches and N."""
    small = 8 if p.name == "cpu" else 4

    def nets(entries, *extra):  # one entry per (arch, norm), at 8x8 / batch `small`
        return tuple(dict.fromkeys((a, n, *extra) for a, n, *_ in entries))

    return dataclasses.replace(
        p,
        svag_nets=nets(p.svag_nets, 8, small), nsr_nets=nets(p.nsr_nets, 8, small),
        direct_net=(*p.direct_net[:2], 8), direct_batches=(small, 4 * small),
        ngd_net=(*p.ngd_net[:2], 8), ngd_n=256, memory_ns=(128, 256, 512), chunk_size=64,
        pipeline_nets=nets(p.pipeline_nets[:1], small), epoch_nets=nets(p.epoch_nets, small),
        subset=256, warmup=1, repeats=2, steps=1,
    )


# --- results --------------------------------------------------------------------------------------

@dataclass
class Row:
    group: str  # a key of run.GROUPS: what the row measures (svag, full-batch, ...)
    what: str
    setting: str
    value: float | None  # None: not measured
    unit: str  # "x" (ratio), "%", "MB", "samples/s", "s", "epochs"
    target: str = ""
    ok: bool | None = None  # None: no target
    note: str = ""

    def verdict(self) -> str:
        """The table's "holds": "" without a target, else yes / **no** / inconclusive (an
        interval that straddles the target) / not measured."""
        if not self.target:
            return ""
        if self.value is None:
            return "not measured"
        if self.ok is None:
            return "inconclusive"
        return "yes" if self.ok else "**no**"

    def formatted(self) -> str:
        v = self.value
        if v is None:
            return "not measured yet"
        if self.unit == "x":
            return f"{v:.3f}"
        if self.unit == "%":
            return f"{v:+.1f} %"
        if self.unit == "samples/s":
            return f"{v:,.0f} samples/s"
        if self.unit == "MB":
            return f"{v:.1f} MB"
        if self.unit == "epochs":
            return f"{v:.3f} epochs"
        return f"{v:.3g} {self.unit}"


def table(rows: list[Row], quick: bool = False) -> str:
    """The rows as a Markdown table. ``quick``: a few steps per row, which checks that every
    row runs but measures nothing, so no row is said to hold or not."""
    lines = ["| group | measurement | setting | value | target | holds | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        holds = r.verdict()
        if quick and holds:
            holds = "n/a (--quick)"
        lines.append(f"| {r.group} | {r.what} | {r.setting} | {r.formatted()} | {r.target} | "
                     f"{holds} | {r.note} |")
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    cpu = numerics("cpu")["device_name"]  # the run store's record of the machine
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


# --- timing ---------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[int], None]], device: torch.device, *, warmup: int,
                repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per call of each ``fn(k)`` in every repeat; the fns alternate (A B, B A, ...).

    Each fn has its own step counter k, starting at 1 and incremented per call; ``warmup`` calls
    of each are run first and not timed.
    """
    k = dict.fromkeys(fns, 1)

    def run(name: str, count: int) -> None:
        for _ in range(count):
            fns[name](k[name])
            k[name] += 1
        synchronize(device)

    for name in fns:
        run(name, warmup)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            t0 = time.perf_counter()
            run(name, steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, str]:
    """Median over repeats of time(a) / time(b), and the spread as a note."""
    ratios = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
    lo, hi = ratios[0], ratios[-1]
    return statistics.median(ratios), f"range {lo:.3f}-{hi:.3f} over {len(ratios)} repeats"


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median of ``values`` (i.i.d. draws): the j-th smallest
    and j-th largest value, j the largest rank with P(Binomial(n, 1/2) < j) ≤ (1 - level) / 2.
    Infinite ends when n is too small for the level (n < 6 at 95 %)."""
    v, n = sorted(values), len(values)
    tail, j, cdf = (1 - level) / 2, 0, 0.0
    while j < n and cdf + math.comb(n, j) / 2**n <= tail:
        cdf += math.comb(n, j) / 2**n
        j += 1
    if j == 0:
        return -math.inf, math.inf
    return v[j - 1], v[n - j]


def overhead_row(group: str, what: str, setting: str, times: dict[str, list[float]], a: str,
                 b: str, target_pct: float | None, note: str = "") -> Row:
    """The overhead of ``a`` over ``b`` in %, (median paired ratio − 1), with its 95 % interval;
    holds when the interval's upper end is ≤ ``target_pct``, fails when its lower end is above,
    and is inconclusive (``ok`` None) when it straddles the target (None: reported only)."""
    ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
    lo, hi = (100 * (r - 1) for r in median_interval(ratios))
    value = 100 * (statistics.median(ratios) - 1)
    text = f"95 % interval [{lo:+.1f}, {hi:+.1f}] % over {len(ratios)} paired repeats"
    text += f"; {note}" if note else ""
    if target_pct is None:
        return Row(group, what, setting, value, "%", "", None, text)
    ok = True if hi <= target_pct else (False if lo > target_pct else None)
    return Row(group, what, setting, value, "%", f"≤ {target_pct:g} %", ok, text)


# --- a training step for a config, through paperlib's public API ---------------------------------

def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (the loss of every paper run)."""
    return F.cross_entropy(out, y, reduction="none")


class Tally:
    """What the loop keeps of each step, on the device (no host sync): sums of loss, correct
    predictions, |g|² and G / N, and whether every loss and gradient was finite."""

    def __init__(self, device: torch.device):
        z = torch.zeros((), device=device, dtype=torch.float64)
        self.loss, self.correct, self.gsq, self.G, self.N = (z.clone() for _ in range(5))
        self.finite = torch.ones((), device=device, dtype=torch.bool)

    def add(self, s: StepStats) -> None:
        loss, gsq = s.loss_sum.double(), s.grad_sq
        self.loss += loss
        self.gsq += gsq
        if s.correct is not None:
            self.correct += s.correct.double()
        self.finite &= torch.isfinite(loss + gsq)
        if s.G is not None:
            self.G += s.G.double()
            self.N += s.N.double()


@dataclass
class Net:
    """A config's model, data and samplers, built with public functions (a user's loop)."""

    config: RunConfig
    model: torch.nn.Module
    params: list
    data: DeviceData
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model with the accelerator options
    sampler: Sampler  # batches of B (SGD) or 2B (SVAG)
    sampling: Sampling  # how a step's batch was drawn
    extra_sampler: Sampler | None = None  # BatchNorm under SGD: independent batches for G/N
    extra_sampling: Sampling | None = None

    @property
    def device(self) -> torch.device:
        return self.data.device

    def batch(self, idx: torch.Tensor, *keys: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``idx``, augmented (when the config says so) with a generator keyed by
        (seed, ``keys``)."""
        gen = seeding.generator(self.config.seed, *keys, device=self.device)
        return self.data.batch(idx, augment=self.config.augment, generator=gen)

    def gradient(self, k: int) -> StepStats:
        """Step k's gradient through the update rule's public step function (G/N on the
        config's measuring steps)."""
        c, kw = self.config, dict(params=self.params, forward=self.forward)
        if c.update_rule in ("ngd", "gd"):
            n = self.data.train_size
            chunks = (self.batch(torch.arange(s.start, s.stop, device=self.device),
                                 seeding.STREAM_AUGMENT, k, j)
                      for j, s in enumerate(split_chunks(n, c.chunk_size)))
            if c.update_rule == "gd":
                return gd_step(self.model, cross_entropy, chunks, n=n, chunk_size=c.chunk_size,
                               **kw)
            gen = seeding.generator(c.seed, seeding.STREAM_NGD, k, device=self.device)
            return ngd_step(self.model, cross_entropy, chunks, n=n, batch_size=c.batch_size,
                            generator=gen, chunk_size=c.chunk_size, **kw)
        x, y = self.batch(self.sampler.indices(k, device=self.device), seeding.STREAM_AUGMENT, k)
        if c.update_rule == "svag":
            return svag_step(self.model, cross_entropy, x, y, l=c.l, sampling=self.sampling,
                             measure=k % c.nsr_every == 0, **kw)
        if self.extra_sampler is not None:  # BatchNorm: an extra batch every nsr_extra_every
            measure = k % c.nsr_extra_every == 0
            extra = (self.batch(self.extra_sampler.indices(k, device=self.device),
                                seeding.STREAM_EXTRA, k) if measure else None)
            return sgd_step(self.model, cross_entropy, x, y, sampling=self.extra_sampling,
                            measure=measure, extra=extra, **kw)
        return sgd_step(self.model, cross_entropy, x, y, sampling=self.sampling,
                        measure=k % c.nsr_every == 0 and c.batch_size >= 2, **kw)


def build_net(cfg: RunConfig, data: DeviceData) -> Net:
    """The model (``build_model``, ``accelerate``), samplers and sampling scheme of ``cfg`` on
    the prepared ``data``, as ``paperlib.train`` builds them on one process."""
    device = data.device
    model = build_model(cfg.arch, width=cfg.width, norm=cfg.norm, num_classes=data.num_classes,
                        in_channels=data.in_channels, seed=cfg.seed).to(device).train()
    n, B = data.train_size, cfg.batch_size
    params = trained_parameters(model)
    forward = accelerate(model, device, channels_last=cfg.channels_last, tf32=cfg.tf32,
                         compile=cfg.compile, bf16=cfg.bf16)
    svag = cfg.update_rule == "svag"
    net = Net(cfg, model, params, data, forward, Sampler(cfg.sampler, n, B * (2 if svag else 1),
                                                         cfg.seed),
              Sampling.from_sampler(cfg.sampler, n))
    if batch_coupled(model) and cfg.update_rule == "sgd":  # an independent extra batch stream
        replacement = cfg.sampler == "replacement"
        net.extra_sampler = Sampler("replacement" if replacement else "iid", n, B,
                                    seeding.derive_seed(cfg.seed, seeding.STREAM_EXTRA) % (1 << 62))
        net.extra_sampling = Sampling.with_replacement() if replacement else Sampling.independent(n)
    return net


@dataclass
class Bench:
    profile: Profile
    device: torch.device
    raw: object  # the RawDataset every build reuses
    workers: int
    quick: bool
    compile: bool = False
    prepared: dict = dataclasses.field(default_factory=dict)  # (subset, r, data_seed) → data

    @property
    def dataset(self) -> str:
        return self.raw.name

    @property
    def n_train(self) -> int:
        return len(self.raw.train_y)

    def config(self, **kw) -> RunConfig:
        """A paper-preset RunConfig for measurements (no logging, no schedule, no G/N)."""
        base = dict(dataset=self.dataset, subset=self._subset(), device=self.device.type,
                    lr=0.1, steps=NEVER, milestones=(), augment=False, nsr_every=NEVER,
                    nsr_extra_every=NEVER)
        base.update(kw)
        return preset("paper", **base)

    def _subset(self) -> int | None:
        s = self.profile.subset
        return None if s is None or s >= self.n_train else s

    def build(self, cfg: RunConfig) -> Net:
        """:func:`build_net` on the data set already in memory (``prepare`` once per subset,
        resolution and data seed)."""
        key = (cfg.subset, cfg.resolution, cfg.data_seed)
        if key not in self.prepared:
            self.prepared[key] = prepare(self.raw, subset=cfg.subset, resolution=cfg.resolution,
                                         device=self.device, seed=cfg.data_seed)
        return build_net(cfg, self.prepared[key])

    def stepper(self, cfg: RunConfig) -> tuple[Net, Callable[[int], None]]:
        """``step(k)``: one training step of ``cfg`` (gradient, ``set_grad``, SGD, tally)."""
        net = self.build(cfg)
        opt = torch.optim.SGD(net.params, lr=cfg.step_lr, momentum=cfg.momentum,
                              weight_decay=cfg.wd)
        tally = Tally(self.device)

        def step(k: int) -> None:
            stats = net.gradient(k)
            set_grad(net.params, stats.grad)
            opt.step()
            tally.add(stats)

        return net, step

    def time_pair(self, cfgs: dict[str, RunConfig], steps: int | None = None,
                  repeats: int | None = None, warmup: int | None = None) -> dict[str, list]:
        fns = {name: self.stepper(cfg)[1] for name, cfg in cfgs.items()}
        p = self.profile
        return interleaved(fns, self.device, warmup=p.warmup if warmup is None else warmup,
                           repeats=repeats or p.repeats, steps=steps or p.steps)


def net_label(arch: str, norm: str, resolution: int, batch: int | None = None) -> str:
    return f"{arch}-{norm} {resolution}x{resolution}" + (f" B={batch}" if batch else "")
