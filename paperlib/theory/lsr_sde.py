"""App. B.1: on a linear loss with x-independent skewed noise the LSR holds exactly (every pair
(κB, κη) gives one distribution of x_T) while the Itô SDE (2), a Gaussian, does not."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .. import seeding
from ..claims import Claim, check, exact, propagate
from ..svag import svag_coefficients
from .cache import cached
from .settings import LSRSettings, TheorySettings, n_steps

LSR_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
K3_GROUPS = 100  # κ3's standard error from this many disjoint sub-samples (K3_GROUPS − 1 df)
# Claims. Same distribution for every LSR pair: no KS test rejects at SAME_KS_P and no pair's
# κ3 differs from κ = 1's by more than SAME_K3_Z standard errors. The SDE differs: its
# Gaussian is rejected at SDE_KS_P and every pair's κ3 is SDE_K3_Z standard errors from its 0.
SAME_KS_P, SAME_K3_Z, SDE_KS_P, SDE_K3_Z = 1e-3, 4.0, 1e-6, 10.0


def lsr_samples(s: LSRSettings, *, kappa: int = 1, l: int = 1, seed: int = 0) -> np.ndarray:
    """x_T (x_0 = 0) for L_γ(x) = (μ + γ)x with γ centered Exp(1), i.e. gradient μ plus
    x-independent skewed noise: SVAG (eq. 5; l = 1 is SGD) with batch size κB and LR κη."""
    B, eta = kappa * s.batch_size, kappa * s.eta
    c1, c2 = svag_coefficients(l)
    rng = np.random.default_rng(seeding.derive_seed(seed, 61, kappa, l))
    x = np.zeros(s.paths)
    for _ in range(n_steps(s.T, eta / l)):
        g = rng.exponential(size=(2 if l > 1 else 1, s.paths, B)).mean(2) - 1
        noise = g[0] if l == 1 else c1 * g[0] + c2 * g[1]
        x -= eta / l * (s.drift + noise)
    return x


def lsr_exact_k3(s: LSRSettings, l: int = 1) -> float:
    """Exact third cumulant of x_T: −(η/B)² T (3l − 1)/l² (κ3 of a centered Exp(1) is 2; at
    l = 1, −2T(η/B)², the same for every LSR pair (κB, κη)); the Itô SDE has 0."""
    return -((s.eta / s.batch_size) ** 2) * s.T * (3 * l - 1) / l**2


def k3_se(x: np.ndarray, groups: int = K3_GROUPS) -> float:
    """Standard error of the k-statistic k3 from ``groups`` disjoint sub-samples."""
    parts = np.array_split(x, groups)
    return float(np.std([stats.kstat(p, 3) for p in parts], ddof=1) / math.sqrt(groups))


@cached("lsr-sde", "lsr")
def lsr_vs_sde(S: TheorySettings) -> pd.DataFrame:
    """App. B.1: LSR pairs (κB, κη) and SVAG (l) at the base (B, η), against the Itô SDE
    X_T ~ N(−μT, Tη/B) (exact: the noise does not depend on x, the drift is constant).

    Rows: kind "sgd" (one per κ), "svag" (one per l), "sde" (exact Gaussian). Columns: kappa, l,
    mean, var, k3 (k-statistic) with k3_se, k3_exact, ks_p_base (two-sample KS p-value against the
    κ = 1 SGD run), ks_p_sde (one-sample KS p-value against the SDE), and the quantiles
    ``q<level>`` at ``LSR_LEVELS``.
    """
    s = S.lsr
    sde = stats.norm(loc=-s.drift * s.T, scale=math.sqrt(s.T * s.eta / s.batch_size))
    base = None
    rows = []
    runs = [("sgd", k, 1) for k in s.kappas] + [("svag", 1, l) for l in s.l_values]
    for kind, kappa, l in runs:
        x = lsr_samples(s, kappa=kappa, l=l, seed=s.seed + len(rows))
        if kind == "sgd" and kappa == 1:
            base = x
        row = dict(kind=kind, kappa=kappa, l=l, mean=x.mean(), var=x.var(ddof=1),
                   k3=stats.kstat(x, 3), k3_se=k3_se(x), k3_exact=lsr_exact_k3(s, l),
                   ks_p_base=(stats.ks_2samp(x, base).pvalue
                              if base is not None and x is not base else np.nan),
                   ks_p_sde=stats.kstest(x, sde.cdf).pvalue)
        row.update({f"q{q:g}": v for q, v in zip(LSR_LEVELS, np.quantile(x, LSR_LEVELS),
                                                 strict=True)})
        rows.append(row)
    row = dict(kind="sde", kappa=1, l=np.inf, mean=sde.mean(), var=sde.var(), k3=0.0,
               k3_se=0.0, k3_exact=0.0, ks_p_base=np.nan, ks_p_sde=np.nan)
    row.update({f"q{q:g}": sde.ppf(q) for q in LSR_LEVELS})
    rows.append(row)
    return pd.DataFrame(rows)


def lsr_summary(df: pd.DataFrame) -> dict[str, float]:
    """Statistics behind App. B.1's claims, from :func:`lsr_vs_sde`'s frame.

    Returns:
        ``pairs_min_ks_p``: smallest two-sample KS p-value of an LSR pair (κ > 1) against κ = 1;
        ``pairs_max_k3_z``: largest |κ3(κ) − κ3(1)| / SE among the pairs;
        ``sde_max_ks_p``: largest KS p-value of an LSR pair against the SDE's Gaussian;
        ``sde_min_k3_z``: smallest |κ3| / SE of an LSR pair (the SDE has κ3 = 0).
    """
    sgd = df[df.kind == "sgd"]
    base = sgd[sgd.kappa == 1].iloc[0]
    pairs = sgd[sgd.kappa != 1]
    z = (pairs.k3 - base.k3).abs() / np.sqrt(pairs.k3_se**2 + base.k3_se**2)
    return {"pairs_min_ks_p": float(pairs.ks_p_base.min()), "pairs_max_k3_z": float(z.max()),
            "sde_max_ks_p": float(sgd.ks_p_sde.max()),
            "sde_min_k3_z": float((sgd.k3.abs() / sgd.k3_se).min())}


def lsr_claims(df: pd.DataFrame, s: LSRSettings) -> list[Claim]:
    """App. B.1's four claims (see the constants above) with their uncertainty.

    A KS p-value is already the test's account of sampling noise: its interval is the value
    itself, and under "one distribution" a rerun's p is uniform, so a PASS of ``p ≥ SAME_KS_P``
    flips by chance with probability SAME_KS_P per pair. A |Δκ3| / SE statistic is a
    standardized estimate: each κ3 is drawn as k3 + SE·T (T ~ t with K3_GROUPS − 1 df, the
    sub-sample SE's) and the statistic's interval propagated (``claims.propagate``), the base
    run's κ3 shared by every pair's difference.
    """
    b1 = lsr_summary(df)
    seeds = f"{s.paths} samples/run, κ = {s.kappas}"
    sgd = df[df.kind == "sgd"].set_index("kappa")
    pairs = [k for k in sgd.index if k != 1]
    k3 = {f"k{k}": (sgd.k3[k], sgd.k3_se[k]) for k in sgd.index}
    df_t = K3_GROUPS - 1

    def max_pair_z(**v):
        return np.max([np.abs(v[f"k{k}"] - v["k1"])
                       / math.hypot(sgd.k3_se[k], sgd.k3_se[1]) for k in pairs], axis=0)

    def min_sde_z(**v):
        return np.min([np.abs(v[f"k{k}"]) / sgd.k3_se[k] for k in sgd.index], axis=0)

    how_p = ("a KS p-value: the test's own account of sampling noise (a rerun draws a new p; "
             "uniform when the distributions agree)")
    how_z = (f"each κ3 drawn as k3 + SE·t({df_t}) (SE from {K3_GROUPS} sub-samples), the "
             "statistic propagated")
    return [
        check("App. B.1: LSR pairs vs κ = 1, smallest two-sample KS p-value", "same distribution",
              b1["pairs_min_ks_p"], ">=", SAME_KS_P, seeds=seeds,
              interval=exact(b1["pairs_min_ks_p"], how_p)),
        check("App. B.1: LSR pairs vs κ = 1, largest |Δκ3| / SE", "same distribution",
              b1["pairs_max_k3_z"], "<=", SAME_K3_Z, seeds=seeds,
              interval=propagate(max_pair_z, k3, df_t, how_z)),
        check("App. B.1: LSR pairs vs Itô SDE Gaussian, largest KS p-value", "SDE differs",
              b1["sde_max_ks_p"], "<=", SDE_KS_P, seeds=seeds,
              interval=exact(b1["sde_max_ks_p"], how_p)),
        check("App. B.1: LSR pairs' |κ3| / SE (SDE: κ3 = 0), smallest", "SDE differs",
              b1["sde_min_k3_z"], ">=", SDE_K3_Z, seeds=seeds,
              interval=propagate(min_sde_z, k3, df_t, how_z)),
    ]
