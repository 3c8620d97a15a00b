"""Claims tables: each row compares a measured value, with its uncertainty, to a threshold.

Every notebook ends with one; rows are computed from data, never typed in. A row carries an
interval for its value (``Interval``: across seeds, within a run, or exact) and a three-way
verdict: PASS when the whole interval lies on the claim's side of the threshold, FAIL when it
lies on the other side, INCONCLUSIVE when it straddles the threshold. A verdict that rests on a
value inside its own noise is INCONCLUSIVE, so it cannot flip between PASS and FAIL when the same
code is rerun (or rerun on another machine) and the value moves within that noise.

Intervals are two-sided at ``LEVEL`` (95 %). Helpers:

- ``exact(v)``: a value without sampling noise (a closed-form or enumerated quantity);
- ``t_interval(mean, se, df)``: a mean with its standard error (Student t with ``df`` degrees of
  freedom; ``df=None`` for a normal interval, e.g. many Monte Carlo samples);
- ``propagate(statistic, estimates, df)``: any function of several means (a difference, an
  absolute gap, max − min, a ratio), by drawing each mean from its sampling distribution with a
  fixed random seed, so re-plotting gives the same interval;
- ``pooled_sd(groups)``: the seed-to-seed standard deviation pooled over groups that share a
  setting (more degrees of freedom than any one group of 2–3 seeds);
- ``increase_fraction(values)`` and ``increase_fraction_interval(estimates, df)``: how
  monotonically a quantity grows along a sweep (Fig 3's G/N with B), with its interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LEVEL = 0.95  # two-sided coverage of every claim's interval
PROPAGATION_DRAWS = 20_000  # Monte Carlo draws in ``propagate`` (interval ends stable to ~1 %)
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


@dataclass(frozen=True)
class Interval:
    """A value's ``LEVEL`` interval [low, high] and how it was obtained (shown in the table)."""

    low: float
    high: float
    how: str

    def __post_init__(self):
        lo, hi = float(self.low), float(self.high)
        if not (math.isnan(lo) or math.isnan(hi)) and lo > hi:
            raise ValueError(f"Interval low={lo} > high={hi}")
        if not self.how:
            raise ValueError("Interval.how must say how the interval was computed")


def exact(value: float, how: str = "exact (no sampling noise)") -> Interval:
    """The degenerate interval of a value computed without sampling noise."""
    return Interval(float(value), float(value), how)


def _quantile(df: float | None) -> float:
    from scipy import stats

    q = 0.5 + LEVEL / 2
    return float(stats.norm.ppf(q) if df is None else stats.t.ppf(q, df))


def t_interval(mean: float, se: float, df: float | None, how: str = "") -> Interval:
    """``mean ± q·se`` with q the ``LEVEL`` quantile of Student t (``df``) or the normal
    (``df=None``). A NaN or infinite ``se`` (one sample) gives an unbounded interval."""
    se = float(se)
    if not math.isfinite(se):
        return Interval(-math.inf, math.inf, how or "no standard error (one sample)")
    if df is not None and df < 1:
        raise ValueError(f"df={df} is not allowed; a t interval needs df ≥ 1")
    q = _quantile(df)
    text = how or (f"mean ± {q:.2f} SE" + ("" if df is None else f" (t, {df:g} df)"))
    return Interval(mean - q * se, mean + q * se, text)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled within-group standard deviation and its degrees of freedom.

    Each group holds replicate values (seeds) of one setting; groups of one value add nothing.
    Returns (NaN, 0) when no group has two values. NaN values (diverged runs) are dropped.
    """
    ss, df = 0.0, 0
    for g in groups:
        v = np.asarray([x for x in g if x == x], dtype=float)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += len(v) - 1
    return (math.sqrt(ss / df), df) if df else (float("nan"), 0)


def propagate(statistic: Callable[..., float], estimates: Mapping[str, tuple[float, float]],
              df: float | None, how: str, seed: int = 0) -> Interval:
    """``LEVEL`` interval of ``statistic(**means)`` when each mean is uncertain.

    Args:
        statistic: a function of the named means, vectorized over numpy arrays (use ``np.abs``,
            ``np.minimum``, ... not the builtins).
        estimates: name → (mean, standard error).
        df: degrees of freedom of the standard errors (t draws), None for normal draws.
        how: shown in the claims table.
    Each mean is drawn as mean + se·T (T ~ t(df) or normal; one independent draw per name) with
    a fixed seed: the interval is a deterministic function of the estimates.
    """
    rng = np.random.default_rng(seed)
    draws = {}
    for name, (m, se) in estimates.items():
        if not math.isfinite(float(se)) or not math.isfinite(float(m)):
            return Interval(-math.inf, math.inf, how + " (a standard error is missing)")
        z = rng.standard_t(df, PROPAGATION_DRAWS) if df is not None else \
            rng.standard_normal(PROPAGATION_DRAWS)
        draws[name] = float(m) + float(se) * z
    values = np.asarray(statistic(**draws), dtype=float)
    lo, hi = np.quantile(values, [0.5 - LEVEL / 2, 0.5 + LEVEL / 2])
    return Interval(float(lo), float(hi), how)


def increase_fraction(values):
    """The fraction of consecutive increases along the last axis of ``values`` (1: strictly
    increasing), e.g. G/N per batch size in increasing B (Fig 3). Vectorized over leading axes
    (one row per Monte Carlo draw); NaN with fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if v.shape[-1] < 2:
        return math.nan if v.ndim == 1 else np.full(v.shape[:-1], math.nan)
    out = np.mean(np.diff(v, axis=-1) > 0, axis=-1)
    return float(out) if v.ndim == 1 else out


def increase_fraction_interval(estimates: Sequence[tuple[float, float]], df: float | None,
                               how: str, transform: Callable | None = None) -> Interval:
    """``LEVEL`` interval of :func:`increase_fraction` of a sweep's values, each drawn from its
    (mean, standard error) in ``estimates`` (in sweep order) as :func:`propagate` draws them.

    ``transform`` maps the drawn estimates to the values whose increase is counted (e.g.
    ``lambda x: 1 / x`` when the estimates are N/G and the claim is about G/N).
    """
    if len(estimates) < 2:
        return Interval(math.nan, math.nan, "fewer than 2 batch sizes")
    names = [f"v{i}" for i in range(len(estimates))]

    def statistic(**v):
        x = np.stack([v[k] for k in names], axis=-1)
        return increase_fraction(x if transform is None else transform(x))

    return propagate(statistic, dict(zip(names, estimates, strict=True)), df, how)


@dataclass(frozen=True)
class Claim:
    claim: str  # the statement, with the paper's equation / theorem / figure
    paper: str  # the paper's value or statement
    measured: float  # the value measured here
    interval: Interval  # its LEVEL interval and how it was computed
    threshold: str  # the test applied, e.g. "≤ 2 points"
    verdict: str  # PASS | FAIL | INCONCLUSIVE
    seeds: str = ""  # the seeds (or sample size) behind the measurement

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"


_OPS = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}


def check(claim: str, paper: str, measured: float, op: str, bound: float, *,
          interval: Interval, unit: str = "", seeds: str = "") -> Claim:
    """A claim ``measured <op> bound`` (op in {"<=", ">=", "<", ">"}) with a three-way verdict.

    PASS when every value of ``interval`` satisfies the claim, FAIL when none does, INCONCLUSIVE
    otherwise. A NaN measurement (no data: e.g. every run diverged) is INCONCLUSIVE as well: the
    claim was not tested. An interval that misses ``measured`` (a Monte Carlo interval of a biased
    statistic such as max − min can) is widened to contain it.

    Raises:
        ValueError: an unknown ``op``.
    """
    if op not in _OPS:
        raise ValueError(f"op={op!r} is not allowed; choose one of {list(_OPS)}")
    m, b = float(measured), float(bound)
    lo, hi = float(interval.low), float(interval.high)
    if not math.isnan(m) and not lo <= m <= hi:
        lo, hi = min(lo, m), max(hi, m)
        interval = Interval(lo, hi, interval.how)
    holds = _OPS[op]
    if math.isnan(m) or math.isnan(lo) or math.isnan(hi):
        verdict = "INCONCLUSIVE"
    elif holds(lo, b) and holds(hi, b):
        verdict = "PASS"
    elif not holds(lo, b) and not holds(hi, b):
        verdict = "FAIL"
    else:
        verdict = "INCONCLUSIVE"
    shown = {"<=": "≤", ">=": "≥"}.get(op, op)
    return Claim(claim, paper, m, interval, f"{shown} {bound:g}{unit}", verdict, seeds)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def claims_table(claims: list[Claim]) -> pd.DataFrame:
    """One row per claim: measured value, its interval and how it was computed, verdict."""
    rows = [{"claim": c.claim, "paper": c.paper, "measured": _fmt(c.measured),
             "interval": f"[{_fmt(c.interval.low)}, {_fmt(c.interval.high)}]",
             "threshold": c.threshold, "verdict": c.verdict, "seeds": c.seeds,
             "uncertainty": c.interval.how} for c in claims]
    return pd.DataFrame(rows, columns=["claim", "paper", "measured", "interval", "threshold",
                                       "verdict", "seeds", "uncertainty"])


def save_claims(table: pd.DataFrame, fig_id: str, fig_dir: str | Path) -> Path:
    """``<fig_dir>/<fig_id>.claims.csv`` (atomic): the README's claims table is built from these."""
    from .files import atomic_write_bytes

    path = Path(fig_dir) / f"{fig_id}.claims.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path
