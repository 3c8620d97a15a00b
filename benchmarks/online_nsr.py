"""The online G/N estimate's overhead (Sec. 5): SGD steps with the estimate every step against
without it (GN: two half-batch passes; BN: one extra batch every k steps, compared with 1/k), and
the authors' direct estimator, max(200, 12800 // B) extra minibatch gradients per epoch of
N = 50 000, as extra epochs of compute.
"""

from __future__ import annotations

import math
import statistics

from benchmarks.harness import (
    PAPER_N,
    Bench,
    Row,
    interleaved,
    net_label,
    paired_ratio,
)

GROUP = "online-nsr"  # the rows' name in the table and in --only


def rows(b: Bench) -> list[Row]:
    out, own = [], {}
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
        setting = net_label(arch, norm, r, B)
        if norm != "bn":
            every = max(1, math.ceil(overhead / 2))
            out.append(Row(GROUP, "online G/N every step (two half-batch passes): overhead",
                           setting, overhead, "%", "≤ 2 %", overhead <= 2,
                           note + f"; ≤ 2 % at nsr_every ≥ {every}"))
        else:
            out.append(Row(GROUP, f"online G/N, BN extra batch every k={k} steps: overhead",
                           setting, overhead, "%", f"≈ 1/k = {100 / k:.1f} %",
                           overhead <= 110 / k, note))
        own[norm] = overhead / 100
    arch, norm, r = b.profile.direct_net
    for B in b.profile.direct_batches:
        if B > b.n_train:
            continue
        net = dict(arch=arch, norm=norm, resolution=r, batch_size=B)
        grad_net = b.build(b.config(algo="sgd", **net))
        fns = {"grad": grad_net.gradient,
               "step": b.stepper(b.config(algo="sgd", **net))[1]}
        times = interleaved(fns, b.device, warmup=1, repeats=3, steps=1)
        count = max(200, 12800 // B)
        formula = count * B / PAPER_N
        cost = count * statistics.median(times["grad"]) / (
            (PAPER_N // B) * statistics.median(times["step"]))
        ours = own.get(norm)
        when = "every step" if norm != "bn" else "extra batch every 4 steps"
        tail = f"; ours ({norm}, {when}): {ours:.3f} epochs" if ours is not None else ""
        out.append(Row(GROUP, "authors' direct G/N estimator: extra compute per epoch",
                       net_label(arch, norm, r, B), cost, "epochs", "", None,
                       f"{count} minibatch gradients of B={B} per epoch of {PAPER_N} "
                       f"= {formula:.2f} epochs of examples{tail}"))
    return out
