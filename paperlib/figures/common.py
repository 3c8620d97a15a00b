"""What the figure modules share: preset settings, seed statistics for claims, and the eq. (11)
row that Fig 1, Fig 3 and the sampling appendix all report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..claims import Claim, Interval, check, pooled_sd, propagate
from ..config import RunConfig, preset
from ..constants import PRESETS
from ..equilibrium import eq11_applies
from ..sweeps import equilibrium_table, given
from ..validate import check_choice

EQ11_MAX_GAP = 0.05  # eq. (11): relative gap between its two sides, pooled over the runs


def base_config(preset_name: str, settings: dict[str, dict], **overrides) -> RunConfig:
    """The preset's RunConfig with the figure's settings for that preset and the caller's
    overrides (None: keep the preset's value).

    Raises:
        ValueError: an unknown preset name.
    """
    check_choice("preset", preset_name, PRESETS)
    return preset(preset_name, **{**settings[preset_name], **given(**overrides)})


def cadence(base: RunConfig, batch_size: int, keep: str) -> dict[str, int]:
    """``log_every`` and ``eval_every`` (steps) of a run at ``batch_size`` in a sweep over B
    whose preset logs every ``base.log_every`` and evaluates every ``base.eval_every`` steps.

    A log at least once per epoch: ``log_every`` = min(preset's, steps per epoch), ≥ 1. The
    evaluation is a whole number of logs; ``keep`` says which of the preset's numbers it keeps
    when the log interval shrinks (large B):

    * ``"ratio"`` (Fig 3's LSR sweep): the preset's logs per evaluation, so an epoch-length run
      at any B evaluates as often per logged window;
    * ``"interval"`` (Fig 4's SVAG panels): about the preset's evaluation interval in steps.

    Raises:
        ValueError: ``keep`` is neither.
    """
    check_choice("keep", keep, ("ratio", "interval"))
    log = max(1, min(base.log_every, base.train_size // int(batch_size)))
    per_eval = base.eval_every // (base.log_every if keep == "ratio" else log)
    return {"log_every": log, "eval_every": log * max(1, per_eval)}


def check_seeds(values) -> tuple[int, ...]:
    values = tuple(int(s) for s in values)
    if not values or any(s < 0 for s in values):
        raise ValueError(f"seeds={values!r} is not allowed; give one or more non-negative ints")
    return values


def select(frame: pd.DataFrame, **where) -> pd.DataFrame:
    for k, v in where.items():
        frame = frame[frame[k] == v]
    return frame


def spread(final: pd.DataFrame, **where) -> str:
    """The per-seed final test accuracies of one group, as text for the claims table."""
    sel = select(final, **where)
    return ", ".join(f"{a:.1f}" for a in sel.sort_values("seed")["final_test_acc"])


def group_means(final: pd.DataFrame, groups: dict[str, dict], value: str = "final_test_acc",
                pool: pd.DataFrame | None = None
                ) -> tuple[dict[str, tuple[float, float]], float | None, str]:
    """Mean and standard error of ``value`` per named group of runs (``groups``: name → column
    filters), for :func:`paperlib.claims.propagate`.

    Seed-to-seed noise is estimated once for the whole figure: the standard deviation pooled
    over every group of runs that differ only by seed (all of ``pool``, default ``final``,
    grouped by its settings), which has more degrees of freedom than any single group of 2–3
    seeds; it assumes the seed noise is alike across the figure's settings. Where no setting has
    two seeds, the only noise measurable is within a run (the spread of the late evaluations,
    ``final_test_acc_sd``); that interval misses seed-to-seed variation and says so.

    Returns:
        ({name: (mean, se)}, degrees of freedom (None: normal), how the SEs were computed).
    """
    pool = final if pool is None else pool
    settings = [c for c in ("algo", "l", "batch_size", "lr", "wd", "sampler", "arch", "width",
                            "norm", "resolution", "subset") if c in pool]
    replicates = [g[value].to_numpy(dtype=float) for _, g in pool.groupby(settings, dropna=False)]
    sd, df = pooled_sd(replicates)
    out = {}
    for name, where in groups.items():
        sel = select(final, **where)[value].dropna()
        n = len(sel)
        if n == 0:
            out[name] = (math.nan, math.nan)
        elif df:
            out[name] = (float(sel.mean()), sd / math.sqrt(n))
        else:  # one seed everywhere: evaluation noise only
            within = select(final, **where)
            if "final_test_acc_sd" not in within:
                out[name] = (float(sel.mean()), math.nan)
                continue
            # one evaluation in the window (or a diverged run) leaves the noise unknown: NaN
            se = (within["final_test_acc_sd"] / np.sqrt(within["final_evals"].clip(lower=1)))
            out[name] = (float(sel.mean()), float(np.sqrt((se ** 2).sum(skipna=False))) / n)
    how = (f"seed SD pooled over {len(replicates)} settings ({df} df)" if df else
           "one seed per setting: within-run evaluation noise only (seed-to-seed spread not "
           "measured)")
    return out, (df or None), how


def interval_of(statistic, estimates, df, how) -> Interval:
    """:func:`paperlib.claims.propagate` at the claims' level, with ``how`` completed."""
    return propagate(statistic, estimates, df, f"95 % interval; {how}")


def eq11_claims(df: pd.DataFrame, algo: str = "sgd") -> list[Claim]:
    """Eq. (11) on every completed ``algo`` run where it applies (``eq11_applies``: no row for
    the ResNet control, nets without normalization, triangle / cosine LR).

    Each run's window gives eq. (11)'s relative gap with the drift term
    (:func:`paperlib.equilibrium.equilibrium_stats`: exact off equilibrium too, so no run is
    filtered out for not having reached equilibrium) and its standard error; the claim is on
    their precision-weighted mean over the runs, whose interval is normal (many block means).
    The rows also report the largest |gap| / SE (a run inconsistent with the identity) and how
    far the runs are from equilibrium (mean |R drift| over the window).
    """
    applies = df[[eq11_applies(c) for c in df["config"]]] if len(df) else df
    eq = equilibrium_table(applies[applies["algo"] == algo]) if len(applies) else None
    if eq is None or not len(eq):
        return []
    eq = eq[np.isfinite(eq["eq11_gap"]) & (eq["eq11_gap_se"] > 0)]
    if not len(eq):
        return [check("Eq. (11): (2 − ηλ)λR + ΔR/(ηK) = η(G + N) over the window (mean relative "
                      "gap)", "identity (exact at equilibrium)", math.nan, "<=", EQ11_MAX_GAP,
                      interval=Interval(math.nan, math.nan, "no run with a measured gap"),
                      unit=" (|gap|)")]
    w = 1 / eq["eq11_gap_se"] ** 2
    mean = float((w * eq["eq11_gap"]).sum() / w.sum())
    se = float(1 / math.sqrt(w.sum()))
    worst = float((eq["eq11_gap"].abs() / eq["eq11_gap_se"]).max())
    interval = propagate(lambda g: np.abs(g), {"g": (mean, se)}, None,
                         "95 % interval of the precision-weighted mean gap (normal; per-run SEs "
                         "over block means of G + N in the window)")
    return [check("Eq. (11): (2 − ηλ)λR + ΔR/(ηK) = η(G + N) over the constant-LR window, "
                  "ΔR/(ηK) the drift term (0 at equilibrium); |mean relative gap| over runs",
                  "identity (exact at equilibrium)", abs(mean), "<=", EQ11_MAX_GAP,
                  interval=interval, unit=" (|gap|)",
                  seeds=f"{len(eq)} {algo} runs; largest |gap|/SE {worst:.2f}; mean |R drift| "
                        f"over the window {eq['R_drift'].abs().mean():.0%}")]
