"""Seconds per training epoch of 50 000 images with the paper recipe (online G/N and augmentation
on), for GN and BN nets and a few accelerator options (channels_last, bf16, torch.compile).
"""

from __future__ import annotations

import time

from benchmarks.harness import PAPER_N, Bench, Row, net_label, synchronize
from paperlib.config import preset

GROUP = "epoch"  # the rows' name in the table and in --only


def rows(b: Bench) -> list[Row]:
    """Seconds per epoch of 50 000 images, the paper recipe (G/N on, augment on)."""
    variants = [("fp32 (TF32 on CUDA)", {}), ("channels_last", dict(channels_last=True)),
                ("channels_last + bf16", dict(channels_last=True, bf16=True))]
    if b.compile:
        variants.append(("channels_last + compile", dict(channels_last=True, compile=True)))
    out = []
    for arch, norm, B in b.profile.epoch_nets:
        steps_50k = PAPER_N // B
        for name, opts in variants:
            cfg = preset("paper", dataset=b.dataset, subset=b._subset(), arch=arch, norm=norm,
                         batch_size=B, device=b.device.type, **opts)
            net, step = b.stepper(cfg)
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
            out.append(Row(GROUP, f"epoch of {PAPER_N} images, {name}",
                           net_label(arch, norm, 32, B) + f" {b.device.type}", per_epoch, "s",
                           "≤ 3 s (H100)" if cuda else "", (per_epoch <= 3) if cuda else None,
                           f"{n} steps timed, scaled to {steps_50k}; G/N on (paper defaults)"))
            del net, step
    return out
