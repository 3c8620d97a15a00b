"""Windows of per-step (Ĝ, N̂, R) estimates: the equilibrium means G_∞, N_∞, R_∞ of
Definition 5.1 with standard errors (Sec. 5; Fig 3 averages epochs 200-250 of the constant-LR
phase). The per-step estimators themselves are in :mod:`paperlib.nsr`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BLOCKS", "NSRWindow", "block_se", "block_slices", "block_summary"]

BLOCKS = 10  # standard errors from this many contiguous block means of a window


class NSRWindow:
    """Accumulates per-step (Ĝ, N̂, R) over a window of steps: means and standard errors.

    The equilibrium quantities G_∞, N_∞, R_∞ of Definition 5.1 are means over the stationary
    distribution; the paper estimates them late in the constant-LR phase (Fig 3: the authors
    average epochs 200-250). Feed one estimate per step (e.g. from :func:`online_nsr`, with
    R = |x|²) and read :meth:`summary`. Welford updates in float64, O(1) memory.

    Standard errors are sample std / sqrt(count), i.e. they assume independent steps; consecutive
    SGD steps are autocorrelated, so treat them as a lower bound (thin the steps, or use batch
    means over sub-windows, for honest error bars). The ratio ``N_over_G`` = mean N / mean G is a
    ratio of means (single-step Ĝ can be ≤ 0); ``N_over_G_se`` is its delta-method standard
    error.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self.count = 0
        self.r_count = 0
        self._mean_g = 0.0
        self._mean_n = 0.0
        self._m2_g = 0.0
        self._m2_n = 0.0
        self._c_gn = 0.0
        self._mean_r = 0.0
        self._m2_r = 0.0

    def add(self, g_hat, n_hat, r=None) -> None:
        """Add one step's estimates.

        Args:
            g_hat: Ĝ (number or 0-d tensor; may be negative).
            n_hat: N̂ (number or 0-d tensor).
            r: |x|² (optional; number or 0-d tensor, ≥ 0).

        Raises:
            ValueError: if a value is not finite, or r < 0.
        """
        g, nn = float(g_hat), float(n_hat)
        if not (math.isfinite(g) and math.isfinite(nn)):
            raise ValueError(f"g_hat and n_hat must be finite, got {g!r}, {nn!r}")
        rr = None
        if r is not None:
            rr = float(r)
            if not math.isfinite(rr) or rr < 0.0:
                raise ValueError(f"r must be a finite number >= 0, got {rr!r}")
        self.count += 1
        dg = g - self._mean_g
        dn = nn - self._mean_n
        self._mean_g += dg / self.count
        self._mean_n += dn / self.count
        self._m2_g += dg * (g - self._mean_g)
        self._m2_n += dn * (nn - self._mean_n)
        self._c_gn += dg * (nn - self._mean_n)
        if rr is not None:
            self.r_count += 1
            dr = rr - self._mean_r
            self._mean_r += dr / self.r_count
            self._m2_r += dr * (rr - self._mean_r)

    def summary(self) -> dict[str, float]:
        """Means, standard errors and the ratio over the window.

        Returns:
            dict with keys ``count``, ``G``, ``N``, ``R``, ``G_se``, ``N_se``, ``R_se``,
            ``N_over_G``, ``N_over_G_se`` (NaN where undefined: no data, fewer than 2 steps for
            an SE, no R given, or mean G ≤ 0 for the ratio). An empty window gives count 0 and NaNs.
        """
        nan = float("nan")
        c, rc = self.count, self.r_count

        def se(m2: float, k: int) -> float:
            return math.sqrt(m2 / (k - 1) / k) if k >= 2 else nan

        out = {
            "count": float(c),
            "G": self._mean_g if c else nan,
            "N": self._mean_n if c else nan,
            "R": self._mean_r if rc else nan,
            "G_se": se(self._m2_g, c),
            "N_se": se(self._m2_n, c),
            "R_se": se(self._m2_r, rc),
            "N_over_G": nan,
            "N_over_G_se": nan,
        }
        if c and self._mean_g > 0.0:
            ratio = self._mean_n / self._mean_g
            out["N_over_G"] = ratio
            if c >= 2:
                var_g = self._m2_g / (c - 1) / c
                var_n = self._m2_n / (c - 1) / c
                cov = self._c_gn / (c - 1) / c
                var_ratio = (var_n - 2 * ratio * cov + ratio**2 * var_g) / self._mean_g**2
                out["N_over_G_se"] = math.sqrt(max(var_ratio, 0.0))
        return out


def block_slices(count: int, blocks: int = BLOCKS) -> list[slice]:
    """The blocks of a window of ``count`` consecutive values: ``blocks`` contiguous slices of
    equal size ``count // blocks``, the oldest remainder left out; none (errors per value) when a
    block would hold fewer than 2 values or ``blocks`` is 0."""
    per = count // blocks if blocks else 0
    if per < 2:
        return []
    return [slice(i, i + per) for i in range(count - per * blocks, count, per)]


def block_se(values, blocks: int = BLOCKS) -> float:
    """Standard error of the mean of a correlated series (NaN values dropped) over the means of
    its :func:`block_slices` (per value with fewer than 2 values per block; NaN with fewer than 2
    values)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    parts = block_slices(len(v), blocks)
    if parts:
        v = v[parts[0].start:].reshape(len(parts), -1).mean(axis=1)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) >= 2 else float("nan")


def block_summary(G, N, R=None, blocks: int = BLOCKS) -> dict[str, float]:
    """:meth:`NSRWindow.summary` of a window of per-step (or per-row) estimates, with standard
    errors over the means of its ``blocks`` :func:`block_slices` instead of single values:
    consecutive steps are correlated, so per-step standard errors are too small. The blocks hold
    equal numbers of values (the oldest remainder is left out of the errors, not of the means);
    with fewer than 2 values per block the errors are per value.

    Args:
        G, N: sequences of per-step Ĝ and N̂ (finite), equal length.
        R: an optional sequence of |x|² of the same length.
        blocks: number of blocks (0: per-value errors).

    Returns:
        the :meth:`NSRWindow.summary` dict (means over all values) plus ``se_from``
        ("blocks" or "values").
    """
    R = [None] * len(G) if R is None else list(R)
    full = NSRWindow()
    for g, n, r in zip(G, N, R, strict=True):
        full.add(g, n, r)
    out = {**full.summary(), "se_from": "values"}
    parts = block_slices(len(G), blocks)
    if parts:
        bw = NSRWindow()
        for s in parts:
            per, rs = s.stop - s.start, R[s]
            bw.add(sum(G[s]) / per, sum(N[s]) / per,
                   None if any(r is None for r in rs) else sum(rs) / per)
        b = bw.summary()
        out.update({k: b[k] for k in ("G_se", "N_se", "R_se", "N_over_G_se")},
                   se_from="blocks")
    return out
