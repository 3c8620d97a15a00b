"""Equilibrium statistics of a run (Sec. 5): the constant-LR window and the norm identity.

At equilibrium of SGD on a scale-invariant net, eq. (11): (2 − ηλ) λ R = η (G + N) = η E|g|²,
with η the per-step LR (η/l for SVAG, whose E|g|² = G + l·N: (2 − ηλ/l) λ R = η (G/l + N),
giving eq. (12), 2λR = ηN, as l → ∞).
"""

from __future__ import annotations

import math

import pandas as pd

from .config import RunConfig
from .models import is_scale_invariant


def eq11_applies(config: RunConfig) -> bool:
    """Eq. (11) needs ⟨x, ∇L(x)⟩ = 0 (a scale-invariant net: no ResNet control, no net without
    normalization) and a phase of constant η and λ to reach equilibrium in (a step schedule
    before its first decay; not the triangle or cosine schedules)."""
    if not is_scale_invariant(config.arch) or config.norm == "none":
        return False
    if config.schedule not in ("constant", "step"):
        return False
    first_lr_decay = min(config.milestones) if config.milestones else math.inf
    return not config.wd_milestones or min(config.wd_milestones) >= first_lr_decay


def first_decay_step(config: RunConfig) -> float:
    """Base step of the first LR decay (the end of the constant-LR phase), or the run's end."""
    if config.schedule == "step" and config.milestones:
        unit = config.steps_per_epoch if config.schedule_unit == "epoch" else 1
        return min(config.milestones[0] * unit, config.base_steps)
    return float(config.base_steps)


def constant_lr_window(history: pd.DataFrame, config: RunConfig,
                       start_frac: float = 0.5) -> pd.DataFrame:
    """History rows in the second part of the constant-LR phase: effective step in
    (start_frac · T_decay, T_decay], where the authors measure G_t, N_t (epochs 200–250)."""
    if not 0 <= start_frac < 1:
        raise ValueError(f"start_frac={start_frac!r} is not allowed; use a value in [0, 1)")
    end = first_decay_step(config)
    steps = history["effective_step"]
    return history[(steps > start_frac * end) & (steps <= end)]


def equilibrium_stats(history: pd.DataFrame, config: RunConfig, start_frac: float = 0.5) -> dict:
    """Window means of G, N, R, E|g|², and eq. (11)'s two sides with their relative gap (NaN
    where eq. 11 does not apply, see :func:`eq11_applies`)."""
    w = constant_lr_window(history, config, start_frac)
    if w.empty:
        raise ValueError("the constant-LR window has no history rows; log more often")
    eta, lam, l = config.step_lr, config.wd, config.l_eff
    R, gsq = w["R"].mean(), w["grad_sq"].mean()
    G, N = w["G"].mean(), w["N"].mean()
    lhs = (2 - eta * lam) * lam * R
    # E|g|² = G + l·N (SVAG's gradient has covariance l·Σ_B); with G, N from the online
    # estimator this checks the estimator, with the measured |g|² it checks stationarity only.
    estimated = not (math.isnan(G) or math.isnan(N))
    rhs = eta * (G + l * N) if estimated else eta * gsq
    nan = float("nan")
    if not eq11_applies(config):
        lhs = rhs = nan
    return {
        "G": G, "N": N, "R": R, "grad_sq": gsq,
        "nsr": N / G if estimated and G else nan,
        "eq11_lhs": lhs, "eq11_rhs": rhs, "eq11_uses_estimator": estimated,
        "eq11_rel_err": abs(lhs - rhs) / abs(rhs) if rhs != 0 else nan,
        "R_drift": (w["R"].iloc[-1] - w["R"].iloc[0]) / R if len(w) > 1 else float("nan"),
        "rows": len(w),
    }
