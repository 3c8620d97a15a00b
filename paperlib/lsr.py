"""When the linear scaling rule (LSR) must fail: Theorems 5.5 and 5.6 of Li, Malladi, Arora (2021).

SGD with batch B and LR η exhibits (C, κ)-Linear Scaling Invariance (Definition 5.4, eq. 13,
defined for 0 < C < sqrt(κ)) if the equilibrium values R_∞, κ·N_∞, G_∞ of the run (κB, κη) are
within a factor C of those of the run (B, η). Here G = |∇L|² and N = Tr Σ_B at the run's own
batch size (see :mod:`paperlib.nsr`); only the ratio N/G enters.

* Thm 5.5 (eq. 14): if N/G measured at (κB, κη) is below (1 − 1/κ)/(C² − 1) − 1/κ, the pair
  does not exhibit (C, κ)-LSI (:func:`lsi_failure_certificate`).
* Thm 5.6 (eq. 15): from a baseline at (B, η) alone, (C, κ)-LSI fails for every
  κ > C²(1 + N/G) (:func:`critical_kappa`); the batch size B·κ at this κ is the predicted critical
  batch size (:func:`predict_critical_batch`), ≈ C²·B·N/G when N/G ≫ 1 (the version used in the
  Fig 3 caption, :func:`predict_critical_batch_approx`).

The paper uses C = sqrt(2) (threshold C² = 2) throughout. Every C here must exceed 1: for
C ≤ 1 the closeness conditions are degenerate (empty for C < 1) and eq. 14 divides by C² − 1.
"""

import math
from collections.abc import Sequence

from paperlib.validate import as_real, check_int

__all__ = [
    "critical_kappa",
    "lsi_failure_certificate",
    "lsi_threshold",
    "lsr_failure_batch",
    "lsr_failure_batches",
    "predict_critical_batch",
    "predict_critical_batch_approx",
    "simple_noise_scale",
]

SQRT2 = math.sqrt(2.0)


def check_c(C: float) -> float:
    """``C`` of Thm 5.6 (the LSR holds while the loss ratio stays below C², the paper's C = √2)
    as a float; ValueError unless it is a real number > 1."""
    c = as_real("C", C)
    if c <= 1.0:
        raise ValueError(f"C must be > 1 (the paper uses sqrt(2)), got {C!r}")
    return c


def _check_gn(G: float, N: float) -> tuple[float, float]:
    g = as_real("G", G)
    n = as_real("N", N)
    if g <= 0.0:
        raise ValueError(f"G = |grad L|^2 must be > 0, got {G!r}")
    if n < 0.0:
        raise ValueError(f"N = Tr Sigma_B must be >= 0, got {N!r}")
    return g, n


def _check_batch(batch_size: float) -> float:
    b = as_real("batch_size", batch_size)
    if b <= 0.0:
        raise ValueError(f"batch_size must be > 0, got {batch_size!r}")
    return b


def critical_kappa(G: float, N: float, C: float = SQRT2) -> float:
    """κ* = C²(1 + N/G): (C, κ)-LSI fails for every κ > κ* (Thm 5.6, eq. 15).

    Since κ* ≥ C², every κ > κ* also satisfies the requirement C < sqrt(κ) of Definition 5.4.

    Args:
        G: equilibrium |∇L|² of the baseline run (B, η), > 0.
        N: equilibrium Tr Σ_B of the baseline run at its batch size B, ≥ 0.
        C: closeness constant, > 1 (paper: sqrt(2)).

    Returns:
        κ* as a float (≥ C²).

    Raises:
        ValueError: if G ≤ 0, N < 0, C ≤ 1, or any value is not finite.
    """
    c = check_c(C)
    g, n = _check_gn(G, N)
    return c * c * (1.0 + n / g)


def predict_critical_batch(G: float, N: float, batch_size: float, C: float = SQRT2) -> float:
    """The critical batch size B* = B · C²(1 + N/G) of Thm 5.6 (eq. 15).

    What the theorem says: scaling B (and η) from the baseline by any κ > κ* = C²(1 + N/G)
    certainly breaks (C, κ)-LSI, i.e. the linear scaling rule fails beyond B*. It is a bound
    from one run, not the batch where failure starts: the LSR may already fail below B*.

    Args:
        G: equilibrium |∇L|² of the baseline run, > 0.
        N: equilibrium Tr Σ_B of the baseline run at its batch size, ≥ 0.
        batch_size: the baseline batch size B, > 0.
        C: closeness constant, > 1.

    Returns:
        B* as a float.

    Raises:
        ValueError: if G ≤ 0, N < 0, batch_size ≤ 0, C ≤ 1, or any value is not finite.
    """
    return _check_batch(batch_size) * critical_kappa(G, N, C)


def predict_critical_batch_approx(
    G: float, N: float, batch_size: float, C: float = SQRT2
) -> float:
    """B* ≈ C² · B · N/G, the approximation of eq. 15 for N/G ≫ 1 used in the Fig 3 caption.

    Args:
        G: equilibrium |∇L|² of the baseline run, > 0.
        N: equilibrium Tr Σ_B of the baseline run at its batch size, ≥ 0.
        batch_size: the baseline batch size B, > 0.
        C: closeness constant, > 1.

    Returns:
        The approximate B* as a float (always below :func:`predict_critical_batch` by C²·B).

    Raises:
        ValueError: if G ≤ 0, N < 0, batch_size ≤ 0, C ≤ 1, or any value is not finite.
    """
    c = check_c(C)
    g, n = _check_gn(G, N)
    return c * c * _check_batch(batch_size) * n / g


def simple_noise_scale(G: float, N: float, batch_size: float, n: int | None = None) -> float:
    """McCandlish et al. (2018)'s simple noise scale B_simple = Tr Σ₁ / |∇L|², from G and N.

    Σ₁ is the per-example gradient covariance, so Tr Σ₁ = B·N with replacement and
    Tr Σ₁ = B·N·(n − 1)/(n − B) for batches drawn without replacement from n examples (the
    finite-population factor of :func:`paperlib.nsr.noise_trace`). It is their estimate of the
    batch size where data parallelism stops paying off; Thm 5.6's bound from the same numbers is
    B* = B·C²(1 + N/G) = C²·(B + B_simple·(n − B)/(n − 1)), i.e. ≈ C²(B + B_simple).

    Args:
        G: |∇L|² (> 0).
        N: Tr Σ_B at batch size ``batch_size`` (≥ 0).
        batch_size: the batch size B at which N was measured (> 0; < n when n is given).
        n: the training-set size for without-replacement batches, or None.

    Returns:
        B_simple (examples) as a float.

    Raises:
        ValueError: if G ≤ 0, N < 0, batch_size ≤ 0 or ≥ n, n < 2, or any value is not finite.
    """
    g, nn = _check_gn(G, N)
    b = _check_batch(batch_size)
    trace1 = b * nn
    if n is not None:
        check_int("n", n, 2, allow_none=True)
        if b >= n:
            raise ValueError(f"batch_size must be < n={n} (at B = n there is no noise to measure), "
                             f"got {batch_size!r}")
        trace1 *= (n - 1) / (n - b)
    return trace1 / g


def lsi_threshold(kappa: float, C: float = SQRT2) -> float:
    """The right-hand side (1 − 1/κ)/(C² − 1) − 1/κ of eq. 14 (Thm 5.5).

    It equals (κ − C²)/(κ(C² − 1)): positive exactly when C < sqrt(κ), as Definition 5.4
    requires.

    Args:
        kappa: the scaling factor κ, > 1 and > C².
        C: closeness constant, > 1 and < sqrt(κ).

    Returns:
        The threshold (> 0) on N/G measured at (κB, κη).

    Raises:
        ValueError: if C ≤ 1, κ ≤ 1, κ ≤ C² (Definition 5.4 needs C < sqrt(κ)), or not finite.
    """
    c = check_c(C)
    k = as_real("kappa", kappa)
    if k <= 1.0:
        raise ValueError(f"kappa must be > 1, got {kappa!r}")
    if k <= c * c:
        raise ValueError(
            f"(C, kappa)-LSI (Definition 5.4) needs C < sqrt(kappa), i.e. kappa > C^2 = {c * c:g}, "
            f"got kappa={kappa!r}"
        )
    return (1.0 - 1.0 / k) / (c * c - 1.0) - 1.0 / k


def lsi_failure_certificate(G_kB: float, N_kB: float, kappa: float, C: float = SQRT2) -> bool:
    """Thm 5.5 (eq. 14): True when N/G at (κB, κη) < (1 − 1/κ)/(C² − 1) − 1/κ.

    True certifies that SGD with (B, η) does NOT exhibit (C, κ)-LSI (the LSR from B to κB
    certainly fails); False certifies nothing.

    Args:
        G_kB: equilibrium |∇L|² of the large-batch run (κB, κη), > 0.
        N_kB: its equilibrium Tr Σ_{κB} (at batch size κB), ≥ 0.
        kappa: the scaling factor κ > 1, with κ > C² (Definition 5.4: 0 < C < sqrt(κ)).
        C: closeness constant, > 1.

    Returns:
        Whether eq. 14 holds.

    Raises:
        ValueError: if G_kB ≤ 0, N_kB < 0, C ≤ 1, κ ≤ 1, κ ≤ C², or any value is not finite.
    """
    g, n = _check_gn(G_kB, N_kB)
    return n / g < lsi_threshold(kappa, C)


def lsr_failure_batch(
    batch_sizes: Sequence[int],
    test_errors: Sequence[float],
    factor: float = 1.2,
    after_best: bool = False,
) -> int | None:
    """The smallest batch size whose final test error exceeds ``factor`` × the lowest (Fig 3).

    Fig 3 considers the LSR failed when the final test error exceeds the lowest achieved error
    by more than 20% of its value (factor 1.2); the red region starts at the returned B.

    Args:
        batch_sizes: strictly increasing positive batch sizes of an LSR sweep.
        test_errors: final test errors (fractions or percent, ≥ 0), one per batch size.
        factor: failure threshold as a multiple of the lowest error, ≥ 1.
        after_best: only consider batch sizes above the one with the lowest error (ignores a
            small-batch run that is bad for another reason).

    Returns:
        The first failing batch size, or None if none fails.

    Raises:
        ValueError: if the sequences are empty or of different lengths, batch sizes are not
            strictly increasing positive numbers, an error is negative or not finite, or
            factor < 1.
    """
    if len(batch_sizes) != len(test_errors) or len(batch_sizes) == 0:
        raise ValueError(
            "batch_sizes and test_errors must be non-empty and of equal length, got lengths "
            f"{len(batch_sizes)} and {len(test_errors)}"
        )
    bs = [_check_batch(b) for b in batch_sizes]
    if any(b2 <= b1 for b1, b2 in zip(bs, bs[1:], strict=False)):
        raise ValueError(f"batch_sizes must be strictly increasing, got {list(batch_sizes)}")
    errs = [as_real("test error", e) for e in test_errors]
    if any(e < 0.0 for e in errs):
        raise ValueError(f"test errors must be >= 0, got {list(test_errors)}")
    f = as_real("factor", factor)
    if f < 1.0:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    best = min(errs)
    start = errs.index(best) + 1 if after_best else 0
    for b, e in zip(list(batch_sizes)[start:], errs[start:], strict=True):
        if e > f * best:
            return b
    return None


def lsr_failure_batches(batch_sizes, test_errors, factor: float = 1.2, *, none=math.inf,
                        diverged=()):
    """:func:`lsr_failure_batch` for many draws at once (the claims' Monte Carlo intervals).

    Args:
        batch_sizes: strictly increasing batch sizes, shape (k,).
        test_errors: one row of final test errors per draw, shape (draws, k).
        factor: failure threshold as a multiple of each draw's lowest error, ≥ 1.
        none: the value for a draw where no batch size fails (default inf).
        diverged: batch sizes that count as failed in every draw (a diverged run), whether or
            not they are in ``batch_sizes``.

    Returns:
        Per draw, the first failing batch size (float array of shape (draws,)).
    """
    import numpy as np

    bs = np.asarray(batch_sizes, dtype=float)
    e = np.asarray(test_errors, dtype=float)
    fails = e > factor * e.min(axis=1, keepdims=True)
    fails |= np.isin(bs, list(diverged))[None, :]
    first = np.where(fails.any(axis=1), bs[np.argmax(fails, axis=1)], none)
    outside = [b for b in diverged if b not in set(bs.tolist())]
    return np.minimum(first, min(outside)) if outside else first
