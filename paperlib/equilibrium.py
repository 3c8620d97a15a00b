"""Equilibrium statistics of a run (Sec. 5): the constant-LR window and the norm identity.

At equilibrium of SGD on a scale-invariant net, eq. (11): (2 − ηλ) λ R = η (G + N) = η E|g|²,
with η the per-step LR (η/l for SVAG, whose E|g|² = G + l·N: (2 − ηλ/l) λ R = η (G/l + N),
giving eq. (12), 2λR = ηN, as l → ∞).

Everything here works on a plain history table (the columns of :mod:`paperlib.history`:
``effective_step``, ``lr``, ``wd``, ``R``, ``G``, ``N``, ``grad_sq``; a user's own CSV log with
at least ``effective_step`` (or ``step``), ``lr``, ``G`` and ``N`` will do) plus (η, λ, l).
:func:`run_equilibrium_stats` derives those from a paperlib ``RunConfig``.
"""

from __future__ import annotations

import math

import pandas as pd

from .config import RunConfig
from .models import is_scale_invariant
from .windows import BLOCKS, block_se, block_summary

__all__ = ["constant_lr_end", "constant_lr_phase", "constant_lr_window", "eq11_applies",
           "eq11_sides", "eq12_sides", "equilibrium_stats", "first_decay_step",
           "run_equilibrium_stats"]


def eq11_sides(R, grad_sq, *, step_lr: float, wd: float):
    """Both sides of the equilibrium norm identity (eq. 10 set to zero) at per-step LR η:
    ((2 − ηλ)λR, η E|g|²). SGD (E|g|² = G + N): eq. (11). SVAG (per-step LR η/l, E|g|² = G + lN):
    its exact finite-l form, whose l → ∞ limit is eq. (12) (:func:`eq12_sides`). Works
    elementwise on arrays (one value per chain)."""
    return (2 - step_lr * wd) * wd * R, step_lr * grad_sq


def eq12_sides(R, N, *, eta: float, wd: float):
    """Both sides of eq. (12), the SDE's equilibrium: (2λR̄, ηN̄), N̄ in units of Tr Σ_B."""
    return 2 * wd * R, eta * N


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


def _steps(history: pd.DataFrame) -> pd.Series:
    for column in ("effective_step", "step"):
        if column in history:
            return history[column]
    raise ValueError(f"the history needs an 'effective_step' (or 'step') column, got "
                     f"{list(history.columns)}")


def constant_lr_phase(history: pd.DataFrame) -> tuple[float, float]:
    """The constant-LR phase read from the history itself: the longest stretch of consecutive
    rows with the same logged LR (and λ), as (start, end] in effective steps, ``start`` being
    the step of the row before the stretch (0 when it opens the run). A warm-up, a decay or a
    cosine schedule thus never counts as the phase; a schedule without any constant stretch
    gives a phase of one row.

    Raises:
        ValueError: if the history is empty, has no ``lr`` column, has NaN learning rates, or
            its steps do not increase strictly.
    """
    if history.empty or "lr" not in history:
        raise ValueError("the history needs rows and an 'lr' column to find its constant-LR phase")
    steps = _steps(history).to_numpy(dtype=float)
    if (pd.Series(steps).diff().iloc[1:] <= 0).any():
        raise ValueError("the history's steps do not increase strictly (an appended or merged "
                         "log?): give one run's rows in order")
    lr = history["lr"].to_numpy(dtype=float)
    if pd.isna(lr).any():
        raise ValueError("the history's 'lr' column has NaN values; every row needs its LR")
    wd = history["wd"].to_numpy(dtype=float) if "wd" in history else None
    best, first = (0, 0), 0  # row ranges [first, i] of equal (lr, wd)
    for i in range(1, len(lr) + 1):
        if i == len(lr) or lr[i] != lr[first] or (wd is not None and wd[i] != wd[first]):
            if i - first > best[1] - best[0] + 1:
                best = (first, i - 1)
            first = i
    start = steps[best[0] - 1] if best[0] > 0 else 0.0
    return float(start), float(steps[best[1]])


def constant_lr_end(history: pd.DataFrame) -> float:
    """End of the constant-LR phase (:func:`constant_lr_phase`), in effective steps."""
    return constant_lr_phase(history)[1]


def constant_lr_window(history: pd.DataFrame, end: float | RunConfig,
                       start_frac: float = 0.5, start: float = 0.0) -> pd.DataFrame:
    """History rows in the second part of the constant-LR phase (start, end]: effective step in
    (start + start_frac · (end − start), end], where G_t, N_t are measured (the authors use
    epochs 200–250 of a phase ending at 250, ``start_frac`` = 0.8; see
    :func:`window_start_frac` for the runs' choice).

    Args:
        history: the run's history table.
        end: the end of the constant-LR phase in effective (base) steps, or a ``RunConfig``
            (its first LR decay, :func:`first_decay_step`).
        start_frac: where the window starts, as a fraction of the phase, in [0, 1).
        start: where the phase starts (0: at the beginning of the run).

    Raises:
        ValueError: if ``start_frac`` is outside [0, 1).
    """
    if not 0 <= start_frac < 1:
        raise ValueError(f"start_frac={start_frac!r} is not allowed; use a value in [0, 1)")
    if isinstance(end, RunConfig):
        end = first_decay_step(end)
    steps = _steps(history)
    return history[(steps > start + start_frac * (end - start)) & (steps <= end)]


def _window_errors(w: pd.DataFrame) -> dict:
    """Standard errors of the window means of G, N, R and of N/G over ``BLOCKS`` block means
    of the rows (:func:`paperlib.windows.block_summary`: consecutive rows are correlated)."""
    R = [r if math.isfinite(r) else None for r in w["R"]] if "R" in w else None
    s = block_summary(list(w["G"]), list(w["N"]), R, blocks=BLOCKS)
    return {"G_se": s["G_se"], "N_se": s["N_se"], "N_over_G_se": s["N_over_G_se"],
            "R_se": s["R_se"]}


def equilibrium_stats(history: pd.DataFrame, eta: float | None = None, lam: float | None = None,
                      l: float = 1.0, *, end: float | None = None, start: float | None = None,
                      start_frac: float = 0.5, eq11: bool = True, min_rows: int = 0) -> dict:
    """Window means of G, N, R, E|g|² late in the constant-LR phase, their standard errors, and
    eq. (11)'s two sides with their relative gap.

    Args:
        history: a history table (see the module docstring for the columns).
        eta: the per-step LR η (η/l for SVAG) in the window; default: the ``lr`` column there.
        lam: the weight decay λ in the window; default: the ``wd`` column there (if any).
        l: the SVAG hyperparameter of the run (1 for SGD).
        end, start: the constant-LR phase (start, end] in effective steps (default: the
            history's own, :func:`constant_lr_phase`; ``start`` defaults to 0 when ``end`` is
            given).
        start_frac: the window is (start + start_frac · (end − start), end].
        min_rows: refuse a window with fewer rows that measured both G and N (0: allow
            none, e.g. NGD, whose eq. (11) check then uses the measured |g|²).
        eq11: whether eq. (11) applies (a scale-invariant net; see :func:`eq11_applies`);
            False gives NaN for its columns.

    Returns:
        dict with ``G``, ``N``, ``R``, ``grad_sq``, ``N_over_G`` (means over the window's rows),
        ``G_se``, ``N_se``, ``R_se``, ``N_over_G_se`` (over ``BLOCKS`` block means of the rows),
        ``eq11_lhs``, ``eq11_rhs``, ``eq11_uses_estimator``, ``eq11_rel_err`` (|lhs − rhs| / rhs:
        zero only at equilibrium), ``eq11_gap`` and ``eq11_gap_se`` (the gap with eq. (11)'s
        drift term, exact off equilibrium too, and its standard error; see below), ``R_drift``
        ((last − first R) / mean R), ``rows``, ``rows_G_N`` (rows with both G and N),
        ``window_start``, ``window_end`` (effective steps).

    The drift term: for a scale-invariant net, ⟨x, g⟩ = 0, so each SGD step with weight decay
    gives |x'|² = (1 − ηλ)²|x|² + η²|g|² exactly. Summed over the K steps between the window's
    first and last rows, (2 − ηλ)λ R̄ + ΔR / (ηK) = η · mean |g|², whether or not R has reached
    equilibrium (ΔR = 0 there: eq. (11)). ``eq11_gap`` is (lhs + ΔR/(ηK) − rhs) / rhs; it is zero
    up to the noise of the G + l·N estimate (``eq11_gap_se``, over block means) and to R̄ being
    a mean over logged rows rather than every step.

    Raises:
        ValueError: if the window has no rows or fewer than ``min_rows`` rows with finite G
            and N, or η / λ are not given and not constant in it.
    """
    if end is None:
        start, end = constant_lr_phase(history) if start is None else (start, None)
        if end is None:
            end = constant_lr_end(history)
    start = 0.0 if start is None else start
    w = constant_lr_window(history, end, start_frac, start)
    lo = start + start_frac * (end - start)
    if w.empty:
        raise ValueError(f"the constant-LR window ({lo:g}, {end:g}] has no history rows; log "
                         "more often, train longer at a constant LR, or choose the window")
    both = w["G"].notna() & w["N"].notna()
    if int(both.sum()) < min_rows:
        raise ValueError(f"the constant-LR window ({lo:g}, {end:g}] has {int(both.sum())} "
                         f"row(s) with G and N; at least {min_rows} needed: log more often, train "
                         "longer at a constant LR, or choose the window")
    nan = float("nan")

    def constant(column: str):
        if column not in w:
            return None
        values = w[column].unique()
        if len(values) != 1:
            raise ValueError(f"{column!r} is not constant in the window ({lo:g}, {end:g}]: "
                             "pass it explicitly or choose the window")
        return float(values[0])

    eta = constant("lr") if eta is None else eta
    lam = constant("wd") if lam is None else lam
    R = w["R"].mean() if "R" in w else nan
    gsq = w["grad_sq"].mean() if "grad_sq" in w else nan
    G, N = w["G"].mean(), w["N"].mean()
    if (w["G"].notna() != w["N"].notna()).any():  # a log with G or N on some rows only
        G, N = w.loc[both, "G"].mean(), w.loc[both, "N"].mean()
    estimated = not (math.isnan(G) or math.isnan(N))
    lhs = rhs = nan
    if eq11 and lam is not None and eta is not None:
        # E|g|² = G + l·N (SVAG's gradient has covariance l·Σ_B); with G, N from the online
        # estimator this checks the estimator, with the measured |g|² it checks stationarity.
        lhs, rhs = eq11_sides(R, G + l * N if estimated else gsq, step_lr=eta, wd=lam)
    gap = gap_se = nan
    if eq11 and lam is not None and eta is not None and "R" in w and len(w) > 1:
        steps = _steps(w).to_numpy(dtype=float)
        k = (steps[-1] - steps[0]) * l  # per-step updates between the first and last row
        drift = (w["R"].iloc[-1] - w["R"].iloc[0]) / (eta * k) if k > 0 else nan
        noise = w.loc[both, "G"] + l * w.loc[both, "N"] if estimated else w["grad_sq"] \
            if "grad_sq" in w else pd.Series(dtype=float)
        if rhs and rhs == rhs:
            gap = (lhs + drift - rhs) / rhs
            gap_se = (lhs + drift) / rhs * eta * block_se(noise, BLOCKS) / rhs
    return {
        "G": G, "N": N, "R": R, "grad_sq": gsq,
        "N_over_G": N / G if estimated and G else nan,
        **_window_errors(w[both]),
        "eq11_lhs": lhs, "eq11_rhs": rhs, "eq11_uses_estimator": estimated,
        "eq11_rel_err": abs(lhs - rhs) / abs(rhs) if rhs != 0 else nan,
        "eq11_gap": gap, "eq11_gap_se": abs(gap_se),
        "R_drift": (w["R"].iloc[-1] - w["R"].iloc[0]) / R if len(w) > 1 and "R" in w else nan,
        "rows": len(w), "rows_G_N": int(both.sum()),
        "window_start": lo, "window_end": end,
    }


AUTHORS_WINDOW_EPOCHS = 50.0  # the authors average G_t, N_t over epochs 200–250 (phase ends 250)


def window_start_frac(config: RunConfig) -> float:
    """Where a run's G/N window starts, as a fraction of its constant-LR phase: the last
    ``AUTHORS_WINDOW_EPOCHS`` epochs, as the authors do (epochs 200–250 of the `paper` Fig 3
    runs), or the second half of a phase shorter than twice that (every `cpu` run: a half keeps
    enough logged rows for the block standard errors) or counted in steps (Fig 1's schedule,
    whose large-B runs span hundreds of epochs)."""
    if config.schedule_unit != "epoch":
        return 0.5
    end = first_decay_step(config)
    window = AUTHORS_WINDOW_EPOCHS * config.steps_per_epoch
    return max(0.5, 1 - window / end) if end > 0 else 0.5


def run_equilibrium_stats(history: pd.DataFrame, config: RunConfig,
                          start_frac: float | None = None, min_rows: int = 0) -> dict:
    """:func:`equilibrium_stats` with (η, λ, l), the window (:func:`window_start_frac` unless
    ``start_frac`` is given) and eq. (11)'s applicability taken from a paperlib run's config
    (η is the per-step LR η/l for SVAG)."""
    if start_frac is None:
        start_frac = window_start_frac(config)
    return equilibrium_stats(history, config.step_lr, config.wd, config.l_eff,
                             end=first_decay_step(config), start_frac=start_frac,
                             eq11=eq11_applies(config), min_rows=min_rows)
