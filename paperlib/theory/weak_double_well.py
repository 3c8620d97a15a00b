"""Thm 4.3 on a nonlinear model: SVAG on a double well with x-dependent skewed noise, by Monte
Carlo against a torchsde Euler–Maruyama reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .. import seeding
from ..svag import svag_coefficients
from .cache import cached
from .settings import DT, DoubleWellSettings, TheorySettings, n_steps


def _dw_grad(x: torch.Tensor) -> torch.Tensor:
    return x**3 - x  # ∇L for L(x) = (x² − 1)²/4


def _dw_sigma(x: torch.Tensor, s: DoubleWellSettings) -> torch.Tensor:
    return s.noise_scale * torch.sqrt(1 + x * x)


def double_well_svag(s: DoubleWellSettings, l: int, seed: int) -> torch.Tensor:
    """Samples ``[paths]`` of SVAG x_{lT/η} on the double well (noise σ(x)·(c1ξ1 + c2ξ2))."""
    c1, c2 = svag_coefficients(l)
    gen = seeding.generator(seed, 43, l)
    q = math.sqrt(s.p * (1 - s.p))
    x = torch.full((s.paths,), s.x0, dtype=DT)
    for _ in range(n_steps(s.T, s.eta / l)):
        xi = (torch.rand((2, s.paths), generator=gen, dtype=DT) < s.p).to(DT).sub_(s.p).div_(q)
        x = x - s.eta / l * (_dw_grad(x) + _dw_sigma(x, s) * (c1 * xi[0] + c2 * xi[1]))
    return x


class SequentialBrownian:
    """A Brownian motion for fixed-step solvers that query consecutive intervals once each:
    returns fresh N(0, (tb − ta)I) increments from a seeded generator (much cheaper than
    ``torchsde.BrownianInterval``'s tree for 10⁵–10⁶ paths). Raises if queried out of order."""

    def __init__(self, t0: float, size: tuple[int, int], generator: torch.Generator):
        self._t, self._size, self._gen = float(t0), size, generator

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A or abs(float(ta) - self._t) > 1e-9:
            raise ValueError(f"SequentialBrownian needs consecutive queries bm(ta, tb) starting "
                             f"at t={self._t}, got ta={ta}, tb={tb}")
        dt = float(tb) - float(ta)
        self._t = float(tb)
        return torch.randn(self._size, generator=self._gen, dtype=DT) * math.sqrt(dt)

    def __repr__(self):
        return f"SequentialBrownian(t={self._t}, size={self._size})"

    dtype, device, levy_area_approximation = DT, torch.device("cpu"), "none"

    @property
    def shape(self):
        return self._size


def register_brownian():
    """torchsde, with :class:`SequentialBrownian` registered as one of its Brownian motions."""
    import torchsde

    torchsde.BaseBrownian.register(SequentialBrownian)
    return torchsde


class _DoubleWellSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, s: DoubleWellSettings):
        super().__init__()
        self.s = s

    def f(self, t, y):
        return -_dw_grad(y)

    def g(self, t, y):
        return math.sqrt(self.s.eta) * _dw_sigma(y, self.s)


def double_well_em(s: DoubleWellSettings, dt_divisor: int, seed: int) -> torch.Tensor:
    """Samples ``[paths]`` of X_T for dX = −∇L dt + sqrt(η)σ(X) dW by torchsde's Euler–Maruyama
    (``method="euler"``) with dt = η / dt_divisor."""
    torchsde = register_brownian()
    bm = SequentialBrownian(0.0, (s.paths, 1), seeding.generator(seed, 44, dt_divisor))
    y0 = torch.full((s.paths, 1), s.x0, dtype=DT)
    ts = torch.tensor([0.0, s.T], dtype=DT)
    with torch.no_grad():
        ys = torchsde.sdeint(_DoubleWellSDE(s), y0, ts, method="euler", dt=s.eta / dt_divisor,
                             bm=bm)
    return ys[-1, :, 0]


_DW_G = {"x": lambda x: x, "x^2": lambda x: x * x}


@cached("weak-double-well", "double_well")
def weak_error_double_well(S: TheorySettings) -> pd.DataFrame:
    """Thm 4.3 on the double well by Monte Carlo: E g for SVAG at each l and for the EM
    reference at each dt, g ∈ {x, x²}, with standard errors; ``error`` / ``error_se`` are
    against the finest EM reference (independent samples, so the SEs add in quadrature)."""
    s = S.double_well
    rows = []
    for l in s.l_values:
        x = double_well_svag(s, l, s.seed)
        rows += [dict(method="svag", l=l, dt=s.eta / l, g=g, mean=float(f(x).mean()),
                      se=float(f(x).std() / math.sqrt(s.paths))) for g, f in _DW_G.items()]
    for div in s.dt_divisors:
        x = double_well_em(s, div, s.seed)
        rows += [dict(method="em", l=div, dt=s.eta / div, g=g, mean=float(f(x).mean()),
                      se=float(f(x).std() / math.sqrt(s.paths))) for g, f in _DW_G.items()]
    df = pd.DataFrame(rows)
    ref = df[(df.method == "em") & (df.l == s.dt_divisors[-1])].set_index("g")
    df["error"] = (df["mean"] - df.g.map(ref["mean"])).abs()
    df["error_se"] = np.sqrt(df.se**2 + df.g.map(ref["se"]) ** 2)
    df.loc[(df.method == "em") & (df.l == s.dt_divisors[-1]), ["error", "error_se"]] = np.nan
    return df
