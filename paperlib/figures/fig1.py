"""Fig 1 (and App. F.3): SGD vs NGD (eq. 3, the full gradient plus Gaussian noise of SGD's
covariance) vs GD. Claim: NGD matches SGD while GD, without noise, falls short."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim, check
from ..config import RunConfig
from ..equilibrium import constant_lr_window, window_start_frac
from ..sweeps import equilibrium_table, final_test_acc, sweep
from .common import base_config, check_seeds, eq11_claims, group_means, interval_of, select, spread

SETTINGS = {
    # Paper: PreResNet-32 GN, no augmentation, N = 50k, B = 125, η = 0.8, ×0.1 at step 24000.
    "paper": dict(arch="preresnet32", norm="gn", augment=False, batch_size=125, lr=0.8,
                  wd=5e-4, schedule="step", schedule_unit="step", milestones=(24000.0,),
                  steps=30000, epochs=None, log_every=100, eval_every=1000,
                  checkpoint_every=1000, chunk_size=1000),
    # CPU probe's noise-dominated regime: B = 16 at η = 0.4 gives G/N ≈ 0.2.
    "cpu": dict(),
    "smoke": dict(),
}

NGD_MATCHES_SGD = 2.0  # points of final test accuracy: |NGD − SGD| at most this
NOISE_HELPS = 3.0  # points: min(SGD, NGD) − GD at least this
PHASE_RATIO = 0.5  # constant-LR phase: |NGD − SGD| / |GD − SGD| at most this


def configs(preset_name: str = "cpu", seeds=(0, 1), gap_batch_sizes=(16, 32, 64, 125, 500),
            gap_seeds=(0, 1), **overrides) -> list[RunConfig]:
    """SGD, NGD (same B) and GD for each seed; plus SGD at other B (the gap-vs-G/N panel).

    GD does not depend on B, so its runs keep the preset's B whatever ``batch_size`` is: the
    smaller-batch variant reuses the main figure's GD runs instead of recomputing them."""
    base = base_config(preset_name, SETTINGS, **overrides)
    gd = base_config(preset_name, SETTINGS,
                     **{k: v for k, v in overrides.items() if k != "batch_size"})
    out = []
    for s in check_seeds(seeds):
        out += [base.replace(algo=a, seed=s) for a in ("sgd", "ngd")]
        out.append(gd.replace(algo="gd", seed=s))
    for b in gap_batch_sizes:
        if b <= base.train_size:
            out += [base.replace(algo="sgd", batch_size=int(b), seed=s)
                    for s in check_seeds(gap_seeds)]
    return out


def run(preset_name: str = "cpu", *, root=None, workers=None, **kw):
    """(tidy frame, results) of :func:`configs` (trained where missing)."""
    return sweep(configs(preset_name, **kw), root=root, workers=workers)


def gap(df: pd.DataFrame) -> pd.DataFrame:
    """SGD at each B: final test acc minus GD's (mean over seeds) against measured G/N."""
    final = final_test_acc(df)
    eq = equilibrium_table(df[df["algo"] == "sgd"])
    gd = float(select(final, algo="gd")["final_test_acc"].mean())
    sgd = select(final, algo="sgd").merge(eq[["run_id", "G", "N"]], on="run_id")
    sgd["G_over_N"] = sgd["G"] / sgd["N"]
    out = sgd.groupby("batch_size").agg(final_test_acc=("final_test_acc", "mean"),
                                        acc_sd=("final_test_acc", "std"),
                                        G_over_N=("G_over_N", "mean")).reset_index()
    out["gap_vs_gd"] = out["final_test_acc"] - gd
    return out


def claims(df: pd.DataFrame, main_batch: int) -> list[Claim]:
    final = final_test_acc(df)
    main = final[(final["batch_size"] == main_batch) | (final["algo"] == "gd")]
    # the seed noise is pooled over every setting of the figure (the gap panel's B too)
    est, dof, how = group_means(main, {a: {"algo": a} for a in ("sgd", "ngd", "gd")}, pool=final)
    text = "; ".join(f"{a.upper()} {spread(main, algo=a)}" for a in ("sgd", "ngd", "gd"))
    (sgd, _), (ngd, _), (gd, _) = est["sgd"], est["ngd"], est["gd"]
    out = [
        check("Fig 1: NGD matches SGD (|NGD − SGD| final test acc, points)",
              "89.3 vs 89.4 (0.1)", abs(ngd - sgd), "<=", NGD_MATCHES_SGD,
              interval=interval_of(lambda sgd, ngd, gd: np.abs(ngd - sgd), est, dof, how),
              seeds=text),
        check("Fig 1: noise helps (min(SGD, NGD) − GD final test acc, points)",
              "89.3 − 75.5 = 13.8", min(sgd, ngd) - gd, ">=", NOISE_HELPS,
              interval=interval_of(lambda sgd, ngd, gd: np.minimum(sgd, ngd) - gd, est, dof,
                                   how),
              seeds=text),
    ]
    # Training side, constant-LR phase: NGD ≈ SGD ≠ GD (train accuracy and R), each run's
    # window mean; the seeds give the noise.
    phase = []
    for rid, h in df.groupby("run_id", sort=False):
        c = h["config"].iloc[0]
        if c.algo == "gd" or c.batch_size == main_batch:
            w = constant_lr_window(h, c, window_start_frac(c))
            phase.append({"run_id": rid, "algo": c.algo, "seed": c.seed,
                          "train_acc": w["train_acc"].mean(), "R": w["R"].mean()})
    phase = pd.DataFrame(phase)
    for col, what in (("train_acc", "train accuracy"), ("R", "|x|² (R)")):
        e, d, h = group_means(phase, {a: {"algo": a} for a in ("sgd", "ngd", "gd")}, value=col)
        s, n, g = e["sgd"][0], e["ngd"][0], e["gd"][0]
        out.append(check(
            f"Fig 1, constant-LR phase: NGD ≈ SGD ≠ GD in {what} (|NGD − SGD| / |GD − SGD|)",
            "NGD tracks SGD; GD differs", abs(n - s) / abs(g - s), "<=", PHASE_RATIO,
            interval=interval_of(lambda sgd, ngd, gd: np.abs(ngd - sgd) / np.abs(gd - sgd),
                                 e, d, h),
            seeds=f"SGD {s:.4g}, NGD {n:.4g}, GD {g:.4g}"))
    return out + eq11_claims(df, algo="sgd")
