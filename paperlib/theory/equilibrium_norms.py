"""Eqs. (10)–(12) and Thm 5.2 on a scale-invariant model: SGD's and the SDE's (SVAG at large l)
equilibrium norm identities, and how far apart the two equilibria are.

The identities themselves are :func:`paperlib.equilibrium.eq11_sides` / ``eq12_sides`` (the ones
the training runs' claims use); G and N come from :func:`paperlib.nsr.online_nsr` and, exactly,
from :func:`paperlib.nsr.per_example_nsr`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .. import seeding
from ..claims import Claim, Interval, check, propagate
from ..equilibrium import eq11_sides, eq12_sides
from ..nsr import online_nsr, per_example_nsr
from ..svag import svag_coefficients
from ..validate import check_int
from .cache import cached
from .settings import DT, EquilibriumSettings, TheorySettings

MAX_REL_GAP = 0.05  # claims: each identity, and the R∞/R̄∞ prediction, within 5 %
MIN_C_MARGIN = 0.0  # Thm 5.2 (ii): C_min − sqrt(1 + G/N) ≥ 0


def normalized_linear_data(s: EquilibriumSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian mixture: K class means μ_k ~ N(0, I), inputs a_i = μ_{y_i} + N(0, I).

    Returns:
        (A ``[n, dim]`` float64, one-hot labels ``[n, K]`` float64), classes balanced.
    """
    g = seeding.generator(s.seed, 50)
    mu = torch.randn(s.classes, s.dim, generator=g, dtype=DT)
    y = torch.arange(s.n) % s.classes
    A = mu[y] + torch.randn(s.n, s.dim, generator=g, dtype=DT)
    return A, torch.nn.functional.one_hot(y, s.classes).to(DT)


def normalized_linear_grads(W: torch.Tensor, A: torch.Tensor, onehot: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """Batch-mean gradients of ℓ(W; a, y) = CE(scale · W a / |W|_F, y), a scale-invariant loss
    (ℓ(cW) = ℓ(W) for c > 0), so the gradient is orthogonal to W (Lemma E.7) and ∝ 1/|W|.

    Args:
        W: weights ``[C, K, dim]`` (C independent chains).
        A: inputs ``[C, m, b, dim]`` (m batches of b examples per chain).
        onehot: labels ``[C, m, b, K]``.
        scale: logit scale > 0.

    Returns:
        ``[C, m, K, dim]``: the mean gradient of each batch.
    """
    nrm = W.flatten(1).norm(dim=1)[:, None, None]  # [C, 1, 1]
    U = W / nrm
    p = torch.softmax(scale * torch.einsum("ckd,cmbd->cmbk", U, A), dim=-1) - onehot
    gU = scale * torch.einsum("cmbk,cmbd->cmkd", p, A) / A.shape[2]  # ∂ℓ/∂U
    gU = gU - (gU * U[:, None]).sum((-2, -1), keepdim=True) * U[:, None]  # project ⟂ U
    return gU / nrm[:, None]


def _exact_gn(W, A, onehot, scale, batch_size):
    """Exact G = |∇L|² and N = Tr Σ₁ / B (with-replacement batches) from all n examples."""
    C, n = W.shape[0], A.shape[0]
    per_ex = normalized_linear_grads(W, A.expand(C, n, A.shape[1])[:, :, None],
                                     onehot.expand(C, n, onehot.shape[1])[:, :, None], scale)
    return per_example_nsr(per_ex.flatten(2), batch_size, without_replacement=False)


def equilibrium_run(s: EquilibriumSettings, batch_size: int, l: int) -> dict:
    """SGD (l = 1: eq. 7) or SVAG (l > 1: eq. 5 with WD, per-step LR η/l) from a common random
    init, C chains side by side, batches drawn i.i.d. with replacement.

    Update: W ← (1 − (η/l)λ)W − (η/l)g with g the minibatch gradient (SGD: the mean of two
    independent half batches of B/2; SVAG: c1 g_γ1 + c2 g_γ2 of two independent batches of B).
    The online (G, N) of every step come from ``paperlib.nsr.online_nsr`` on the two halves
    (SGD) or the two batches (SVAG); N is reported at batch size B. After ``burn_steps`` base
    steps (l× as many actual steps), R = |W|², |g|², G, N are averaged over ``window_steps``
    base steps and over chains.

    Returns:
        dict with R, grad_sq, G, N, G_exact, N_exact (exact G and Tr Σ_B at every
        ``exact_every``-th base step of the window), R_drift = (R_end − R_start)/R, steps, and
        ``chains``: the window means of R, grad_sq, G, N per chain (float64 arrays ``[C]``).
    """
    B = check_int("batch_size", batch_size, 2)
    l = check_int("l", l, 1)
    A, onehot = normalized_linear_data(s)
    C, n = s.chains, s.n
    W = torch.randn(C, s.classes, s.dim, generator=seeding.generator(s.seed, 52), dtype=DT)
    gen = seeding.generator(s.seed, 51, B, l)
    lr = s.eta / l
    c1, c2 = svag_coefficients(l)
    b = B // 2 if l == 1 else B
    burn, window = s.burn_steps * l, s.window_steps * l
    acc = {k: torch.zeros(C, dtype=DT) for k in ("R", "grad_sq", "G", "N", "G_exact", "N_exact")}
    n_exact = 0
    R_start = None
    for k in range(burn + window):
        idx = torch.randint(n, (C, 2, b), generator=gen)
        g12 = normalized_linear_grads(W, A[idx], onehot[idx], s.logit_scale)  # [C, 2, K, dim]
        g = g12.mean(1) if l == 1 else c1 * g12[:, 0] + c2 * g12[:, 1]
        if k >= burn:
            R = W.square().sum((1, 2))
            R_start = R if R_start is None else R_start
            G, N = online_nsr(g12[:, 0].flatten(1), g12[:, 1].flatten(1), b, B)
            acc["R"] += R
            acc["grad_sq"] += g.square().sum((1, 2))
            acc["G"] += G
            acc["N"] += N
            if (k - burn) % (s.exact_every * l) == 0:
                Ge, Ne = _exact_gn(W, A, onehot, s.logit_scale, B)
                acc["G_exact"] += Ge
                acc["N_exact"] += Ne
                n_exact += 1
        W = (1 - lr * s.wd) * W - lr * g
    out = {k: float(v.mean()) / (n_exact if k.endswith("exact") else window)
           for k, v in acc.items()}
    R_end = W.square().sum((1, 2))
    out["R_drift"] = float((R_end - R_start).mean()) / out["R"]
    out["steps"] = burn + window
    out["chains"] = {k: (acc[k] / window).numpy() for k in ("R", "grad_sq", "G", "N")}
    return out


_HUGE = np.finfo(float).max  # an unbounded draw (quantiles of ±inf would give NaN)


def _where_valid(stat, positives, sign: int):
    """``stat`` where every drawn positive quantity (R, G, N, a right-hand side) is > 0 and the
    result is finite, else ``sign``·∞ (+ for a "≤" claim, − for "≥"): with few chains the t
    tail draws such quantities below 0, where the statistic is unbounded, not a number."""
    ok = np.logical_and.reduce([np.asarray(x) > 0 for x in positives]) & np.isfinite(stat)
    return np.where(ok, stat, sign * _HUGE)


def _propagate(statistic, estimates, df, how) -> Interval:
    """``claims.propagate``, with an end made of unbounded draws shown as ±inf."""
    iv = propagate(statistic, estimates, df, how)
    lo, hi = (v if abs(v) < _HUGE / 2 else math.copysign(math.inf, v) for v in (iv.low, iv.high))
    return Interval(lo, hi, iv.how)


def _se(values: np.ndarray) -> float:
    """Standard error of the mean over independent chains (NaN for one chain)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


@cached("equilibrium", "equilibrium")
def equilibrium(S: TheorySettings) -> pd.DataFrame:
    """Eqs. (11) and (12) at equilibrium, for SGD and SVAG (l = ``S.equilibrium.l``) at each B.

    Rows: one per (algorithm, B). Identity columns, all with G, N from the online estimator:
    SGD: lhs = (2 − ηλ)λR, rhs = η(G + N) (eq. 11); SVAG: lhs = 2λR, rhs = ηN (eq. 12, l → ∞),
    and ``rel_err_finite_l`` for the exact finite-l form (2 − ηλ/l)λR = (η/l)(G + lN).
    ``rel_err_grad_sq`` uses the measured E|g|² instead of G + N (only the window's R drift).
    Standard errors over the C independent chains (each chain's window mean is one sample):
    ``R_se``, ``G_se``, ``N_se``, ``lhs_se``, ``rhs_se`` and ``gap_se`` (of lhs − rhs, whose
    per-chain values carry the correlation of the two sides).
    """
    s = S.equilibrium
    rows = []
    for B in s.batch_sizes:
        for algorithm, l in (("sgd", 1), ("svag", s.l)):
            r = equilibrium_run(s, B, l)
            ch = r.pop("chains")
            if algorithm == "sgd":
                lhs, rhs = eq11_sides(r["R"], r["G"] + r["N"], step_lr=s.eta, wd=s.wd)
                lc, rc = eq11_sides(ch["R"], ch["G"] + ch["N"], step_lr=s.eta, wd=s.wd)
                fin = abs(lhs / rhs - 1)
            else:
                lhs, rhs = eq12_sides(r["R"], r["N"], eta=s.eta, wd=s.wd)
                lc, rc = eq12_sides(ch["R"], ch["N"], eta=s.eta, wd=s.wd)
                fl, fr = eq11_sides(r["R"], r["G"] + l * r["N"], step_lr=s.eta / l, wd=s.wd)
                fin = abs(fl / fr - 1)
            gl, gr = eq11_sides(r["R"], r["grad_sq"], step_lr=s.eta / l, wd=s.wd)
            rows.append(dict(algorithm=algorithm, B=B, l=l, eta=s.eta, wd=s.wd, **r, lhs=lhs,
                             rhs=rhs, rel_err=abs(lhs / rhs - 1), rel_err_finite_l=fin,
                             rel_err_grad_sq=abs(gl / gr - 1), R_se=_se(ch["R"]),
                             G_se=_se(ch["G"]), N_se=_se(ch["N"]), lhs_se=_se(lc),
                             rhs_se=_se(rc), gap_se=_se(lc - rc)))
    return pd.DataFrame(rows)


def thm52_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per B: SGD's equilibrium against the SDE's (SVAG at large l), Thm 5.2 / Def. 5.1.

    Columns: G_over_N (SGD's G/N), R_ratio = R∞/R̄∞, G_ratio, N_ratio (ηN∞/N̄∞ in the paper's
    units), R_ratio_pred = 2/(2 − ηλ) · (1 + G/N) · N∞/N̄∞ (eqs. 11 / 12), C_min (the smallest C
    for which the two equilibria are C-close, eq. 8) and bound = sqrt(1 + G/N): Thm 5.2 (ii)
    says C-closeness needs C² ≥ 1 + G∞/N∞, i.e. C_min ≥ bound.
    """
    sgd = df[df.algorithm == "sgd"].set_index("B")
    sde = df[df.algorithm == "svag"].set_index("B")
    out = pd.DataFrame({"G_over_N": sgd.G / sgd.N, "R_ratio": sgd.R / sde.R,
                        "G_ratio": sgd.G / sde.G, "N_ratio": sgd.N / sde.N})
    eta_wd = sgd.eta * sgd.wd
    out["R_ratio_pred"] = 2 / (2 - eta_wd) * (1 + out.G_over_N) * out.N_ratio
    ratios = out[["R_ratio", "G_ratio", "N_ratio"]]
    out["C_min"] = np.maximum(ratios, 1 / ratios).max(axis=1)
    out["bound"] = np.sqrt(1 + out.G_over_N)
    return out.reset_index()


def equilibrium_claims(df: pd.DataFrame, s: EquilibriumSettings) -> list[Claim]:
    """Eq. (11) (SGD) and eq. (12) (SVAG, large l) within MAX_REL_GAP at every B; Thm 5.2 (ii)'s
    bound C_min ≥ sqrt(1 + G/N) at every B; R∞/R̄∞ as eqs. (11)–(12) predict, within MAX_REL_GAP.

    Uncertainty: over the C independent chains (t with C − 1 df), propagated through each
    statistic (``claims.propagate``); a row's lhs − rhs and its rhs are drawn independently, and
    so are the R, G, N of SGD and of SVAG (the chains of the two algorithms share only their
    initialization, forgotten after the burn-in).
    """
    thm = thm52_table(df)
    seeds = f"{s.chains} chains x {s.window_steps} base steps, B = {s.batch_sizes}"
    df_t = s.chains - 1 if s.chains > 1 else None
    alg = {a: d.set_index("B") for a, d in df.groupby("algorithm")}
    Bs = list(alg["sgd"].index)

    def gaps(a: str) -> dict:  # identity a: lhs − rhs and rhs per B, with their SEs
        d = alg[a]
        return {**{f"gap{B}": (d.lhs[B] - d.rhs[B], d.gap_se[B]) for B in Bs},
                **{f"rhs{B}": (d.rhs[B], d.rhs_se[B]) for B in Bs}}

    def worst_rel(**v):
        with np.errstate(all="ignore"):
            stat = np.max([np.abs(v[f"gap{B}"]) / v[f"rhs{B}"] for B in Bs], axis=0)
        return _where_valid(stat, [v[f"rhs{B}"] for B in Bs], 1)

    how_gap = (f"t over {s.chains} chains ({df_t} df) of lhs − rhs and of rhs per B, propagated "
               "to the largest |lhs/rhs − 1|")
    claims = [
        check("Eq. (11), SGD: |(2 − ηλ)λR / η(G + N) − 1|, largest over B", "equality",
              alg["sgd"].rel_err.max(), "<=", MAX_REL_GAP, seeds=seeds,
              interval=_propagate(worst_rel, gaps("sgd"), df_t, how_gap)),
        check(f"Eq. (12), SVAG l = {s.l}: |2λR / ηN − 1|, largest over B", "equality (l → ∞)",
              alg["svag"].rel_err.max(), "<=", MAX_REL_GAP, seeds=seeds,
              interval=_propagate(worst_rel, gaps("svag"), df_t, how_gap)),
    ]

    def c_margin(**v):  # Thm 5.2 (ii): min over B of C_min − sqrt(1 + G/N)
        out = []
        with np.errstate(all="ignore"):
            for B in Bs:
                r = [v[f"{q}_sgd{B}"] / v[f"{q}_sde{B}"] for q in ("R", "G", "N")]
                c_min = np.max([np.maximum(x, 1 / x) for x in r], axis=0)
                out.append(c_min - np.sqrt(1 + v[f"G_sgd{B}"] / v[f"N_sgd{B}"]))
            stat = np.min(out, axis=0)
        return _where_valid(stat, list(v.values()), -1)

    rgn = {f"{q}_{tag}{B}": (alg[a][q][B], alg[a][f"{q}_se"][B])
           for q in ("R", "G", "N") for tag, a in (("sgd", "sgd"), ("sde", "svag")) for B in Bs}
    claims.append(check(
        "Thm 5.2 (ii): C_min − sqrt(1 + G∞/N∞), smallest over B", "C² ≥ 1 + G/N",
        (thm.C_min - thm.bound).min(), ">=", MIN_C_MARGIN, seeds=seeds,
        interval=_propagate(c_margin, rgn, df_t,
                           f"t over {s.chains} chains ({df_t} df) of R, G, N of SGD and SVAG "
                           "per B (drawn independently), propagated")))

    both = {f"{k}_{a}": v for a in ("sgd", "svag") for k, v in gaps(a).items()}

    def pred_dev(**v):  # R_ratio / R_ratio_pred = (lhs/rhs of eq. 11) / (lhs/rhs of eq. 12)
        with np.errstate(all="ignore"):
            ratio = {a: [1 + v[f"gap{B}_{a}"] / v[f"rhs{B}_{a}"] for B in Bs]
                     for a in ("sgd", "svag")}
            stat = np.max([np.abs(x / y - 1) for x, y in zip(ratio["sgd"], ratio["svag"],
                                                              strict=True)], axis=0)
        return _where_valid(stat, [v[k] for k in v if k.startswith("rhs")] + ratio["svag"], 1)

    claims.append(check(
        "R∞/R̄∞ vs eqs. (11)–(12) prediction 2(1 + G/N)N/((2 − ηλ)N̄): max rel. deviation",
        "equality", (thm.R_ratio / thm.R_ratio_pred - 1).abs().max(), "<=", MAX_REL_GAP,
        seeds=seeds,
        interval=_propagate(pred_dev, both, df_t,
                           f"t over {s.chains} chains ({df_t} df): the ratio of the eq. (11) "
                           "and eq. (12) ratios lhs/rhs, propagated")))
    return claims
