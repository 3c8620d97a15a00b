"""Theorems 5.5 / 5.6: critical κ, predicted critical batch, the LSI-failure certificate, and the
Fig 3 red region."""

import math

import pytest

from paperlib.lsr import (
    critical_kappa,
    lsi_failure_certificate,
    lsi_threshold,
    lsr_failure_batch,
    lsr_failure_batches,
    predict_critical_batch,
    predict_critical_batch_approx,
)


def test_closed_form_values():
    assert critical_kappa(1.0, 3.0) == pytest.approx(8.0, rel=1e-12)  # C² = 2
    assert critical_kappa(2.0, 0.0) == pytest.approx(2.0, rel=1e-12)  # κ* ≥ C² always
    assert critical_kappa(1.0, 1.0, C=3.0) == pytest.approx(18.0, rel=1e-12)
    assert predict_critical_batch(1.0, 3.0, 128) == pytest.approx(1024.0, rel=1e-12)
    assert predict_critical_batch_approx(1.0, 3.0, 128) == pytest.approx(768.0, rel=1e-12)
    # exact minus approx is C²·B
    assert predict_critical_batch(0.3, 7.0, 64) - predict_critical_batch_approx(
        0.3, 7.0, 64
    ) == pytest.approx(2 * 64, rel=1e-12)
    # the approximation is close when N/G ≫ 1
    assert predict_critical_batch_approx(1.0, 1e4, 8) / predict_critical_batch(
        1.0, 1e4, 8
    ) == pytest.approx(1.0, abs=2e-4)


def test_monotonicity():
    ns = [0.0, 0.5, 1.0, 4.0, 100.0]
    ks = [critical_kappa(1.0, n) for n in ns]
    assert all(b > a for a, b in zip(ks, ks[1:], strict=False))
    gs = [0.1, 0.5, 1.0, 10.0]
    ks = [critical_kappa(g, 2.0) for g in gs]
    assert all(b < a for a, b in zip(ks, ks[1:], strict=False))
    cs = [1.1, math.sqrt(2), 2.0, 3.0]
    ks = [critical_kappa(1.0, 2.0, C=c) for c in cs]
    assert all(b > a for a, b in zip(ks, ks[1:], strict=False))
    bs = [predict_critical_batch(1.0, 2.0, b) for b in (2, 4, 8)]
    assert bs == pytest.approx([12.0, 24.0, 48.0])


def test_certificate_boundary():
    # κ = 8, C² = 2: threshold (1 − 1/8)/(2 − 1) − 1/8 = 0.75, i.e. (κ − C²)/(κ(C² − 1))
    assert lsi_threshold(8.0) == pytest.approx(0.75, rel=1e-12)
    assert lsi_threshold(10.0, C=2.0) == pytest.approx((10 - 4) / (10 * 3), rel=1e-12)
    assert lsi_failure_certificate(1.0, 0.75 - 1e-9, 8.0) is True
    assert lsi_failure_certificate(1.0, 0.75 + 1e-9, 8.0) is False
    assert lsi_failure_certificate(2.0, 1.4, 8.0) is True  # ratio 0.7
    assert lsi_failure_certificate(1.0, 0.0, 2.5) is True
    # the threshold grows with κ towards 1/(C² − 1) and is positive only for κ > C²
    ts = [lsi_threshold(k) for k in (2.5, 4, 16, 1e6)]
    assert all(b > a > 0 for a, b in zip(ts, ts[1:], strict=False))
    assert ts[-1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: critical_kappa(0.0, 1.0), "G"),
        (lambda: critical_kappa(-1.0, 1.0), "G"),
        (lambda: critical_kappa(1.0, -0.1), "N"),
        (lambda: critical_kappa(1.0, 1.0, C=1.0), "C must be > 1"),
        (lambda: critical_kappa(float("nan"), 1.0), "finite"),
        (lambda: critical_kappa("a", 1.0), "real number"),
        (lambda: predict_critical_batch(1.0, 1.0, 0), "batch_size"),
        (lambda: predict_critical_batch_approx(1.0, 1.0, -4), "batch_size"),
        (lambda: lsi_failure_certificate(1.0, 0.1, 1.0), "kappa must be > 1"),
        (lambda: lsi_failure_certificate(1.0, 0.1, 2.0), "C < sqrt\\(kappa\\)"),
        (lambda: lsi_failure_certificate(1.0, 0.1, 3.0, C=2.0), "C < sqrt\\(kappa\\)"),
        (lambda: lsi_failure_certificate(1.0, 0.1, 8.0, C=0.5), "C must be > 1"),
        (lambda: lsi_failure_certificate(0.0, 0.1, 8.0), "G"),
        (lambda: lsi_failure_certificate(1.0, -0.1, 8.0), "N"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_lsr_failure_batch():
    bs = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    errs = [8.0, 7.5, 7.2, 7.0, 7.1, 7.3, 7.6, 8.0, 8.3, 9.5, 14.0]
    assert lsr_failure_batch(bs, errs) == 1024  # 9.5 > 1.2 · 7.0 = 8.4 ≥ 8.3
    assert lsr_failure_batch(bs, errs, factor=1.15) == 512  # 8.3 > 8.05 ≥ 8.0
    assert lsr_failure_batch(bs, errs, factor=3.0) is None
    # strictly greater: an error of exactly factor × lowest is not a failure
    assert lsr_failure_batch([1, 2], [5.0, 6.0]) is None
    bad_small = [9.0] + errs[1:]
    assert lsr_failure_batch(bs, bad_small) == 2
    assert lsr_failure_batch(bs, bad_small, after_best=True) == 1024


def test_lsr_failure_batches_is_the_scalar_rule_per_draw():
    import numpy as np

    bs = [16, 32, 64, 128, 256]
    rng = np.random.default_rng(0)
    draws = 40 + rng.normal(0, 5, size=(500, len(bs))).cumsum(axis=1) * 0.3
    got = lsr_failure_batches(bs, draws, 1.2)
    want = [lsr_failure_batch(bs, list(row), 1.2) for row in draws]
    assert [None if np.isinf(g) else g for g in got] == want
    assert any(w is None for w in want) and any(w is not None for w in want)
    # a diverged B fails in every draw, also when it has no error (every seed diverged)
    assert set(lsr_failure_batches(bs, draws, 1.2, diverged=[64])) <= {16.0, 32.0, 64.0}
    assert (lsr_failure_batches(bs, draws, 1.2, none=512.0, diverged=[512]) <= 512).all()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([], []), {}, "non-empty"),
        (([1, 2], [0.1]), {}, "equal length"),
        (([2, 2], [0.1, 0.2]), {}, "strictly increasing"),
        (([4, 2], [0.1, 0.2]), {}, "strictly increasing"),
        (([0, 2], [0.1, 0.2]), {}, "batch_size"),
        (([1, 2], [0.1, -0.2]), {}, ">= 0"),
        (([1, 2], [0.1, float("nan")]), {}, "finite"),
        (([1, 2], [0.1, 0.2]), {"factor": 0.9}, "factor"),
    ],
)
def test_lsr_failure_batch_bad_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lsr_failure_batch(*args, **kwargs)
