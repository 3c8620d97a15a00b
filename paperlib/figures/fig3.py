"""Fig 3 (and App. F): along the linear scaling rule (η ∝ B), the equilibrium G_t/N_t grows with
B, and Thm 5.6 predicts from a small-batch run the B at which the LSR fails.

Thm 5.6 gives the critical batch B* = B·C²(1 + N/G) (``lsr.predict_critical_batch``, used here);
the Fig 3 caption writes it as C²·B·N/G (``lsr.predict_critical_batch_approx``), shown beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..claims import (
    Claim,
    Interval,
    check,
    increase_fraction,
    increase_fraction_interval,
    pooled_sd,
)
from ..config import RunConfig
from ..lsr import (
    lsr_failure_batch,
    lsr_failure_batches,
    predict_critical_batch,
    predict_critical_batch_approx,
)
from ..sweeps import equilibrium_table, final_test_acc, sweep
from .common import base_config, cadence, check_seeds, eq11_claims, group_means

SETTINGS = {
    # Paper: η = 0.8·B/128, 300 epochs, ×0.1 at 250; B = 2 … 2048.
    "paper": dict(arch="preresnet32", norm="bn", epochs=300.0, milestones=(250.0,),
                  schedule_unit="epoch", log_every=50, eval_every=500),
    # CPU probe §4: 16×16, N = 10000, convnet width 2, λ = 5e-3, 24 epochs, ×0.1 at epoch 20.
    # Fig 3 needs only the final test error: evaluate in the last 10 % only (eval_from).
    "cpu": dict(resolution=16, subset=10000, width=2.0, epochs=24.0, steps=None,
                milestones=(20.0,), schedule_unit="epoch", log_every=10, eval_every=100,
                eval_from=0.9),
    "smoke": dict(epochs=4.0, steps=None, milestones=(3.0,), schedule_unit="epoch",
                  log_every=4, eval_every=8),
}
BATCHES = {"paper": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
           "cpu": (16, 32, 64, 128, 256, 512, 1024), "smoke": (8, 16, 32, 64)}

FAILURE_FACTOR = 1.2  # the LSR failed at B whose final test error exceeds 1.2 × the best (Fig 3)
GN_INCREASING = 1.0  # fraction of consecutive batch sizes with increasing G/N, at least this
PREDICTION_LOG2 = 1.0  # |log2(observed failure B / B*)| at most this: within a factor 2
C_DEFAULT = 2 ** 0.5  # Thm 5.6's C (the paper's threshold C² = 2)


def configs(preset_name: str = "cpu", batch_sizes=None, seeds=(0,), base_batch: int = 128,
            base_lr: float = 0.8, **overrides) -> list[RunConfig]:
    """SGD along the LSR: η = base_lr · B / base_batch, the same number of epochs."""
    base = base_config(preset_name, SETTINGS, **overrides)
    batch_sizes = batch_sizes or BATCHES[preset_name]
    return [base.replace(algo="sgd", batch_size=int(b), lr=base_lr * b / base_batch, seed=s,
                         **cadence(base, b, keep="ratio"))
            for b in batch_sizes for s in check_seeds(seeds) if b <= base.train_size]


def run(preset_name: str = "cpu", *, root=None, workers=None, **kw):
    """(tidy frame, results) of :func:`configs` (trained where missing)."""
    return sweep(configs(preset_name, **kw), root=root, workers=workers)


def _per_run(df: pd.DataFrame) -> pd.DataFrame:
    final = final_test_acc(df)
    eq = equilibrium_table(df)
    m = final.merge(eq[["run_id", "G", "N", "N_over_G_se", "eq11_rel_err", "R_drift"]],
                    on="run_id", how="left")
    m["test_error"] = 100 - m["final_test_acc"]
    m["diverged"] = m["status"] == "diverged"
    m["log_G_over_N"] = np.log((m["G"] / m["N"]).astype(float))
    return m


def summary(df: pd.DataFrame, C: float = C_DEFAULT, n_baselines: int = 2
            ) -> tuple[pd.DataFrame, dict]:
    """Per B: final test error (mean over the seeds that did not diverge), runs that diverged,
    G_t/N_t (equilibrium window), Thm 5.6's B* and the caption's C²·B·N/G.

    The LSR counts as failed at the smallest B whose error exceeds ``FAILURE_FACTOR`` × the
    best (Fig 3) or where a run diverged: divergence is the LSR's failure taken to its end.
    """
    m = _per_run(df)
    per_b = m.groupby("batch_size").agg(test_error=("test_error", "mean"),
                                        G=("G", "mean"), N=("N", "mean"),
                                        diverged=("diverged", "sum")).reset_index()
    per_b["G_over_N"] = per_b["G"] / per_b["N"]
    rows = list(zip(per_b["G"], per_b["N"], per_b["batch_size"], strict=True))
    per_b["predicted_B_star"] = [predict_critical_batch(g, n, b, C) if g > 0 else np.nan
                                 for g, n, b in rows]
    per_b["caption_B_star"] = [predict_critical_batch_approx(g, n, b, C) if g > 0 else np.nan
                               for g, n, b in rows]
    base = per_b.head(n_baselines)
    trained = per_b[per_b["test_error"].notna()]
    failures = [int(b) for b in per_b.loc[per_b["diverged"] > 0, "batch_size"]]
    if len(trained):
        by_error = lsr_failure_batch(list(trained["batch_size"]), list(trained["test_error"]),
                                     FAILURE_FACTOR)
        failures += [] if by_error is None else [int(by_error)]
    info = {"C": C, "observed_failure_B": min(failures) if failures else None,
            "diverged_B": [int(b) for b in per_b.loc[per_b["diverged"] > 0, "batch_size"]],
            "predicted_min": float(base["predicted_B_star"].min()),
            "predicted_max": float(base["predicted_B_star"].max()),
            "caption_min": float(base["caption_B_star"].min()),
            "baselines": list(base["batch_size"])}
    return per_b, info


def _ratio_se(m: pd.DataFrame) -> tuple[dict[int, tuple[float, float]], float | None, str]:
    """Per B: mean log(G/N) over seeds and its SE (seed SD pooled over B; with one seed per B,
    the window's block SE of N/G, i.e. within-run noise only)."""
    ok = m[np.isfinite(m["log_G_over_N"])]
    sd, dof = pooled_sd([g["log_G_over_N"].to_numpy() for _, g in ok.groupby("batch_size")])
    out = {}
    for b, g in ok.groupby("batch_size"):
        if dof:
            out[int(b)] = (float(g["log_G_over_N"].mean()), sd / math.sqrt(len(g)))
        else:  # se of log(N/G) = se(N/G) / (N/G)
            rel = (g["N_over_G_se"] * g["G"] / g["N"]).to_numpy()
            out[int(b)] = (float(g["log_G_over_N"].mean()), float(np.sqrt((rel ** 2).sum()))
                           / len(g))
    how = (f"seed SD of log(G/N) pooled over B ({dof} df)" if dof else
           "one seed per B: within-run block SE of N/G only")
    return out, (dof or None), how


def claims(df: pd.DataFrame, C: float = C_DEFAULT) -> list[Claim]:
    per_b, info = summary(df, C)
    m = _per_run(df)
    seeds_text = ", ".join(str(s) for s in sorted(df["seed"].unique()))

    # G/N grows with B: the fraction of consecutive increases of the per-B mean log(G/N).
    ratios, dof, how = _ratio_se(m)
    bs = sorted(ratios)
    frac = increase_fraction([ratios[b][0] for b in bs])
    frac_interval = increase_fraction_interval([ratios[b] for b in bs], dof,
                                               f"95 % interval; {how}")
    out = [check("Fig 3: G_t/N_t increases with B (fraction of consecutive increases)",
                 "monotone in B", frac, ">=", GN_INCREASING, interval=frac_interval,
                 seeds=seeds_text)]

    # Thm 5.6: observed failure B vs B* from the smallest-B runs. Both ends are uncertain: the
    # failure B moves when the per-B test errors move within their seed noise, B* with G/N.
    # No failure up to the largest B: the failure lies beyond it, so the row shows the lower
    # bound log2(max B / B*) (when B* < max B), with an interval open above.
    obs, pred = info["observed_failure_B"], info["predicted_min"]
    beyond = float(per_b["batch_size"].max())
    if not pred > 0:
        measured = math.nan
    elif obs is not None:
        measured = abs(math.log2(obs / pred))
    else:
        measured = math.log2(beyond / pred) if beyond > pred else math.nan
    interval = _prediction_interval(m, per_b, info, C, ratios, dof, how, beyond)
    shown = obs if obs is not None else f"> {beyond:.0f}"
    out.append(check(
        f"Fig 3 / Thm 5.6: |log2(observed LSR failure B ({shown}) ÷ B*)|, B* = B·C²(1 + N/G) "
        f"predicted from the smallest-B run ({pred:.0f}; the caption's C²·B·N/G gives "
        f"{info['caption_min']:.0f}); ≤ 1 means within a factor 2",
        "prediction close to observed failure", measured, "<=", PREDICTION_LOG2,
        interval=interval, unit=" (|log2 ratio|)", seeds=seeds_text))
    return out + eq11_claims(df)


def _prediction_interval(m, per_b, info, C, ratios, dof, how, beyond) -> Interval:
    trained = per_b[per_b["test_error"].notna()]
    if not len(trained):
        return Interval(math.nan, math.nan, "every run diverged")
    err, e_dof, e_how = group_means(m.assign(final_test_acc=m["test_error"]),
                                    {int(b): {"batch_size": b} for b in trained["batch_size"]})
    bs = np.array(sorted(err), dtype=float)
    diverged = set(info["diverged_B"])
    base = [int(b) for b in info["baselines"] if int(b) in ratios]
    rng = np.random.default_rng(0)
    draws = 20_000

    def t(dfree, size):
        return rng.standard_t(dfree, size) if dfree else rng.standard_normal(size)

    e = np.stack([err[int(b)][0] + err[int(b)][1] * t(e_dof, draws) for b in bs], axis=1)
    first = lsr_failure_batches(bs, e, FAILURE_FACTOR, none=beyond, diverged=diverged)
    preds = np.stack([b * C ** 2 * (1 + np.exp(-(ratios[b][0] + ratios[b][1] * t(dof, draws))))
                      for b in base], axis=1).min(axis=1)
    stat = np.abs(np.log2(first / preds))
    lo, hi = np.quantile(stat, [0.025, 0.975])
    text = f"95 % interval; test errors: {e_how}; G/N: {how}"
    if info["observed_failure_B"] is None:
        return Interval(float(lo), math.inf, text + f"; no failure up to B = {beyond:.0f}: "
                        "a lower bound")
    return Interval(float(lo), float(hi), text)
