"""Claims: three-way verdicts from intervals, and the interval helpers against closed forms."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from paperlib.claims import (
    Interval,
    check,
    claims_table,
    exact,
    increase_fraction,
    increase_fraction_interval,
    pooled_sd,
    propagate,
    t_interval,
)
from paperlib.equilibrium import equilibrium_stats


@pytest.mark.parametrize("op,bound,lo,hi,verdict", [
    ("<=", 2.0, 0.5, 1.5, "PASS"), ("<=", 2.0, 2.5, 3.0, "FAIL"), ("<=", 2.0, 1.5, 2.5,
                                                                   "INCONCLUSIVE"),
    (">=", 3.0, 3.2, 4.0, "PASS"), (">=", 3.0, 1.0, 2.9, "FAIL"), (">=", 3.0, 2.9, 3.1,
                                                                   "INCONCLUSIVE"),
    (">", 0.0, 0.0, 1.0, "INCONCLUSIVE"), (">", 0.0, 0.1, 1.0, "PASS"), ("<", 1.0, 1.0, 2.0,
                                                                         "FAIL"),
])
def test_the_verdict_follows_where_the_interval_lies(op, bound, lo, hi, verdict):
    c = check("c", "p", (lo + hi) / 2, op, bound, interval=Interval(lo, hi, "test"))
    assert c.verdict == verdict and c.passed == (verdict == "PASS")


def test_no_data_is_inconclusive_and_bad_input_is_refused():
    nan = float("nan")
    assert check("c", "p", nan, "<=", 1.0, interval=Interval(nan, nan, "none")).verdict == \
        "INCONCLUSIVE"
    with pytest.raises(ValueError, match="op="):
        check("c", "p", 1.0, "==", 1.0, interval=exact(1.0))
    with pytest.raises(ValueError, match="low=2.0 > high=1.0"):
        Interval(2.0, 1.0, "x")
    with pytest.raises(ValueError, match="how"):
        Interval(0.0, 1.0, "")
    with pytest.raises(TypeError):
        check("c", "p", 1.0, "<=", 2.0)  # every claim must carry its uncertainty


def test_an_interval_that_misses_its_value_is_widened_and_exact_values_decide_alone():
    c = check("c", "p", 0.1, "<=", 1.0, interval=Interval(0.3, 0.6, "mc"))
    assert (c.interval.low, c.interval.high) == (0.1, 0.6)
    assert check("c", "p", 1.0, "<=", 1.0, interval=exact(1.0)).verdict == "PASS"
    table = claims_table([c])
    assert list(table.columns) == ["claim", "paper", "measured", "interval", "threshold",
                                   "verdict", "seeds", "uncertainty"]
    assert table["interval"][0] == "[0.1, 0.6]" and table["uncertainty"][0] == "mc"


def test_t_interval_is_the_student_t_interval_and_covers_at_its_level():
    iv = t_interval(1.0, 0.5, 3)
    q = stats.t.ppf(0.975, 3)
    assert iv.low == pytest.approx(1 - q * 0.5) and iv.high == pytest.approx(1 + q * 0.5)
    assert t_interval(0.0, 1.0, None).high == pytest.approx(stats.norm.ppf(0.975))
    assert t_interval(0.0, float("nan"), 3).high == math.inf
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(4000, 3))
    m, se = x.mean(1), x.std(1, ddof=1) / math.sqrt(3)
    covered = np.mean([(iv := t_interval(a, b, 2)).low <= 2.0 <= iv.high
                       for a, b in zip(m, se, strict=True)])
    assert abs(covered - 0.95) < 0.015  # 4000 trials: SE of the coverage 0.0034


def test_pooled_sd_is_the_pooled_within_group_standard_deviation():
    sd, df = pooled_sd([[1.0, 3.0], [10.0, 10.0, 13.0], [7.0], [float("nan"), 4.0]])
    ss = 2.0 + (1 + 1 + 4)  # (1−2)² + (3−2)²; (10−11)² ×2 + (13−11)²
    assert df == 3 and sd == pytest.approx(math.sqrt(ss / 3))
    assert pooled_sd([[1.0], [2.0]]) == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_propagate_matches_the_closed_form_of_a_difference_and_is_deterministic():
    est = {"a": (3.0, 0.3), "b": (1.0, 0.4)}
    iv = propagate(lambda a, b: a - b, est, None, "diff")
    half = stats.norm.ppf(0.975) * 0.5
    assert iv.low == pytest.approx(2.0 - half, rel=0.03)
    assert iv.high == pytest.approx(2.0 + half, rel=0.03)
    assert propagate(lambda a, b: a - b, est, None, "diff") == iv
    wide = propagate(lambda a, b: a - b, est, 2, "t, 2 df")
    assert wide.high - wide.low > 2 * (iv.high - iv.low)  # t(2) tails
    missing = propagate(lambda a, b: a - b, {"a": (1.0, float("nan")), "b": (0.0, 1.0)},
                        None, "x")
    assert (missing.low, missing.high) == (-math.inf, math.inf)


def test_eq11_drift_term_closes_the_identity_off_equilibrium():
    """R_{k+1} = (1 − ηλ)² R_k + η²|g_k|² (a scale-invariant net): far from equilibrium the
    plain eq. (11) gap is large, the gap with the drift term is zero up to the noise of |g|²."""
    rng = np.random.default_rng(0)
    eta, lam, n = 0.1, 5e-3, 1500
    G, N = 2.0, 6.0
    R = [20.0]  # far below the equilibrium η(G + N)/((2 − ηλ)λ) ≈ 80, relaxing towards it
    g_sq = G + N + rng.normal(0, 1.0, n)  # an unbiased, noisy |g|² per step
    for k in range(n - 1):
        R.append((1 - eta * lam) ** 2 * R[-1] + eta ** 2 * g_sq[k])
    h = pd.DataFrame({"effective_step": np.arange(1, n + 1), "lr": eta, "wd": lam,
                      "R": R, "G": G + rng.normal(0, 0.5, n), "N": g_sq - G})
    s = equilibrium_stats(h, end=float(n), start=0.0, start_frac=0.0)
    assert s["eq11_rel_err"] > 0.2  # not at equilibrium: eq. (11) itself does not hold
    assert abs(s["eq11_gap"]) < 4 * s["eq11_gap_se"] + 1e-3
    assert 0 < s["eq11_gap_se"] < 0.01


def test_increase_fraction_and_its_interval():
    """Fig 3 and the monitor notebook count consecutive increases of G/N along B with one rule."""
    assert increase_fraction([1.0, 2.0, 3.0]) == 1.0 and increase_fraction([3.0, 1.0, 2.0]) == 0.5
    assert math.isnan(increase_fraction([1.0]))
    np.testing.assert_array_equal(increase_fraction([[1, 2, 3], [3, 2, 1]]), [1.0, 0.0])
    sure = increase_fraction_interval([(1.0, 1e-6), (2.0, 1e-6), (3.0, 1e-6)], None, "x")
    assert (sure.low, sure.high) == (1.0, 1.0)
    # N/G falls, so G/N = 1 / (N/G) rises
    inv = increase_fraction_interval([(3.0, 1e-6), (2.0, 1e-6)], 4, "x", transform=lambda v: 1 / v)
    assert (inv.low, inv.high) == (1.0, 1.0)
    noisy = increase_fraction_interval([(1.0, 5.0), (1.1, 5.0)], None, "x")
    assert (noisy.low, noisy.high) == (0.0, 1.0)
    assert "fewer than 2" in increase_fraction_interval([(1.0, 0.1)], None, "x").how
