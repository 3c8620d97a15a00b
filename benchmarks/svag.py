"""SVAG's cost: an SVAG step (l = 4, two batches of B) against an SGD step at batch 2B, same net.

GN / unnormalized nets take one fused 2B pass with per-example weights (``nsr_every`` large); on
measuring steps SVAG takes two passes of B to get G/N (reported apart). BN nets always take two
passes of B. The first net also gets an A/A control (the same SGD step against itself): the noise
floor of every ratio on this machine.
"""

from __future__ import annotations

from benchmarks.harness import Bench, Row, net_label, paired_ratio

GROUP = "svag"  # the rows' name in the table and in --only


def svag_rows(b: Bench) -> list[Row]:
    rows = []
    for i, (arch, norm, r, B) in enumerate(b.profile.svag_nets):
        setting = net_label(arch, norm, r) + f" B={B} (SGD at 2B={2 * B})"
        if 2 * B > b.n_train:
            rows.append(Row(GROUP, "SVAG / SGD(2B)", setting, None, "x", note="skipped: 2B > N"))
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
            rows.append(Row(GROUP, "A/A control: SGD step / the same SGD step (noise floor)",
                            net_label(arch, norm, r, 2 * B), ratio, "x", "", None, note))
        if norm == "bn":
            ratio, note = paired_ratio(times, "fused", "sgd")
            rows.append(Row(GROUP, "SVAG step / SGD step at 2B (BN: two passes of B)", setting,
                            ratio, "x", "≤ 1.15", ratio <= 1.15, note))
            continue
        ratio, note = paired_ratio(times, "fused", "sgd")
        rows.append(Row(GROUP, "SVAG step / SGD step at 2B, fused pass", setting, ratio, "x",
                        "≤ 1.05", ratio <= 1.05, note))
        ratio, note = paired_ratio(times, "measuring", "sgd")
        rows.append(Row(GROUP, "SVAG measuring step (two passes of B, G/N) / SGD step at 2B",
                        setting, ratio, "x", "", None, note + "; every nsr_every-th step"))
    return rows
