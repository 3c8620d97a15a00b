"""``make bench``: the speed of paperlib's training steps, as ratios against baselines (issue 6).

Every number that has a target is a RATIO of two measurements taken in this process on one device
with the real step of :mod:`paperlib.train` (``gradient(ctx, k)`` over the public step functions,
``set_grad`` and the optimizer step, plus the loop's on-device ``StepWindow``). The two sides run
interleaved (A B, B A, A B, ...) so that drift on a shared machine hits both, warm-up steps are
excluded, and the ratio is the median over repeats of the paired ratios.

Measured items (numbers as in the issue):

1. SVAG step / SGD step at batch 2B: the fused 2B pass (``nsr_every`` large) and the measuring
   step (two passes of B, every ``nsr_every``-th step) of GN / unnormalized nets; BN nets always
   take two passes of B.
2. NGD step / GD step over the same N, and the peak extra memory of one NGD pass for three N
   (chunked: it should not grow with N). CPU: growth of the peak RSS (``VmHWM``) over the RSS
   before the pass; CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before it.
   Also the convnet's full-data step and test-set pass with the NCHW max-pool over the
   channels-last route ``paperlib.models`` takes (a speed-up; the results are bitwise equal),
   and the CPU probe's plain torch.nn convnet over the same N (samples/s, and / our GD step).
3. Online G/N overhead: SGD steps with the estimate every step / without it (GN: two half-batch
   passes; BN: one extra batch every k steps, compared with 1/k), and the authors' direct
   estimator, max(200, 12800 // B) extra minibatch gradients per epoch of N = 50 000.
4. Training throughput (samples/s) of the on-device pipeline against a torchvision DataLoader
   with PIL transforms and worker processes, same net and batch.
5. Wall time of ``make figures`` per notebook, read from ``figures/timings.json``.
6. :class:`paperlib.NoiseMonitor` overhead per step: gradient accumulation, 2-rank DDP on the
   CPU (gloo), and the half-batch split for comparison (:mod:`paperlib.bench_monitor`).

With ``--epoch`` (on by default for the GPU profile) it also times a training epoch of 50 000
images (the paper recipe, online G/N included) for GN and BN nets and a few accelerator options.

Usage: ``python -m paperlib.bench [--quick] [--device auto|cpu|cuda] [--out BENCHMARKS.md]``.
Timings never go into tests; ``tests/test_bench.py`` only checks that ``--quick`` yields every row.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import train as T
from .config import preset
from .data import NORMALIZATION, DatasetFormatError, DatasetNotFoundError, load_dataset, prepare
from .docs import update_section
from .history import StepWindow
from .ngd import split_chunks
from .paths import data_root
from .steps import set_grad

NEVER = 10**9  # nsr_every / nsr_extra_every that never fires (step counters start at 1)
PAPER_N = 50_000  # CIFAR-10 training set: the epoch of items 3 and "epoch"
REPO = Path(__file__).resolve().parent.parent
TIMINGS_JSON = REPO / "figures" / "timings.json"


# --- sizes ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """What to measure, and how often; nets are (arch, norm, resolution, B) tuples."""

    name: str
    svag_nets: tuple[tuple[str, str, int, int], ...]  # item 1: SVAG at B vs SGD at 2B
    nsr_nets: tuple[tuple[str, str, int, int], ...]  # item 3: SGD at B, G/N on vs off
    direct_net: tuple[str, str, int]  # item 3: the authors' estimator (arch, norm, resolution)
    direct_batches: tuple[int, ...]
    ngd_net: tuple[str, str, int]  # item 2
    ngd_n: int  # N of the NGD / GD timing
    memory_ns: tuple[int, ...]  # N of the NGD memory measurement
    chunk_size: int
    pipeline_nets: tuple[tuple[str, str, int], ...]  # item 4 at resolution 32: (arch, norm, B)
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
    item: str  # "1" .. "5" or "epoch"
    what: str
    setting: str
    value: float | None  # None: not measured
    unit: str  # "x" (ratio), "%", "MB", "samples/s", "s", "epochs"
    target: str = ""
    ok: bool | None = None  # None: no target
    note: str = ""

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


def table(rows: list[Row]) -> str:
    lines = ["| # | measurement | setting | value | target | holds | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        holds = "" if r.ok is None else ("yes" if r.ok else "**no**")
        lines.append(f"| {r.item} | {r.what} | {r.setting} | {r.formatted()} | {r.target} | "
                     f"{holds} | {r.note} |")
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
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


# --- the benchmark --------------------------------------------------------------------------------

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

    def config(self, **kw):
        """A paper-preset RunConfig for measurements (no logging, no schedule, no G/N)."""
        base = dict(dataset=self.dataset, subset=self._subset(), device=self.device.type,
                    lr=0.1, steps=NEVER, milestones=(), augment=False, nsr_every=NEVER,
                    nsr_extra_every=NEVER)
        base.update(kw)
        return preset("paper", **base)

    def _subset(self) -> int | None:
        s = self.profile.subset
        return None if s is None or s >= self.n_train else s

    def build(self, cfg) -> T.Context:
        """``train.build`` with the data set already in memory (prepared once per subset and
        resolution)."""
        key = (cfg.subset, cfg.resolution, cfg.data_seed)
        if key not in self.prepared:
            self.prepared[key] = prepare(self.raw, subset=cfg.subset, resolution=cfg.resolution,
                                         device=self.device, seed=cfg.data_seed)
        return T.build(cfg, self.device, data=self.prepared[key])

    def stepper(self, cfg) -> tuple[T.Context, Callable[[int], None]]:
        """One iteration of ``train``'s loop body (logging excluded) for ``cfg``."""
        ctx = self.build(cfg)
        opt = torch.optim.SGD(ctx.params, lr=cfg.step_lr, momentum=cfg.momentum,
                              weight_decay=cfg.wd)
        window = StepWindow(self.device)

        def step(k: int) -> None:
            stats = T.gradient(ctx, k)
            set_grad(ctx.params, stats.grad)
            opt.step()
            window.add(k, stats)

        return ctx, step

    def time_pair(self, cfgs: dict[str, object], steps: int | None = None,
                  repeats: int | None = None, warmup: int | None = None) -> dict[str, list]:
        fns = {name: self.stepper(cfg)[1] for name, cfg in cfgs.items()}
        p = self.profile
        return interleaved(fns, self.device, warmup=p.warmup if warmup is None else warmup,
                           repeats=repeats or p.repeats, steps=steps or p.steps)


def _net(arch: str, norm: str, resolution: int, batch: int | None = None) -> str:
    return f"{arch}-{norm} {resolution}x{resolution}" + (f" B={batch}" if batch else "")


def bench_svag(b: Bench) -> list[Row]:
    rows = []
    for i, (arch, norm, r, B) in enumerate(b.profile.svag_nets):
        setting = _net(arch, norm, r) + f" B={B} (SGD at 2B={2 * B})"
        if 2 * B > b.n_train:
            rows.append(Row("1", "SVAG / SGD(2B)", setting, None, "x", note="skipped: 2B > N"))
            continue
        net = dict(arch=arch, norm=norm, resolution=r)
        cfgs = {"sgd": b.config(algo="sgd", batch_size=2 * B, **net),
                "fused": b.config(algo="svag", l=4.0, batch_size=B, **net)}
        if norm != "bn":
            cfgs["measuring"] = b.config(algo="svag", l=4.0, batch_size=B, nsr_every=1, **net)
        if i == 0:  # A/A control: a second, identical SGD run shows the noise of the ratios
            cfgs["sgd again"] = cfgs["sgd"]
        times = b.time_pair(cfgs)
        if i == 0:
            ratio, note = paired_ratio(times, "sgd again", "sgd")
            rows.append(Row("1", "A/A control: SGD step / the same SGD step (noise floor)",
                            _net(arch, norm, r, 2 * B), ratio, "x", "", None, note))
        if norm == "bn":
            ratio, note = paired_ratio(times, "fused", "sgd")
            rows.append(Row("1", "SVAG step / SGD step at 2B (BN: two passes of B)", setting,
                            ratio, "x", "≤ 1.15", ratio <= 1.15, note))
            continue
        ratio, note = paired_ratio(times, "fused", "sgd")
        rows.append(Row("1", "SVAG step / SGD step at 2B, fused pass", setting, ratio, "x",
                        "≤ 1.05", ratio <= 1.05, note))
        ratio, note = paired_ratio(times, "measuring", "sgd")
        rows.append(Row("1", "SVAG measuring step (two passes of B, G/N) / SGD step at 2B",
                        setting, ratio, "x", "", None, note + "; every nsr_every-th step"))
    return rows


def bench_ngd(b: Bench) -> list[Row]:
    p = b.profile
    arch, norm, r = p.ngd_net
    n = min(p.ngd_n, b.n_train)
    net = dict(arch=arch, norm=norm, resolution=r, subset=None if n == b.n_train else n,
               batch_size=128 if n >= 256 else 8, chunk_size=p.chunk_size)
    times = b.time_pair({"ngd": b.config(algo="ngd", **net), "gd": b.config(algo="gd", **net)},
                        steps=1, repeats=max(3, p.repeats // 2 + 1), warmup=1)
    ratio, note = paired_ratio(times, "ngd", "gd")
    setting = _net(arch, norm, r) + f" N={n} chunk={p.chunk_size}"
    rows = [Row("2", "NGD step / GD step (full pass over N)", setting, ratio, "x", "≤ 1.05",
                ratio <= 1.05, note + f"; GD step {min(times['gd']):.3g} s")]
    n_max = b.n_train  # the synthetic stand-in has fewer examples than the profile's N
    ns = [m for m in p.memory_ns if m <= n_max] or [n_max // 10, n_max // 5, n_max]
    mem = {}
    for i, m in enumerate([ns[0], *ns]):  # the first run only warms up lazy allocations
        cfg = b.config(algo="ngd", **{**net, "subset": None if m == b.n_train else m})
        peak = ngd_pass_memory(b, cfg)
        if i:
            mem[m] = peak
    how = "peak RSS growth" if b.device.type == "cpu" else "max_memory_allocated growth"
    for m, v in mem.items():
        rows.append(Row("2", "NGD pass peak extra memory", _net(arch, norm, r) + f" N={m}",
                        v / 2**20, "MB", "", None, f"{how}, chunk={p.chunk_size}"))
    growth = mem[ns[-1]] / mem[ns[0]]
    per_example = (mem[ns[-1]] - mem[ns[0]]) / (ns[-1] - ns[0])
    data_bytes = 4 * b.raw.train_x.shape[1] * r * r  # one float32 training image on the device
    rows.append(Row("2", f"NGD pass memory N={ns[-1]} / N={ns[0]} (flat in N)", _net(arch, norm, r),
                    growth, "x", "≤ 1.10", growth <= 1.10,
                    f"N grows {ns[-1] / ns[0]:.0f}x; peak change per added example "
                    f"{per_example:.0f} B (the data itself: {data_bytes} B per example)"))
    return rows


def bench_pool(b: Bench) -> list[Row]:
    """The convnet's max-pool through the channels-last kernel (``models.max_pool2x2``, bitwise
    the same) against ``F.max_pool2d`` on NCHW: one GD step over N, and one test-set pass."""
    from . import models

    _, norm, r = b.profile.ngd_net
    n = min(b.profile.ngd_n, b.n_train)
    cfg = b.config(algo="gd", arch="convnet", norm=norm, resolution=r, batch_size=8,
                   subset=None if n == b.n_train else n, chunk_size=b.profile.chunk_size)
    ctx, step = b.stepper(cfg)
    routed = models.CHANNELS_LAST_POOL_MIN

    def pooled(limit: int, fn):
        def call(k: int) -> None:
            with models.channels_last_pool_min(limit):
                fn(k)
        return call

    never = 1 << 62  # every map stays on the NCHW kernel
    setting = _net("convnet", norm, r) + f" N={n} chunk={b.profile.chunk_size}"
    repeats = max(3, b.profile.repeats // 2 + 1)
    rows = []
    for what, fn in (("GD step", step), ("test-set evaluation", lambda k: T.evaluate(
            ctx.model, ctx.data, b.profile.chunk_size))):
        times = interleaved({"nchw": pooled(never, fn), "routed": pooled(routed, fn)}, b.device,
                            warmup=1, repeats=repeats, steps=1)
        ratio, note = paired_ratio(times, "nchw", "routed")
        rows.append(Row("2", f"{what} with the NCHW max-pool / with the channels-last route "
                        "(speed-up)", setting, ratio, "x", "", None,
                        note + f"; routed {min(times['routed']):.3g} s"))
    # The CPU probe's own net (plain torch.nn, GroupNorm(8) eps 1e-5, the last
    # pool an adaptive 2×2 average) over the same N and chunks: the throughput the issue's
    # cpu-preset time targets were derived from (39-43k samples/s at 8×8 on one thread there).
    probe = _probe_convnet(round(16 * cfg.width), ctx.data.num_classes).to(b.device)
    chunks = [ctx.data.batch(torch.arange(c.start, c.stop, device=b.device))
              for c in split_chunks(n, b.profile.chunk_size)]  # the slices GD's step uses

    def probe_pass(k: int) -> None:
        for x, y in chunks:
            probe.zero_grad(set_to_none=True)
            F.cross_entropy(probe(x), y).backward()

    times = interleaved({"probe": probe_pass, "ours": step}, b.device, warmup=1,
                        repeats=repeats, steps=1)
    ratio, note = paired_ratio(times, "probe", "ours")
    rows.append(Row("2", "the CPU probe's convnet, plain torch.nn, forward + backward over N",
                    setting, n / statistics.median(times["probe"]), "samples/s", note=(
                        "the CPU probe measured 39-43k samples/s for this net at 8×8 on its "
                        "machine")))
    rows.append(Row("2", "that pass / our GD step (same N, chunks)", setting, ratio, "x", "",
                    None, note))
    return rows


def _probe_convnet(w: int, classes: int) -> torch.nn.Module:
    """The CPU probe's convnet(w): [conv3x3 → GN → ReLU → pool] × 3 with widths w, 2w, 4w, the
    last pool AdaptiveAvgPool2d(2), then a frozen linear head."""
    layers, cin = [], 3
    for i, c in enumerate((w, 2 * w, 4 * w)):
        layers += [torch.nn.Conv2d(cin, c, 3, padding=1, bias=False),
                   torch.nn.GroupNorm(8, c, affine=False), torch.nn.ReLU(),
                   torch.nn.MaxPool2d(2) if i < 2 else torch.nn.AdaptiveAvgPool2d(2)]
        cin = c
    head = torch.nn.Linear(4 * w * 4, classes).requires_grad_(False)
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), head)


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def ngd_pass_memory(b: Bench, cfg) -> float:
    """Bytes one NGD step needs above what is allocated before it (data and model included)."""
    ctx, step = b.stepper(cfg)
    gc.collect()
    if b.device.type == "cuda":
        synchronize(b.device)
        torch.cuda.reset_peak_memory_stats(b.device)
        base = torch.cuda.memory_allocated(b.device)
        step(1)
        synchronize(b.device)
        peak = torch.cuda.max_memory_allocated(b.device)
    else:  # Linux: return free heap to the OS, reset the RSS high-water mark, read it back
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            base = _proc_status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return float("nan")
        step(1)
        peak = _proc_status("VmHWM")
    del ctx, step
    return float(peak - base)


def bench_nsr(b: Bench) -> list[Row]:
    rows, own = [], {}
    for arch, norm, r, B in b.profile.nsr_nets:
        net = dict(arch=arch, norm=norm, resolution=r, batch_size=B)
        k = 4
        on = dict(nsr_every=1) if norm != "bn" else dict(nsr_extra_every=k)
        # BN: the extra batch comes every k steps, so each repeat covers k steps.
        steps = b.profile.steps if norm != "bn" else k * max(1, b.profile.steps // k)
        times = b.time_pair({"on": b.config(algo="sgd", **net, **on),
                             "off": b.config(algo="sgd", **net)}, steps=steps)
        ratio, note = paired_ratio(times, "on", "off")
        overhead = 100 * (ratio - 1)
        setting = _net(arch, norm, r, B)
        if norm != "bn":
            every = max(1, math.ceil(overhead / 2))
            rows.append(Row("3", "online G/N every step (two half-batch passes): overhead",
                            setting, overhead, "%", "≤ 2 %", overhead <= 2,
                            note + f"; ≤ 2 % at nsr_every ≥ {every}"))
        else:
            rows.append(Row("3", f"online G/N, BN extra batch every k={k} steps: overhead",
                            setting, overhead, "%", f"≈ 1/k = {100 / k:.1f} %",
                            overhead <= 110 / k, note))
        own[norm] = overhead / 100
    arch, norm, r = b.profile.direct_net
    for B in b.profile.direct_batches:
        if B > b.n_train:
            continue
        net = dict(arch=arch, norm=norm, resolution=r, batch_size=B)
        gctx, _ = b.stepper(b.config(algo="sgd", **net))
        fns = {"grad": lambda k, c=gctx: T.gradient(c, k),
               "step": b.stepper(b.config(algo="sgd", **net))[1]}
        times = interleaved(fns, b.device, warmup=1, repeats=3, steps=1)
        count = max(200, 12800 // B)
        formula = count * B / PAPER_N
        cost = count * statistics.median(times["grad"]) / (
            (PAPER_N // B) * statistics.median(times["step"]))
        ours = own.get(norm)
        when = "every step" if norm != "bn" else "extra batch every 4 steps"
        tail = f"; ours ({norm}, {when}): {ours:.3f} epochs" if ours is not None else ""
        rows.append(Row("3", "authors' direct G/N estimator: extra compute per epoch",
                        _net(arch, norm, r, B), cost, "epochs", "", None,
                        f"{count} minibatch gradients of B={B} per epoch of {PAPER_N} "
                        f"= {formula:.2f} epochs of examples{tail}"))
    return rows


class _PILImages(torch.utils.data.Dataset):
    """The conventional pipeline: uint8 HWC images → PIL → torchvision transforms."""

    def __init__(self, x_nchw: torch.Tensor, y: torch.Tensor, transform):
        self.x = x_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def dataloader_stepper(b: Bench, cfg) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A conventional training step: DataLoader(workers) batch → device → forward/backward/SGD."""
    from torchvision import transforms

    ctx = b.build(cfg)
    model = ctx.model.train()
    mean, std = NORMALIZATION[b.dataset]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    n = cfg.train_size
    ds = _PILImages(b.raw.train_x[:n], b.raw.train_y[:n], tf)
    mp = "fork" if b.workers and sys.platform.startswith("linux") else None
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=b.workers,
        pin_memory=b.device.type == "cuda", multiprocessing_context=mp)
    opt = torch.optim.SGD(ctx.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step(_k: int) -> None:
        x, y = next(it)
        x, y = x.to(b.device, non_blocking=True), y.to(b.device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def close() -> None:  # ends the loader's iterator, which shuts its workers down
        it.close()

    return step, close


def bench_pipeline(b: Bench) -> list[Row]:
    rows = []
    for arch, norm, B in b.profile.pipeline_nets:
        cfg = b.config(algo="sgd", arch=arch, norm=norm, resolution=32, batch_size=B,
                       augment=True)
        ours = b.stepper(cfg)[1]
        theirs, close = dataloader_stepper(b, cfg)
        p = b.profile
        try:
            times = interleaved({"ours": ours, "loader": theirs}, b.device,
                                warmup=p.warmup + 2, repeats=p.repeats, steps=p.steps + 2)
        finally:
            close()
        setting = _net(arch, norm, 32, B) + f" {b.device.type}"
        fast, slow = (B / statistics.median(times[k]) for k in ("ours", "loader"))
        ratio, note = paired_ratio(times, "loader", "ours")  # = ours/loader in samples/s
        rows += [
            Row("4", "on-device pipeline (augment on device)", setting, fast, "samples/s",
                note="paperlib.train step, G/N off"),
            Row("4", f"DataLoader + PIL transforms, {b.workers} workers", setting, slow,
                "samples/s", note="RandomCrop(32, 4) + flip + ToTensor + Normalize"),
            Row("4", "throughput on-device / DataLoader", setting, ratio, "x", "", None, note),
        ]
    return rows


def bench_epoch(b: Bench) -> list[Row]:
    """Seconds per epoch of 50 000 images, the paper recipe (G/N on, augment on)."""
    variants = [("fp32 (TF32 on CUDA)", {}), ("channels_last", dict(channels_last=True)),
                ("channels_last + bf16", dict(channels_last=True, bf16=True))]
    if b.compile:
        variants.append(("channels_last + compile", dict(channels_last=True, compile=True)))
    rows = []
    for arch, norm, B in b.profile.epoch_nets:
        steps_50k = PAPER_N // B
        for name, opts in variants:
            cfg = preset("paper", dataset=b.dataset, subset=b._subset(), arch=arch, norm=norm,
                         batch_size=B, device=b.device.type, **opts)
            ctx, step = b.stepper(cfg)
            for k in range(8 if not opts.get("compile") else 16):  # BN's extra batch: k % 4
                step(k)
            synchronize(b.device)
            n = 2 if b.quick else min(steps_50k, max(cfg.steps_per_epoch, 50))
            t0 = time.perf_counter()
            for k in range(16, 16 + n):
                step(k)
            synchronize(b.device)
            per_epoch = (time.perf_counter() - t0) / n * steps_50k
            cuda = b.device.type == "cuda"
            rows.append(Row("epoch", f"epoch of {PAPER_N} images, {name}",
                            _net(arch, norm, 32, B) + f" {b.device.type}", per_epoch, "s",
                            "≤ 3 s (H100)" if cuda else "", (per_epoch <= 3) if cuda else None,
                            f"{n} steps timed, scaled to {steps_50k}; G/N on (paper defaults)"))
            del ctx, step
    return rows


def bench_figures(path: Path = TIMINGS_JSON) -> list[Row]:
    if not path.is_file():
        return [Row("5", "`make figures` wall time", "cpu preset", None, "s",
                    note=f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} absent")]
    # {preset: {figure id: {wall_s, results_computed, wall_s_with_training}}}, written by
    # paperlib.notebooks.execute_all (`make figures`).
    by_preset = json.loads(path.read_text())
    rows = []
    for preset_name, entries in sorted(by_preset.items()):
        total = 0.0
        for name, e in sorted(entries.items()):
            sec = e.get("wall_s_with_training", e["wall_s"])
            total += sec
            how = ("from scratch" if "wall_s_with_training" in e
                   else "re-plot from the store")
            rows.append(Row("5", "`make figures` wall time", f"{name}, {preset_name} preset",
                            float(sec), "s", note=f"{how}; re-plot {e['wall_s']:.0f} s"))
        rows.append(Row("5", "`make figures` wall time, all figures", f"{preset_name} preset",
                        total, "s", note="sum of the executions that trained each figure's runs"))
    return rows


def bench_monitor(b: Bench) -> list[Row]:
    from .bench_monitor import bench_monitor as rows

    return rows(b)


ITEMS = {"1": bench_svag, "2": lambda b: bench_ngd(b) + bench_pool(b), "3": bench_nsr,
         "4": bench_pipeline, "epoch": bench_epoch, "5": lambda b: bench_figures(),
         "6": bench_monitor}


def load_bench_dataset(choice: str):
    """The RawDataset to measure on: CIFAR-10 when it can be loaded offline, else synthetic."""
    if choice == "synthetic":
        return load_dataset("synthetic"), "synthetic (requested)"
    try:
        return load_dataset("cifar10", root=data_root(), download=False), "cifar10"
    except (DatasetNotFoundError, DatasetFormatError, FileNotFoundError) as err:
        if choice == "cifar10":
            raise
        return load_dataset("synthetic"), f"synthetic (no CIFAR-10: {type(err).__name__})"


def run_bench(*, quick: bool = False, device: str = "auto", profile: str = "auto",
              dataset: str = "auto", items: tuple[str, ...] | None = None,
              workers: int | None = None, compile: bool = False, log=print,
              on_item: Callable[[list[Row], dict], None] | None = None
              ) -> tuple[list[Row], dict]:
    """Run the selected items and return (rows, machine/meta info).

    An item that raises becomes one row with value None and the error as its note (the others
    still run); ``on_item(rows, meta)`` is called after each item (partial reports).
    """
    dev = T.resolve_device(device)
    name = ("gpu" if dev.type == "cuda" else "cpu") if profile == "auto" else profile
    prof = PROFILES[name]
    if quick:
        prof = quick_profile(prof)
    if dataset == "auto" and quick:
        dataset = "synthetic"
    raw, data_note = load_bench_dataset(dataset)
    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    b = Bench(prof, dev, raw, workers, quick, compile)
    if items is None:  # GPU: the epoch time first, so a time limit cannot cut the headline
        items = (("epoch",) if name == "gpu" else ()) + ("1", "2", "3", "4", "5", "6")
    meta = machine_info(dev) | {"profile": prof.name + (" (quick)" if quick else ""),
                                "dataset": data_note, "dataloader_workers": workers}
    rows: list[Row] = []
    t0 = time.time()
    for item in items:
        t = time.time()
        try:
            rows += ITEMS[item](b)
        except Exception as err:  # report it in the table and go on with the other items
            rows.append(Row(item, "FAILED", "", None, "", note=f"{type(err).__name__}: {err}"))
        log(f"item {item}: {time.time() - t:.0f} s", flush=True)
        meta["seconds"] = round(time.time() - t0, 1)
        with contextlib.suppress(OSError):
            meta["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        if on_item is not None:
            on_item(rows, meta)
    return rows, meta


def report(rows: list[Row], meta: dict, note: str = "") -> str:
    keys = ("date", "cpu", "cores", "gpu", "device", "threads", "torch", "python", "profile",
            "dataset", "dataloader_workers", "load_average_1min", "load_average_1min_end",
            "seconds")
    head = ", ".join(f"{k}: {meta[k]}" for k in keys if k in meta)
    return f"{head}\n\n" + (f"{note}\n\n" if note else "") + table(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paperlib.bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long version (tests, dry runs)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--profile", default="auto", choices=("auto", "cpu", "gpu"),
                    help="sizes: cpu (small nets at 8x8/16x16) or gpu (PreResNet-32, B=128/1024)")
    ap.add_argument("--dataset", default="auto", choices=("auto", "cifar10", "synthetic"),
                    help="auto: CIFAR-10 if it loads offline (synthetic with --quick)")
    ap.add_argument("--items", default=None,
                    help="comma-separated subset of 1,2,3,4,5,6,epoch (default: all; epoch on GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default 1 on CPU for stable ratios; 0: torch's)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of item 4 (default min(8, cores - 1))")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile epoch")
    ap.add_argument("--out", type=Path, default=None,
                    help="update this markdown file's bench section (e.g. BENCHMARKS.md)")
    ap.add_argument("--section", default=None, help="section name in --out (default: device)")
    ap.add_argument("--json", type=Path, default=None, help="also write rows and meta as JSON")
    ap.add_argument("--note", default="", help="a line printed above the table")
    a = ap.parse_args(argv)
    try:
        dev = T.resolve_device(a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = a.threads if a.threads is not None else (1 if dev.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    items = tuple(a.items.split(",")) if a.items else None
    if items and set(items) - set(ITEMS):
        print(f"error: --items {a.items!r}: choose from {sorted(ITEMS)}", file=sys.stderr)
        return 2
    section = a.section or dev.type
    section += "-quick" if a.quick else ""

    def write(rows: list[Row], meta: dict) -> None:  # after every item: partial results survive
        if a.out is not None:
            update_section(a.out, section, report(rows, meta, a.note))
        if a.json is not None:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(
                {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))

    rows, meta = run_bench(quick=a.quick, device=a.device, profile=a.profile, dataset=a.dataset,
                           items=items, workers=a.workers, compile=a.compile, on_item=write)
    print(report(rows, meta, a.note))
    return 1 if any(r.what == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
