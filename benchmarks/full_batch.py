"""Full-batch rules: an NGD step against a GD step over the same N, the peak extra memory of one
NGD pass at three N (chunked: flat in N), the convnet's max-pool through the channels-last route
of ``paperlib.models`` against NCHW, and the CPU probe's plain ``torch.nn`` convnet over the same
N (the throughput the cpu preset's time targets were derived from).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import (
    Bench,
    Row,
    interleaved,
    net_label,
    paired_ratio,
    synchronize,
)
from paperlib import models
from paperlib.ngd import split_chunks
from paperlib.passes import evaluate

GROUP = "full-batch"  # the rows' name in the table and in --only


def rows(b: Bench) -> list[Row]:
    return ngd_rows(b) + max_pool_rows(b)


def ngd_rows(b: Bench) -> list[Row]:
    p = b.profile
    arch, norm, r = p.ngd_net
    n = min(p.ngd_n, b.n_train)
    net = dict(arch=arch, norm=norm, resolution=r, subset=None if n == b.n_train else n,
               batch_size=128 if n >= 256 else 8, chunk_size=p.chunk_size)
    times = b.time_pair({"ngd": b.config(algo="ngd", **net), "gd": b.config(algo="gd", **net)},
                        steps=1, repeats=max(3, p.repeats // 2 + 1), warmup=1)
    ratio, note = paired_ratio(times, "ngd", "gd")
    setting = net_label(arch, norm, r) + f" N={n} chunk={p.chunk_size}"
    rows = [Row(GROUP, "NGD step / GD step (full pass over N)", setting, ratio, "x", "≤ 1.05",
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
        rows.append(Row(GROUP, "NGD pass peak extra memory", net_label(arch, norm, r) + f" N={m}",
                        v / 2**20, "MB", "", None, f"{how}, chunk={p.chunk_size}"))
    growth = mem[ns[-1]] / mem[ns[0]]
    per_example = (mem[ns[-1]] - mem[ns[0]]) / (ns[-1] - ns[0])
    data_bytes = 4 * b.raw.train_x.shape[1] * r * r  # one float32 training image on the device
    rows.append(Row(GROUP, f"NGD pass memory N={ns[-1]} / N={ns[0]} (flat in N)",
                    net_label(arch, norm, r),
                    growth, "x", "≤ 1.10", growth <= 1.10,
                    f"N grows {ns[-1] / ns[0]:.0f}x; peak change per added example "
                    f"{per_example:.0f} B (the data itself: {data_bytes} B per example)"))
    return rows


def max_pool_rows(b: Bench) -> list[Row]:
    """The convnet's max-pool through the channels-last kernel (``models.max_pool2x2``, bitwise
    the same) against ``F.max_pool2d`` on NCHW: one GD step over N, and one test-set pass."""
    _, norm, r = b.profile.ngd_net
    n = min(b.profile.ngd_n, b.n_train)
    cfg = b.config(algo="gd", arch="convnet", norm=norm, resolution=r, batch_size=8,
                   subset=None if n == b.n_train else n, chunk_size=b.profile.chunk_size)
    net, step = b.stepper(cfg)
    routed = models.CHANNELS_LAST_POOL_MIN

    def pooled(limit: int, fn):
        def call(k: int) -> None:
            with models.channels_last_pool_min(limit):
                fn(k)
        return call

    never = 1 << 62  # every map stays on the NCHW kernel
    setting = net_label("convnet", norm, r) + f" N={n} chunk={b.profile.chunk_size}"
    repeats = max(3, b.profile.repeats // 2 + 1)
    rows = []
    for what, fn in (("GD step", step), ("test-set evaluation", lambda k: evaluate(
            net.model, net.data, b.profile.chunk_size))):
        times = interleaved({"nchw": pooled(never, fn), "routed": pooled(routed, fn)}, b.device,
                            warmup=1, repeats=repeats, steps=1)
        ratio, note = paired_ratio(times, "nchw", "routed")
        rows.append(Row(GROUP, f"{what} with the NCHW max-pool / with the channels-last route "
                        "(speed-up)", setting, ratio, "x", "", None,
                        note + f"; routed {min(times['routed']):.3g} s"))
    # The CPU probe's own net (plain torch.nn, GroupNorm(8) eps 1e-5, the last
    # pool an adaptive 2×2 average) over the same N and chunks: the throughput the cpu
    # preset's time targets were derived from (39-43k samples/s at 8×8 on one thread there).
    probe = probe_convnet(round(16 * cfg.width), net.data.num_classes).to(b.device)
    chunks = [net.data.batch(torch.arange(c.start, c.stop, device=b.device))
              for c in split_chunks(n, b.profile.chunk_size)]  # the slices GD's step uses

    def probe_pass(k: int) -> None:
        for x, y in chunks:
            probe.zero_grad(set_to_none=True)
            F.cross_entropy(probe(x), y).backward()

    times = interleaved({"probe": probe_pass, "ours": step}, b.device, warmup=1,
                        repeats=repeats, steps=1)
    ratio, note = paired_ratio(times, "probe", "ours")
    rows.append(Row(GROUP, "the CPU probe's convnet, plain torch.nn, forward + backward over N",
                    setting, n / statistics.median(times["probe"]), "samples/s", note=(
                        "the CPU probe measured 39-43k samples/s for this net at 8×8 on its "
                        "machine")))
    rows.append(Row(GROUP, "that pass / our GD step (same N, chunks)", setting, ratio, "x", "",
                    None, note))
    return rows


def probe_convnet(w: int, classes: int) -> torch.nn.Module:
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
    net, step = b.stepper(cfg)
    gc.collect()
    if b.device.type == "cuda":
        synchronize(b.device)
        torch.cuda.reset_peak_memory_stats(b.device)
        base = torch.cuda.memory_allocated(b.device)
        step(1)
        synchronize(b.device)
        peak = torch.cuda.max_memory_allocated(b.device)
    else:
        # torch keeps no peak statistics for CPU memory, so the peak is the process's RSS
        # high-water mark (Linux /proc: VmHWM, reset through clear_refs). malloc_trim first hands
        # the heap freed by earlier rows back to the OS; otherwise the pass reuses it and its
        # growth reads as zero.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            base = _proc_status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return float("nan")
        step(1)
        peak = _proc_status("VmHWM")
    del net, step
    return float(peak - base)
