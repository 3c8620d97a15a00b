"""Lemma 4.7: the one-step moments of SVAG (eq. 5), exactly, by enumerating every batch pair."""

from __future__ import annotations

import itertools

import pandas as pd
import torch

from .. import seeding
from ..claims import Claim, check, exact
from ..svag import svag_coefficients
from ..validate import check_int
from .cache import cached
from .settings import DT, LemmaSettings, TheorySettings, check_pos

MAX_REL_ERR = 1e-6  # claim: enumeration and formula agree to far better than any modelling error


def _sym3(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3·sym(μ ⊗ Σ) for symmetric Σ: μ_iΣ_jk + μ_jΣ_ik + μ_kΣ_ij (sym = mean over permutations)."""
    return (torch.einsum("i,jk->ijk", mu, sigma) + torch.einsum("j,ik->ijk", mu, sigma)
            + torch.einsum("k,ij->ijk", mu, sigma))


def batch_population(per_example: torch.Tensor, batch_size: int) -> torch.Tensor:
    """All n^B equally likely with-replacement batch gradients, ``[n^B, d]`` (float64)."""
    a = per_example.to(DT)
    idx = torch.tensor(list(itertools.product(range(a.shape[0]), repeat=batch_size)))
    return a[idx].mean(1)


def svag_increment_moments(per_example: torch.Tensor, *, batch_size: int, l: float,
                           eta: float) -> dict[str, torch.Tensor]:
    """Exact moments of the SVAG increment Δ = −(η/l)(c1 g_γ1 + c2 g_γ2) (eq. 5) by enumerating
    every ordered pair (γ1, γ2) of with-replacement batches of ``batch_size`` (all equally likely).

    Args:
        per_example: ``[n, d]`` per-example gradients of a finite data set.
        batch_size: B ≥ 1.
        l: SVAG l ≥ 1.
        eta: η > 0.

    Returns:
        ``{"mean": [d], "second": [d, d], "third": [d, d, d], "eighth": 0-d}`` with
        eighth = E|Δ|⁸ (so sqrt(eighth) = sqrt(E|Δ^{⊗4}|²), Lemma 4.7 (iv)).
    """
    B = check_int("batch_size", batch_size, 1)
    eta = check_pos("eta", eta)
    c1, c2 = svag_coefficients(l)
    g = batch_population(per_example, B)  # [m, d]
    delta = -(eta / l) * (c1 * g[:, None, :] + c2 * g[None, :, :]).reshape(-1, g.shape[1])
    m = len(delta)
    return {
        "mean": delta.mean(0),
        "second": torch.einsum("pi,pj->ij", delta, delta) / m,
        "third": torch.einsum("pi,pj,pk->ijk", delta, delta, delta) / m,
        "eighth": delta.square().sum(1).pow(4).mean(),
    }


def lemma47_formulas(grad: torch.Tensor, sigma: torch.Tensor, lam: torch.Tensor, *, l: float,
                     eta: float, printed: bool = False) -> dict[str, torch.Tensor]:
    """Lemma 4.7 (i)–(iii) with ∇L = ``grad`` [d], Σ = ``sigma`` [d, d] (covariance of one batch
    gradient) and Λ = ``lam`` [d, d, d] (its third central moment).

    (i) E Δ = −(η/l)∇L;  (ii) E ΔΔᵀ = (η²/l)Σ + (η²/l²)∇L∇Lᵀ.
    (iii) exact (``printed=False``), from E(c1ξ1 + c2ξ2)^{⊗3} = (c1³ + c2³)Λ = (3l − 1)/2 · Λ:

        E Δ^{⊗3} = −(η³/l³)[(3l − 1)/2 · Λ + 3l · sym(∇L ⊗ Σ) + ∇L^{⊗3}]          (= O(l⁻²))

    (iii) as printed in the paper (``printed=True``):
    (η³/l²)(3 − l⁻¹)/2 · Λ + (η³/l³)(3 sym(∇L ⊗ Σ) + ∇L^{⊗3}); it has the opposite sign and
    its cross term lacks a factor l (η³/l³ where the exact one is η³/l²).
    """
    eta = check_pos("eta", eta)
    svag_coefficients(l)  # validates l
    outer3 = torch.einsum("i,j,k->ijk", grad, grad, grad)
    if printed:
        third = (eta**3 / l**2 * (3 - 1 / l) / 2 * lam
                 + eta**3 / l**3 * (_sym3(grad, sigma) + outer3))
    else:
        third = -(eta**3 / l**3) * ((3 * l - 1) / 2 * lam + l * _sym3(grad, sigma) + outer3)
    return {
        "mean": -(eta / l) * grad,
        "second": eta**2 / l * sigma + eta**2 / l**2 * torch.outer(grad, grad),
        "third": third,
    }


def lemma47_toy(n: int, d: int, seed: int) -> torch.Tensor:
    """Per-example gradients (a_iᵀx − y_i)a_i of ½(a_iᵀx − y_i)² at a fixed x, ``[n, d]``."""
    g = torch.Generator().manual_seed(seeding.derive_seed(seed, 47))
    A = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT) + 1.0
    x = 0.5 * torch.randn(d, generator=g, dtype=DT)
    return (A @ x - y)[:, None] * A


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@cached("lemma47", "lemma")
def lemma47(S: TheorySettings) -> pd.DataFrame:
    """Lemma 4.7 by exact enumeration (float64) for every B and l of ``S.lemma``.

    Returns:
        One row per (B, l, moment): ``rel_err`` = |enumerated − formula|_F / |formula|_F for
        moments "(i)", "(ii)", "(iii)" (exact form) and "(iii) printed"; ``norm`` = |enumerated|_F
        (for "(iv)": sqrt(E|Δ|⁸), no formula).
    """
    s = S.lemma
    per_ex = lemma47_toy(s.n, s.d, s.seed)
    rows = []
    for B in s.batch_sizes:
        gb = batch_population(per_ex, B)
        grad = gb.mean(0)
        c = gb - grad
        sigma = c.T @ c / len(c)
        lam = torch.einsum("pi,pj,pk->ijk", c, c, c) / len(c)
        for l in s.l_values:
            m = svag_increment_moments(per_ex, batch_size=B, l=l, eta=s.eta)
            exact_ = lemma47_formulas(grad, sigma, lam, l=l, eta=s.eta)
            printed = lemma47_formulas(grad, sigma, lam, l=l, eta=s.eta, printed=True)
            for key, name in (("mean", "(i)"), ("second", "(ii)"), ("third", "(iii)")):
                rows.append(dict(B=B, l=l, moment=name, rel_err=_rel(m[key], exact_[key]),
                                 norm=float(m[key].norm())))
            rows.append(dict(B=B, l=l, moment="(iii) printed",
                             rel_err=_rel(m["third"], printed["third"]),
                             norm=float(m["third"].norm())))
            rows.append(dict(B=B, l=l, moment="(iv)", rel_err=float("nan"),
                             norm=float(m["eighth"].sqrt())))
    return pd.DataFrame(rows)


def lemma47_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The largest relative error over B of each moment's formula, one row per l."""
    worst = df.dropna(subset=["rel_err"]).pivot_table(index="l", columns="moment",
                                                      values="rel_err", aggfunc="max")
    return worst.reset_index()


def lemma47_claims(df: pd.DataFrame, s: LemmaSettings) -> list[Claim]:
    """Each formula against the enumeration: max relative error over B and l ≤ MAX_REL_ERR.
    The printed (iii) is expected to FAIL (its sign and one power of l are off)."""
    lem = df.groupby("moment").rel_err.max()
    n_pairs = "+".join(str(s.n ** (2 * B)) for B in s.batch_sizes)
    seeds = f"exact: {n_pairs} batch pairs x {len(s.l_values)} l"

    def row(text, paper, moment):
        return check(text, paper, lem[moment], "<=", MAX_REL_ERR, seeds=seeds,
                     interval=exact(lem[moment], "exact enumeration in float64: no sampling "
                                                 "noise, rounding only"))

    return [
        row("Lemma 4.7 (i) E Δ = −(η/l)∇L: max rel. error", "exact", "(i)"),
        row("Lemma 4.7 (ii) E ΔΔᵀ: max rel. error", "exact", "(ii)"),
        row("Lemma 4.7 (iii) E Δ⊗3, exact form −(η³/l³)[(3l−1)/2 Λ + 3l sym(∇L⊗Σ) + ∇L⊗3]: "
            "max rel. error", "O(l⁻²)", "(iii)"),
        row("Lemma 4.7 (iii) E Δ⊗3 as printed: max rel. error", "exact (as printed)",
            "(iii) printed"),
    ]
