"""Theory made visible: cheap, exact (or well-resolved Monte Carlo) checks of the paper's math.

Each experiment is one public function ``f(S) -> pandas.DataFrame`` taking the
:class:`TheorySettings` of a preset (``settings("smoke" | "cpu" | "paper")``):

* :func:`lemma47`: one-step moments of SVAG (Lemma 4.7) by enumerating every batch pair.
* :func:`weak_error_ou`: Thm 4.3's order-1 weak error of SVAG on an Ornstein–Uhlenbeck model
  with skewed, x-independent noise, exactly through cumulant recursions; SGD's error vs η.
* :func:`weak_error_double_well`: the same on a nonlinear model with x-dependent noise, by Monte
  Carlo against a torchsde Euler–Maruyama reference.
* :func:`equilibrium`: eqs. (10)–(12) and Thm 5.2 on a scale-invariant normalized linear model.
* :func:`lsr_vs_sde`: App. B.1, the LSR holds exactly while the Itô SDE fails.
* :func:`tail_index_experiment`: App. B.3, the block-sum tail-index estimator calls Gaussian
  noise heavy-tailed.

Results of the ``cpu`` and ``paper`` presets are cached as CSV under ``<store>/theory/`` (keyed by
experiment, preset and a hash of the settings); ``smoke`` always recomputes and never touches the
cache. With ``PAPERLIB_NO_TRAIN=1`` (notebooks under nbval) a missing cache file raises
:class:`paperlib.files.StaleResultError` instead of computing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import __version__, seeding
from .constants import PRESETS
from .files import StaleResultError, atomic_write_bytes
from .paths import theory_root
from .store import note_result
from .svag import svag_coefficients

CACHE_VERSION = 1  # bump when a change alters what a cached experiment computes
DT = torch.float64

# ============================================================================ validation helpers


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_pos(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from exc
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_l_values(name: str, values) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty tuple of integers >= 1, got {values!r}")


def _steps(T: float, step_lr: float) -> int:
    """Number of steps T / step_lr, which must be an integer (to within 1e-9)."""
    k = T / step_lr
    if abs(k - round(k)) > 1e-9 * max(1.0, k):
        raise ValueError(f"T / (per-step LR) must be an integer, got T={T}, LR={step_lr}")
    return int(round(k))


# ============================================================================ settings (presets)


@dataclass(frozen=True)
class LemmaSettings:
    """Lemma 4.7 by enumeration: a finite data set of n per-example gradients in R^d."""

    n: int = 6  # examples; batches of B drawn with replacement (n^B equally likely batches)
    d: int = 3  # parameter dimension
    batch_sizes: tuple[int, ...] = (1, 2, 3)  # B; (n^B)² ordered batch pairs are enumerated
    l_values: tuple[int, ...] = (1, 2, 4, 16, 64, 256)  # SVAG l (eq. 5)
    eta: float = 0.5  # η, base LR; the SVAG step uses η / l
    seed: int = 0

    def __post_init__(self):
        _check_int("n", self.n, 2)
        _check_int("d", self.d, 1)
        _check_l_values("batch_sizes", self.batch_sizes)
        if self.n ** (2 * max(self.batch_sizes)) > 5_000_000:
            raise ValueError(f"n^(2B) must be <= 5e6 to enumerate, got n={self.n}, "
                             f"B={max(self.batch_sizes)}")
        _check_l_values("l_values", self.l_values)
        _check_pos("eta", self.eta)


@dataclass(frozen=True)
class OUSettings:
    """Thm 4.3 on L(x) = ½xᵀAx with x-independent skewed noise: SDE (2) is an OU process."""

    eta: float = 0.5  # η: SGD LR whose SDE is the target; SVAG uses η/l
    T: float = 2.0  # effective (continuous) time of the comparison
    l_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # SVAG l
    fit_min_l: int = 16  # slope fitted over l >= fit_min_l (the asymptotic tail)
    sgd_etas: tuple[float, ...] = tuple(0.5 / 2**j for j in range(9))  # SGD LR sweep at fixed T

    def __post_init__(self):
        _check_pos("eta", self.eta)
        _check_pos("T", self.T)
        _check_l_values("l_values", self.l_values)
        if sum(v >= self.fit_min_l for v in self.l_values) < 2:
            raise ValueError(f"fit_min_l={self.fit_min_l} leaves fewer than 2 l values to fit")
        for e in self.sgd_etas:
            _steps(self.T, _check_pos("sgd_etas entry", e))
        _steps(self.T, self.eta)


@dataclass(frozen=True)
class DoubleWellSettings:
    """Thm 4.3 on L(x) = (x² − 1)²/4 with noise σ(x)ξ, σ(x) = s·sqrt(1 + x²), ξ a standardized
    Bernoulli(p) (skewed): Monte Carlo vs a torchsde Euler–Maruyama reference."""

    eta: float = 0.2  # η
    T: float = 2.0  # effective time
    x0: float = 0.5  # start
    noise_scale: float = 1.0  # s
    p: float = 0.1  # Bernoulli parameter of ξ (skewness (1 − 2p)/sqrt(p(1 − p)))
    l_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # SVAG l
    paths: int = 400_000  # Monte Carlo sample size per l and per reference
    dt_divisors: tuple[int, ...] = (32, 128)  # EM reference dt = η / divisor (last = reference)
    seed: int = 0

    def __post_init__(self):
        for name in ("eta", "T", "noise_scale"):
            _check_pos(name, getattr(self, name))
        if not 0 < self.p < 1:
            raise ValueError(f"p must be in (0, 1), got {self.p!r}")
        _check_l_values("l_values", self.l_values)
        _check_l_values("dt_divisors", self.dt_divisors)
        _check_int("paths", self.paths, 2)
        _steps(self.T, self.eta)


@dataclass(frozen=True)
class EquilibriumSettings:
    """Eqs. (10)–(12), Thm 5.2: SGD / SVAG with WD on a normalized linear softmax classifier."""

    batch_sizes: tuple[int, ...] = (2, 8, 32, 128)  # B (even: SGD's two half batches)
    eta: float = 0.5  # η
    wd: float = 0.1  # λ
    l: int = 64  # SVAG l standing in for the SDE (eq. 12 is its l → ∞ limit)
    chains: int = 8  # independent chains run side by side (the E in eqs. 10–12)
    burn_in: float = 10.0  # base steps before the window, in units of 1 / (ηλ)
    window: float = 10.0  # base steps of the averaging window, in units of 1 / (ηλ)
    n: int = 256  # training examples (Gaussian mixture)
    dim: int = 8  # input dimension
    classes: int = 4  # K; the weight matrix W is K × dim
    logit_scale: float = 4.0  # logits = scale · W a / |W|_F (scale-invariant in W)
    exact_every: int = 1  # exact G, N from all n examples every this many base steps
    seed: int = 0

    def __post_init__(self):
        _check_l_values("batch_sizes", self.batch_sizes)
        if any(b % 2 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be even (two half batches), got {self.batch_sizes}")
        for name in ("eta", "wd", "burn_in", "window", "logit_scale"):
            _check_pos(name, getattr(self, name))
        if self.eta * self.wd >= 1:
            raise ValueError(f"eta * wd must be < 1, got {self.eta * self.wd}")
        _check_int("l", self.l, 1)
        for name in ("chains", "n", "dim", "classes", "exact_every"):
            _check_int(name, getattr(self, name), 1)

    @property
    def burn_steps(self) -> int:  # base steps
        return int(math.ceil(self.burn_in / (self.eta * self.wd)))

    @property
    def window_steps(self) -> int:  # base steps
        return int(math.ceil(self.window / (self.eta * self.wd)))


@dataclass(frozen=True)
class LSRSettings:
    """App. B.1: L_γ(x) = (μ + γ)x with centered-exponential γ (x-independent noise)."""

    batch_size: int = 1  # B of the base run
    eta: float = 0.5  # η of the base run
    T: float = 4.0  # effective time
    drift: float = 0.5  # μ = ∇L (constant)
    kappas: tuple[int, ...] = (1, 2, 4, 8)  # LSR pairs (κB, κη)
    l_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # SVAG l at the base (B, η)
    paths: int = 200_000  # samples per run
    seed: int = 0

    def __post_init__(self):
        _check_int("batch_size", self.batch_size, 1)
        for name in ("eta", "T"):
            _check_pos(name, getattr(self, name))
        _check_l_values("kappas", self.kappas)
        _check_l_values("l_values", self.l_values)
        _check_int("paths", self.paths, 10)
        for k in self.kappas:
            _steps(self.T, k * self.eta)


@dataclass(frozen=True)
class TailSettings:
    """App. B.3: the block-sum tail-index estimator on Gaussian and real gradient noise."""

    vectors: int = 20  # noise vectors (replicates) per case
    anisotropy: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)  # std of log σ_j
    anisotropy_claim: float = 1.0  # the anisotropic case of the claim
    subset: int = 512  # N training examples of the synthetic data set
    batch_size: int = 32  # B of the SGD / NGD noise
    resolution: int = 8  # image side
    seed: int = 0

    def __post_init__(self):
        _check_int("vectors", self.vectors, 1)
        if self.anisotropy_claim not in self.anisotropy or any(s < 0 for s in self.anisotropy):
            raise ValueError(f"anisotropy must be >= 0 and contain anisotropy_claim, got "
                             f"{self.anisotropy!r} / {self.anisotropy_claim!r}")
        _check_int("subset", self.subset, 2)
        _check_int("batch_size", self.batch_size, 1)
        if self.batch_size >= self.subset:
            raise ValueError(f"batch_size must be < subset={self.subset}, got {self.batch_size}")


@dataclass(frozen=True)
class TheorySettings:
    preset: str
    cache: bool  # cpu / paper: load results from <store>/theory/ or compute and store them
    lemma: LemmaSettings = field(default_factory=LemmaSettings)
    ou: OUSettings = field(default_factory=OUSettings)
    double_well: DoubleWellSettings = field(default_factory=DoubleWellSettings)
    equilibrium: EquilibriumSettings = field(default_factory=EquilibriumSettings)
    lsr: LSRSettings = field(default_factory=LSRSettings)
    tail: TailSettings = field(default_factory=TailSettings)


def settings(preset: str) -> TheorySettings:
    """The sizes of every theory experiment at ``preset`` (smoke | cpu | paper).

    ``cpu`` is the default of each dataclass; ``smoke`` shrinks every Monte Carlo sample and run
    to seconds; ``paper`` enlarges samples, l ranges and runs (minutes to an hour on a CPU).

    Raises:
        ValueError: unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; choose one of {list(PRESETS)}")
    if preset == "cpu":
        return TheorySettings("cpu", cache=True)
    if preset == "smoke":
        return TheorySettings(
            "smoke", cache=False,
            lemma=LemmaSettings(batch_sizes=(1, 2), l_values=(1, 4, 16)),
            ou=OUSettings(l_values=(1, 2, 4, 8, 16, 32, 64), fit_min_l=8,
                          sgd_etas=(0.5, 0.25, 0.125, 0.0625)),
            double_well=DoubleWellSettings(l_values=(1, 2, 4), paths=2000, dt_divisors=(4, 8)),
            equilibrium=EquilibriumSettings(batch_sizes=(4, 32), l=4, chains=2, burn_in=1.0,
                                            window=1.0, n=64),
            lsr=LSRSettings(kappas=(1, 2), l_values=(1, 4), paths=2000),
            tail=TailSettings(vectors=2, anisotropy=(0.0, 1.0), subset=64, batch_size=8),
        )
    return TheorySettings(
        "paper", cache=True,
        lemma=LemmaSettings(batch_sizes=(1, 2, 3), l_values=(1, 2, 4, 8, 16, 64, 256, 1024)),
        ou=OUSettings(l_values=tuple(2**j for j in range(13)), fit_min_l=64,
                      sgd_etas=tuple(0.5 / 2**j for j in range(13))),
        double_well=DoubleWellSettings(l_values=(1, 2, 4, 8, 16, 32, 64), paths=2_000_000,
                                       dt_divisors=(64, 256)),
        equilibrium=EquilibriumSettings(batch_sizes=(2, 8, 32, 128, 256), l=256, chains=16,
                                        window=20.0),
        lsr=LSRSettings(l_values=(1, 2, 4, 8, 16, 32, 64, 128), paths=1_000_000),
        tail=TailSettings(vectors=100, subset=2000),
    )


# ============================================================================ result cache


def _cache_path(name: str, preset: str, sub) -> tuple[Path, dict]:
    meta = {"experiment": name, "preset": preset, "settings": dataclasses.asdict(sub),
            "cache_version": CACHE_VERSION, "paperlib_version": __version__}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return theory_root(preset) / f"{name}-{preset}-{key}.csv", meta


def _roundtrip(df: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """CSV bytes of ``df`` and the frame read back from them (same dtypes fresh or cached)."""
    blob = df.to_csv(index=False, float_format="%.17g").encode()
    return blob, pd.read_csv(io.BytesIO(blob))


def _cached(name: str, field_name: str):
    """Decorator: ``f(S)`` is loaded from / stored to ``<store>/theory/<name>-<preset>-<hash>.csv``
    when ``S.cache``; the hash covers ``S.<field_name>``, CACHE_VERSION and paperlib's version."""

    def wrap(compute: Callable[[TheorySettings], pd.DataFrame]):
        def run(S: TheorySettings) -> pd.DataFrame:
            if not isinstance(S, TheorySettings):
                raise ValueError(f"expected TheorySettings (theory.settings(preset)), got {S!r}")
            if not S.cache:
                return _roundtrip(compute(S))[1]
            path, meta = _cache_path(name, S.preset, getattr(S, field_name))
            if path.exists():
                note_result("theory", path.name, "stored")
                return pd.read_csv(path)
            if os.environ.get("PAPERLIB_NO_TRAIN", "") not in ("", "0"):
                raise StaleResultError(
                    f"theory result {path} is missing or stale (PAPERLIB_NO_TRAIN is set); "
                    f"regenerate it by running the theory notebooks at PRESET={S.preset!r} "
                    "with papermill outside the tests")
            blob, df = _roundtrip(compute(S))
            for old in path.parent.glob(f"{name}-{S.preset}-*"):  # one file per experiment
                old.unlink()
            atomic_write_bytes(path, blob)
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
            note_result("theory", path.name, "computed")
            return df

        run.__name__, run.__doc__ = compute.__name__, compute.__doc__
        run.__wrapped__ = compute
        return run

    return wrap


def fmt(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A copy of ``df`` with floats as strings of ``digits`` significant digits (stable output)."""
    return df.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else v)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log|y| against log x (the order of a power law y ∝ x^slope)."""
    x, y = np.asarray(x, dtype=float), np.abs(np.asarray(y, dtype=float))
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError(f"need >= 2 points with x > 0 and y != 0, got x={x}, y={y}")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ============================================================================ Lemma 4.7


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
    B = _check_int("batch_size", batch_size, 1)
    eta = _check_pos("eta", eta)
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
    eta = _check_pos("eta", eta)
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


@_cached("lemma47", "lemma")
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
            exact = lemma47_formulas(grad, sigma, lam, l=l, eta=s.eta)
            printed = lemma47_formulas(grad, sigma, lam, l=l, eta=s.eta, printed=True)
            for key, name in (("mean", "(i)"), ("second", "(ii)"), ("third", "(iii)")):
                rows.append(dict(B=B, l=l, moment=name, rel_err=_rel(m[key], exact[key]),
                                 norm=float(m[key].norm())))
            rows.append(dict(B=B, l=l, moment="(iii) printed",
                             rel_err=_rel(m["third"], printed["third"]),
                             norm=float(m["third"].norm())))
            rows.append(dict(B=B, l=l, moment="(iv)", rel_err=float("nan"),
                             norm=float(m["eighth"].sqrt())))
    return pd.DataFrame(rows)


# ============================================================================ Thm 4.3: OU model


@dataclass(frozen=True)
class OUModel:
    """L(x) = ½ xᵀ diag(a) x; a stochastic gradient is ∇L(x) + ξ with ξ = M e, e having i.i.d.
    standardized components with cumulants κ2 = 1, κ3, κ4 (centered Exp(1): κ3 = 2, κ4 = 6),
    independent of x. Σ = M Mᵀ. The Itô SDE (2) is the OU process dX = −aX dt + (ηΣ)^{1/2} dW."""

    a: tuple[float, ...] = (1.0, 2.5)
    mixing: tuple[tuple[float, ...], ...] = ((1.0, 0.0), (0.6, 0.8))  # M
    x0: tuple[float, ...] = (1.0, -0.5)
    kappa3: float = 2.0
    kappa4: float = 6.0


def _outer_power(v: np.ndarray, n: int) -> np.ndarray:
    t = v
    for _ in range(n - 1):
        t = np.multiply.outer(t, v)
    return t


def ou_noise_cumulant(model: OUModel, order: int) -> np.ndarray:
    """κ_order(ξ) = Σ_m κ_order(e_m) M_{:,m}^{⊗order}, a d^order tensor (order in 2..4)."""
    if order not in (2, 3, 4):
        raise ValueError(f"order must be 2, 3 or 4, got {order!r}")
    k = {2: 1.0, 3: model.kappa3, 4: model.kappa4}[order]
    M = np.asarray(model.mixing, dtype=float)
    return sum(k * _outer_power(M[:, m], order) for m in range(M.shape[1]))


def ou_svag_cumulants(model: OUModel, *, eta: float, l: int, T: float) -> dict[int, np.ndarray]:
    """Exact cumulants κ1..κ4 of SVAG (eq. 5) after k = lT/η steps on the OU model.

    x_{k+1} = m ⊙ x_k − (η/l)(c1ξ1 + c2ξ2), m = 1 − ηa/l, is x_0 transformed plus a sum of
    independent terms, so cumulants add: κ_n(x_k) = (−η/l)^n (c1^n + c2^n) κ_n(ξ) ⊙ (1 − r^k) /
    (1 − r) with r = m^{⊗n} (entrywise products), and κ1 = m^k ⊙ x0. ``l = 1`` is SGD.
    """
    eta, T = _check_pos("eta", eta), _check_pos("T", T)
    c1, c2 = svag_coefficients(l)
    k = _steps(T, eta / l)
    m = 1.0 - eta * np.asarray(model.a, dtype=float) / l
    out = {1: m**k * np.asarray(model.x0, dtype=float)}
    for n in (2, 3, 4):
        r = _outer_power(m, n)
        geo = np.where(r == 1.0, float(k), (1 - r**k) / np.where(r == 1.0, 1.0, 1 - r))
        out[n] = (-eta / l) ** n * (c1**n + c2**n) * ou_noise_cumulant(model, n) * geo
    return out


def ou_sde_cumulants(model: OUModel, *, eta: float, T: float) -> dict[int, np.ndarray]:
    """Cumulants of the OU solution X_T of SDE (2): Gaussian, κ1 = e^{−aT} x0,
    κ2_ij = ηΣ_ij (1 − e^{−(a_i + a_j)T}) / (a_i + a_j), κ3 = κ4 = 0. ``eta = 0`` gives gradient
    flow (a point mass)."""
    T = _check_pos("T", T)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    a = np.asarray(model.a, dtype=float)
    d = len(a)
    sa = np.add.outer(a, a)
    return {1: np.exp(-a * T) * np.asarray(model.x0, dtype=float),
            2: eta * ou_noise_cumulant(model, 2) * (1 - np.exp(-sa * T)) / sa,
            3: np.zeros((d,) * 3), 4: np.zeros((d,) * 4)}


def moments_from_cumulants(c: dict[int, np.ndarray]) -> tuple[float, float]:
    """(E|x|², E|x|⁴) from the cumulant tensors κ1..κ4 (moment–cumulant formula: the sum over
    the 15 set partitions of four indices)."""
    k1, k2, k3, k4 = c[1], c[2], c[3], c[4]
    e = np.einsum
    m4 = k4.copy()
    for spec in ("ijk,l", "ijl,k", "ikl,j", "jkl,i"):
        m4 = m4 + e(f"{spec}->ijkl", k3, k1)
    for spec in ("ij,kl", "ik,jl", "il,jk"):
        m4 = m4 + e(f"{spec}->ijkl", k2, k2)
    idx = "ijkl"
    for p, q in itertools.combinations(range(4), 2):
        r0, r1 = (t for t in range(4) if t not in (p, q))
        m4 = m4 + e(f"{idx[p]}{idx[q]},{idx[r0]},{idx[r1]}->ijkl", k2, k1, k1)
    m4 = m4 + e("i,j,k,l->ijkl", k1, k1, k1, k1)
    return float(np.trace(k2) + k1 @ k1), float(e("iijj->", m4))


def simulate_ou_svag(model: OUModel, *, eta: float, l: int, T: float, paths: int,
                     seed: int = 0) -> np.ndarray:
    """Monte Carlo samples ``[paths, d]`` of SVAG on the OU model (centered-Exp(1) components;
    the model's κ3, κ4 must be 2, 6). Used to check :func:`ou_svag_cumulants`."""
    if (model.kappa3, model.kappa4) != (2.0, 6.0):
        raise ValueError("simulate_ou_svag draws centered Exp(1) noise: kappa3=2, kappa4=6 only")
    c1, c2 = svag_coefficients(l)
    k = _steps(T, eta / l)
    a, M = np.asarray(model.a), np.asarray(model.mixing)
    rng = np.random.default_rng(seeding.derive_seed(seed, l))
    x = np.tile(np.asarray(model.x0, dtype=float), (_check_int("paths", paths, 1), 1))
    for _ in range(k):
        xi1 = (rng.exponential(size=x.shape) - 1) @ M.T
        xi2 = (rng.exponential(size=x.shape) - 1) @ M.T
        x = x - eta / l * (a * x + c1 * xi1 + c2 * xi2)
    return x


_G_NAMES = ("|x|^2", "|x|^4")


@_cached("weak-ou", "ou")
def weak_error_ou(S: TheorySettings) -> pd.DataFrame:
    """Thm 4.3 exactly on :class:`OUModel`: |E g(x_k) − E g(X_T)| for g = |x|², |x|⁴.

    Rows: ``scheme`` "svag" (η fixed, l varies, target SDE at η), "sgd" (l = 1, η varies, target
    SDE at that η: Li et al. 2019a's regime) and "sde-gf" (the SDE at η against gradient flow:
    how much the noise itself moves E g). Columns: l, eta, step_lr (per-step LR), g, value,
    reference, error = |value − reference|.
    """
    s, model = S.ou, OUModel()
    rows = []

    def add(scheme, l, eta, value_c, ref_c):
        for g, v, r in zip(_G_NAMES, moments_from_cumulants(value_c),
                           moments_from_cumulants(ref_c), strict=True):
            rows.append(dict(scheme=scheme, l=l, eta=eta, step_lr=eta / l, g=g, value=v,
                             reference=r, error=abs(v - r)))

    ref = ou_sde_cumulants(model, eta=s.eta, T=s.T)
    for l in s.l_values:
        add("svag", l, s.eta, ou_svag_cumulants(model, eta=s.eta, l=l, T=s.T), ref)
    gf = ou_sde_cumulants(model, eta=0.0, T=s.T)
    for eta in s.sgd_etas:
        sde = ou_sde_cumulants(model, eta=eta, T=s.T)
        add("sgd", 1, eta, ou_svag_cumulants(model, eta=eta, l=1, T=s.T), sde)
        add("sde-gf", 1, eta, sde, gf)
    return pd.DataFrame(rows)


def ou_slopes(df: pd.DataFrame, fit_min_l: int) -> dict[str, float]:
    """Fitted log–log slope of the SVAG error vs l over l >= fit_min_l, per test function."""
    d = df[(df.scheme == "svag") & (df.l >= fit_min_l)]
    return {g: loglog_slope(x.l, x.error) for g, x in d.groupby("g")}


# ============================================================================ Thm 4.3: double well


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
    for _ in range(_steps(s.T, s.eta / l)):
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


def _register_brownian():
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
    torchsde = _register_brownian()
    bm = SequentialBrownian(0.0, (s.paths, 1), seeding.generator(seed, 44, dt_divisor))
    y0 = torch.full((s.paths, 1), s.x0, dtype=DT)
    ts = torch.tensor([0.0, s.T], dtype=DT)
    with torch.no_grad():
        ys = torchsde.sdeint(_DoubleWellSDE(s), y0, ts, method="euler", dt=s.eta / dt_divisor,
                             bm=bm)
    return ys[-1, :, 0]


_DW_G = {"x": lambda x: x, "x^2": lambda x: x * x}


@_cached("weak-double-well", "double_well")
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


# ======================================================================= eqs. (10)–(12), Thm 5.2


def normalized_linear_data(s: EquilibriumSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian mixture: K class means μ_k ~ N(0, I), inputs a_i = μ_{y_i} + N(0, I).

    Returns:
        (A ``[n, dim]`` float64, one-hot labels ``[n, K]`` float64), classes balanced.
    """
    g = seeding.generator(s.seed, 50)
    mu = torch.randn(s.classes, s.dim, generator=g, dtype=DT)
    y = torch.arange(s.n) % s.classes
    A = mu[y] + torch.randn(s.n, s.dim, generator=g, dtype=DT)
    return A, torch.nn.functional.one_hot(y, s.classes).to(DT)


def normalized_linear_grads(W: torch.Tensor, A: torch.Tensor, onehot: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """Batch-mean gradients of ℓ(W; a, y) = CE(scale · W a / |W|_F, y), a scale-invariant loss
    (ℓ(cW) = ℓ(W) for c > 0), so the gradient is orthogonal to W (Lemma E.7) and ∝ 1/|W|.

    Args:
        W: weights ``[C, K, dim]`` (C independent chains).
        A: inputs ``[C, m, b, dim]`` (m batches of b examples per chain).
        onehot: labels ``[C, m, b, K]``.
        scale: logit scale > 0.

    Returns:
        ``[C, m, K, dim]``: the mean gradient of each batch.
    """
    nrm = W.flatten(1).norm(dim=1)[:, None, None]  # [C, 1, 1]
    U = W / nrm
    p = torch.softmax(scale * torch.einsum("ckd,cmbd->cmbk", U, A), dim=-1) - onehot
    gU = scale * torch.einsum("cmbk,cmbd->cmkd", p, A) / A.shape[2]  # ∂ℓ/∂U
    gU = gU - (gU * U[:, None]).sum((-2, -1), keepdim=True) * U[:, None]  # project ⟂ U
    return gU / nrm[:, None]


def _exact_gn(W, A, onehot, scale, batch_size):
    """Exact G = |∇L|² and N = Tr Σ₁ / B (with-replacement batches) from all n examples."""
    from .nsr import per_example_nsr

    C, n = W.shape[0], A.shape[0]
    per_ex = normalized_linear_grads(W, A.expand(C, n, A.shape[1])[:, :, None],
                                     onehot.expand(C, n, onehot.shape[1])[:, :, None], scale)
    return per_example_nsr(per_ex.flatten(2), batch_size, without_replacement=False)


def equilibrium_run(s: EquilibriumSettings, batch_size: int, l: int) -> dict:
    """SGD (l = 1: eq. 7) or SVAG (l > 1: eq. 5 with WD, per-step LR η/l) from a common random
    init, C chains side by side, batches drawn i.i.d. with replacement.

    Update: W ← (1 − (η/l)λ)W − (η/l)g with g the minibatch gradient (SGD: the mean of two
    independent half batches of B/2; SVAG: c1 g_γ1 + c2 g_γ2 of two independent batches of B).
    The online (G, N) of every step come from ``paperlib.nsr.online_nsr`` on the two halves
    (SGD) or the two batches (SVAG); N is reported at batch size B. After ``burn_steps`` base
    steps (l× as many actual steps), R = |W|², |g|², G, N are averaged over ``window_steps``
    base steps and over chains.

    Returns:
        dict with R, grad_sq, G, N, G_exact, N_exact (exact G and Tr Σ_B at every
        ``exact_every``-th base step of the window), R_drift = (R_end − R_start)/R, steps.
    """
    from .nsr import online_nsr

    B = _check_int("batch_size", batch_size, 2)
    l = _check_int("l", l, 1)
    A, onehot = normalized_linear_data(s)
    C, n = s.chains, s.n
    W = torch.randn(C, s.classes, s.dim, generator=seeding.generator(s.seed, 52), dtype=DT)
    gen = seeding.generator(s.seed, 51, B, l)
    lr = s.eta / l
    c1, c2 = svag_coefficients(l)
    b = B // 2 if l == 1 else B
    burn, window = s.burn_steps * l, s.window_steps * l
    acc = {k: torch.zeros(C, dtype=DT) for k in ("R", "grad_sq", "G", "N", "G_exact", "N_exact")}
    n_exact = 0
    R_start = None
    for k in range(burn + window):
        idx = torch.randint(n, (C, 2, b), generator=gen)
        g12 = normalized_linear_grads(W, A[idx], onehot[idx], s.logit_scale)  # [C, 2, K, dim]
        g = g12.mean(1) if l == 1 else c1 * g12[:, 0] + c2 * g12[:, 1]
        if k >= burn:
            R = W.square().sum((1, 2))
            R_start = R if R_start is None else R_start
            G, N = online_nsr(g12[:, 0].flatten(1), g12[:, 1].flatten(1), b, B)
            acc["R"] += R
            acc["grad_sq"] += g.square().sum((1, 2))
            acc["G"] += G
            acc["N"] += N
            if (k - burn) % (s.exact_every * l) == 0:
                Ge, Ne = _exact_gn(W, A, onehot, s.logit_scale, B)
                acc["G_exact"] += Ge
                acc["N_exact"] += Ne
                n_exact += 1
        W = (1 - lr * s.wd) * W - lr * g
    out = {k: float(v.mean()) / (n_exact if k.endswith("exact") else window)
           for k, v in acc.items()}
    R_end = W.square().sum((1, 2))
    out["R_drift"] = float((R_end - R_start).mean()) / out["R"]
    out["steps"] = burn + window
    return out


def norm_identity(R: float, grad_sq: float, *, eta: float, wd: float, l: int = 1):
    """Both sides of the equilibrium norm identity (eq. 10 set to zero, per-step LR η/l):
    (2 − ηλ/l) λ R = (η/l) E|g|². For SGD (l = 1) with E|g|² = G + N this is eq. (11); for SVAG,
    E|g|² = G + lN, and l → ∞ gives eq. (12), 2λR = ηN."""
    return (2 - eta * wd / l) * wd * R, eta / l * grad_sq


@_cached("equilibrium", "equilibrium")
def equilibrium(S: TheorySettings) -> pd.DataFrame:
    """Eqs. (11) and (12) at equilibrium, for SGD and SVAG (l = ``S.equilibrium.l``) at each B.

    Rows: one per (algorithm, B). Identity columns, all with G, N from the online estimator:
    SGD: lhs = (2 − ηλ)λR, rhs = η(G + N) (eq. 11); SVAG: lhs = 2λR, rhs = ηN (eq. 12, l → ∞),
    and ``rel_err_finite_l`` for the exact finite-l form (2 − ηλ/l)λR = (η/l)(G + lN).
    ``rel_err_grad_sq`` uses the measured E|g|² instead of G + N (only the window's R drift).
    """
    s = S.equilibrium
    rows = []
    for B in s.batch_sizes:
        for algorithm, l in (("sgd", 1), ("svag", s.l)):
            r = equilibrium_run(s, B, l)
            if algorithm == "sgd":
                lhs, rhs = norm_identity(r["R"], r["G"] + r["N"], eta=s.eta, wd=s.wd)
                fin = abs(lhs / rhs - 1)
            else:
                lhs, rhs = 2 * s.wd * r["R"], s.eta * r["N"]
                fl, fr = norm_identity(r["R"], r["G"] + l * r["N"], eta=s.eta, wd=s.wd, l=l)
                fin = abs(fl / fr - 1)
            gl, gr = norm_identity(r["R"], r["grad_sq"], eta=s.eta, wd=s.wd, l=l)
            rows.append(dict(algorithm=algorithm, B=B, l=l, eta=s.eta, wd=s.wd, **r, lhs=lhs,
                             rhs=rhs, rel_err=abs(lhs / rhs - 1), rel_err_finite_l=fin,
                             rel_err_grad_sq=abs(gl / gr - 1)))
    return pd.DataFrame(rows)


def thm52_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per B: SGD's equilibrium against the SDE's (SVAG at large l), Thm 5.2 / Def. 5.1.

    Columns: G_over_N (SGD's G/N), R_ratio = R∞/R̄∞, G_ratio, N_ratio (ηN∞/N̄∞ in the paper's
    units), R_ratio_pred = 2/(2 − ηλ) · (1 + G/N) · N∞/N̄∞ (eqs. 11 / 12), C_min (the smallest C
    for which the two equilibria are C-close, eq. 8) and bound = sqrt(1 + G/N): Thm 5.2 (ii)
    says C-closeness needs C² ≥ 1 + G∞/N∞, i.e. C_min ≥ bound.
    """
    sgd = df[df.algorithm == "sgd"].set_index("B")
    sde = df[df.algorithm == "svag"].set_index("B")
    out = pd.DataFrame({"G_over_N": sgd.G / sgd.N, "R_ratio": sgd.R / sde.R,
                        "G_ratio": sgd.G / sde.G, "N_ratio": sgd.N / sde.N})
    eta_wd = sgd.eta * sgd.wd
    out["R_ratio_pred"] = 2 / (2 - eta_wd) * (1 + out.G_over_N) * out.N_ratio
    ratios = out[["R_ratio", "G_ratio", "N_ratio"]]
    out["C_min"] = np.maximum(ratios, 1 / ratios).max(axis=1)
    out["bound"] = np.sqrt(1 + out.G_over_N)
    return out.reset_index()


# ============================================================================ App. B.1


LSR_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def lsr_samples(s: LSRSettings, *, kappa: int = 1, l: int = 1, seed: int = 0) -> np.ndarray:
    """x_T (x_0 = 0) for L_γ(x) = (μ + γ)x with γ centered Exp(1), i.e. gradient μ plus
    x-independent skewed noise: SVAG (eq. 5; l = 1 is SGD) with batch size κB and LR κη."""
    B, eta = kappa * s.batch_size, kappa * s.eta
    c1, c2 = svag_coefficients(l)
    rng = np.random.default_rng(seeding.derive_seed(seed, 61, kappa, l))
    x = np.zeros(s.paths)
    for _ in range(_steps(s.T, eta / l)):
        g = rng.exponential(size=(2 if l > 1 else 1, s.paths, B)).mean(2) - 1
        noise = g[0] if l == 1 else c1 * g[0] + c2 * g[1]
        x -= eta / l * (s.drift + noise)
    return x


def lsr_exact_k3(s: LSRSettings, l: int = 1) -> float:
    """Exact third cumulant of x_T: −(η/B)² T (3l − 1)/l² (κ3 of a centered Exp(1) is 2; at
    l = 1, −2T(η/B)², the same for every LSR pair (κB, κη)); the Itô SDE has 0."""
    return -((s.eta / s.batch_size) ** 2) * s.T * (3 * l - 1) / l**2


def _k3_se(x: np.ndarray, groups: int = 100) -> float:
    """Standard error of the k-statistic k3 from ``groups`` disjoint sub-samples."""
    parts = np.array_split(x, groups)
    return float(np.std([stats.kstat(p, 3) for p in parts], ddof=1) / math.sqrt(groups))


@_cached("lsr-sde", "lsr")
def lsr_vs_sde(S: TheorySettings) -> pd.DataFrame:
    """App. B.1: LSR pairs (κB, κη) and SVAG (l) at the base (B, η), against the Itô SDE
    X_T ~ N(−μT, Tη/B) (exact: the noise does not depend on x, the drift is constant).

    Rows: kind "sgd" (one per κ), "svag" (one per l), "sde" (exact Gaussian). Columns: kappa, l,
    mean, var, k3 (k-statistic) with k3_se, k3_exact, ks_p_base (two-sample KS p-value against the
    κ = 1 SGD run), ks_p_sde (one-sample KS p-value against the SDE), and the quantiles
    ``q<level>`` at ``LSR_LEVELS``.
    """
    s = S.lsr
    sde = stats.norm(loc=-s.drift * s.T, scale=math.sqrt(s.T * s.eta / s.batch_size))
    base = None
    rows = []
    runs = [("sgd", k, 1) for k in s.kappas] + [("svag", 1, l) for l in s.l_values]
    for kind, kappa, l in runs:
        x = lsr_samples(s, kappa=kappa, l=l, seed=s.seed + len(rows))
        if kind == "sgd" and kappa == 1:
            base = x
        row = dict(kind=kind, kappa=kappa, l=l, mean=x.mean(), var=x.var(ddof=1),
                   k3=stats.kstat(x, 3), k3_se=_k3_se(x), k3_exact=lsr_exact_k3(s, l),
                   ks_p_base=(stats.ks_2samp(x, base).pvalue
                              if base is not None and x is not base else np.nan),
                   ks_p_sde=stats.kstest(x, sde.cdf).pvalue)
        row.update({f"q{q:g}": v for q, v in zip(LSR_LEVELS, np.quantile(x, LSR_LEVELS),
                                                 strict=True)})
        rows.append(row)
    row = dict(kind="sde", kappa=1, l=np.inf, mean=sde.mean(), var=sde.var(), k3=0.0,
               k3_se=0.0, k3_exact=0.0, ks_p_base=np.nan, ks_p_sde=np.nan)
    row.update({f"q{q:g}": sde.ppf(q) for q in LSR_LEVELS})
    rows.append(row)
    return pd.DataFrame(rows)


# ============================================================================ App. B.3


def tail_index(x, block: int | None = None) -> float:
    """Block-sum tail-index estimator (Mohammadi et al. 2015, as used by Şimşekli et al. 2019).

    With K = K1·K2 samples X_j and Y_i the sums of K2 consecutive blocks of K1 X's,

        α̂ = ( (1/log K1) · ( (1/K2) Σ_i log|Y_i| − (1/K) Σ_j log|X_j| ) )⁻¹.

    For i.i.d. symmetric α-stable X, Y =_d K1^{1/α} X, so 1/α̂ is unbiased; for i.i.d. Gaussian
    X it is 2. The samples are the entries of ``x`` (e.g. the coordinates of one noise vector);
    the trailing len(x) − K1·K2 entries are dropped.

    Args:
        x: array-like of K ≥ 4 real samples (flattened).
        block: K1 ≥ 2 (default ⌊sqrt(K)⌋), with K2 = ⌊K / K1⌋ ≥ 1.

    Returns:
        α̂ as a float (inf if the difference of log-means is ≤ 0).

    Raises:
        ValueError: fewer than 4 samples, a bad block size, or non-finite / zero samples.
    """
    X = np.asarray(x, dtype=np.float64).ravel()
    if X.size < 4:
        raise ValueError(f"tail_index needs at least 4 samples, got {X.size}")
    K1 = int(math.isqrt(X.size)) if block is None else block
    if isinstance(K1, bool) or not isinstance(K1, int) or not 2 <= K1 <= X.size:
        raise ValueError(f"block must be an integer in [2, {X.size}], got {block!r}")
    K2 = X.size // K1
    X = X[: K1 * K2]
    if not np.all(np.isfinite(X)) or np.any(X == 0):
        raise ValueError("tail_index needs finite, nonzero samples")
    Y = X.reshape(K2, K1).sum(1)
    diff = (np.mean(np.log(np.abs(Y))) - np.mean(np.log(np.abs(X)))) / math.log(K1)
    return float(1 / diff) if diff > 0 else math.inf


def net_per_example_grads(s: TailSettings) -> torch.Tensor:
    """Per-example gradients ``[N, d]`` (float64) of the GroupNorm convnet at its seeded init on
    ``s.subset`` examples of the synthetic data set at ``s.resolution`` px."""
    import torch.nn.functional as F

    from .data import load_dataset, prepare
    from .models import build_model
    from .nsr import per_example_grads

    data = prepare(load_dataset("synthetic"), subset=s.subset, resolution=s.resolution,
                   seed=s.seed, dtype=DT)
    model = build_model("convnet", norm="gn", seed=s.seed).to(DT)
    return per_example_grads(model, None, data.train_x, data.train_y, F.cross_entropy,
                             chunk_size=128)


@_cached("tail-index", "tail")
def tail_index_experiment(S: TheorySettings) -> pd.DataFrame:
    """App. B.3: α̂ (:func:`tail_index`, K1 = ⌊sqrt d⌋) of ``vectors`` noise vectors per case,
    all of dimension d = the convnet's parameter count (less any parameter whose gradient is 0
    for every example, e.g. a dead unit on a tiny subset):

    * "gaussian": N(0, diag σ²) with log σ_j ~ N(0, s²), s = ``anisotropy`` (s = 0: isotropic);
    * "ngd": NGD noise Σ_i (w_i − 1/N)∇ℓ_i (``paperlib.ngd.ngd_weights``): exactly Gaussian,
      covariance Σ₁/B;
    * "sgd": g_B − ∇L for B examples drawn without replacement;
    * "gaussian-ngd-diag": N(0, diag(Σ₁)/B), the NGD noise's coordinate variances alone.
    """
    from .ngd import ngd_weights

    s = S.tail
    per_ex = net_per_example_grads(s)
    per_ex = per_ex[:, (per_ex != 0).any(0)]  # drop parameters no example moves (log 0)
    n, d = per_ex.shape
    grad = per_ex.mean(0)
    sd = ((per_ex - grad).square().mean(0) / s.batch_size).sqrt()
    rows = []
    for r in range(s.vectors):
        gen = seeding.generator(s.seed, 71, r)
        for aniso in s.anisotropy:
            z = torch.randn(d, generator=gen, dtype=DT)
            scale = torch.exp(aniso * torch.randn(d, generator=gen, dtype=DT))
            rows.append(dict(case="gaussian", anisotropy=aniso, replicate=r,
                             alpha_hat=tail_index((z * scale).numpy())))
        w = ngd_weights(n, s.batch_size, generator=gen)
        rows.append(dict(case="ngd", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index(((w - 1 / n) @ per_ex).numpy())))
        idx = torch.randperm(n, generator=gen)[: s.batch_size]
        rows.append(dict(case="sgd", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index((per_ex[idx].mean(0) - grad).numpy())))
        z = torch.randn(d, generator=gen, dtype=DT)
        rows.append(dict(case="gaussian-ngd-diag", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index((z * sd).numpy())))
    df = pd.DataFrame(rows)
    df["dim"], df["block"] = d, math.isqrt(d)
    return df


def tail_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of α̂ per case, labelled "gaussian s=<s>" for the
    Gaussian cases and by the case name otherwise."""
    label = df.case.where(df.anisotropy.isna(),
                          "gaussian s=" + df.anisotropy.map(lambda v: f"{v:g}"))
    out = df.assign(label=label).groupby("label", sort=False).alpha_hat
    return out.agg(["mean", "std", "count"]).reset_index()


# ============================================================================ figures


def _axes(ncols: int = 2, width: float = 10.0, height: float = 3.8):
    from .plots import plt  # pyplot, after paperlib.plots selected the Agg backend

    return plt.subplots(1, ncols, figsize=(width, height))


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINES = ("-", "--", ":", "-.")


def plot_lemma47(df: pd.DataFrame):
    """Left: max relative error over B of each Lemma 4.7 moment vs l (printed (iii) included).
    Right: |E Δ^{⊗3}|_F and sqrt(E|Δ|⁸) vs l per B, against an l⁻² guide."""
    fig, (ax1, ax2) = _axes()
    worst = df.dropna(subset=["rel_err"]).groupby(["moment", "l"]).rel_err.max().reset_index()
    for i, (moment, d) in enumerate(worst.groupby("moment", sort=False)):
        ax1.plot(d.l, np.maximum(d.rel_err, 1e-17), marker=_MARKERS[i], ls=_LINES[i % 4],
                 label=moment)
    ax1.axhline(1e-6, color="k", lw=0.8, ls=":", label="claim threshold 1e-6")
    ax1.set(xscale="log", yscale="log", xlabel="SVAG l", ylabel="max relative error over B",
            title="Lemma 4.7: enumeration vs formula")
    ax1.legend(fontsize=8)
    for i, (B, d) in enumerate(df.groupby("B")):
        t3, t4 = d[d.moment == "(iii)"], d[d.moment == "(iv)"]
        ax2.plot(t3.l, t3["norm"], marker="o", ls=_LINES[i % 4], label=f"|E Δ⊗3|, B={B}")
        ax2.plot(t4.l, t4["norm"], marker="s", mfc="none", ls=_LINES[i % 4],
                 label=f"sqrt(E|Δ|^8), B={B}")
    ls = np.array(sorted(df.l.unique()), dtype=float)
    top = df[df.moment.isin(["(iii)", "(iv)"])]["norm"].max()
    ax2.plot(ls, top * ls**-2.0, color="k", lw=0.8, ls=":", label="∝ l^-2")
    ax2.set(xscale="log", yscale="log", xlabel="SVAG l", ylabel="magnitude",
            title="(iii), (iv) are O(l^-2)")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_weak_ou(df: pd.DataFrame, fit_min_l: int):
    """Left: SVAG's weak error vs l at fixed η with the fitted slope (Thm 4.3: ∀T, η ∃l).
    Right: SGD's weak error vs η, next to how far the SDE itself is from gradient flow
    (Li et al. 2019a: ∀T ∃η)."""
    fig, (ax1, ax2) = _axes()
    sv = df[df.scheme == "svag"]
    slopes = ou_slopes(df, fit_min_l)
    for i, (g, d) in enumerate(sv.groupby("g")):
        (line,) = ax1.plot(d.l, d.error, marker=_MARKERS[i], ls="none",
                           label=f"g = {g}: slope {slopes[g]:.3f} (l ≥ {fit_min_l})")
        fit = d[d.l >= fit_min_l]
        coef = np.polyfit(np.log(fit.l), np.log(fit.error), 1)
        ls = np.array([fit.l.min(), fit.l.max()], dtype=float)
        ax1.plot(ls, np.exp(np.polyval(coef, np.log(ls))), color=line.get_color(),
                 ls=_LINES[i + 1])
    eta = sv.eta.iloc[0]
    noise = df[(df.scheme == "sde-gf") & np.isclose(df.eta, eta)]
    for i, (g, d) in enumerate(noise.groupby("g")):
        ax1.axhline(d.error.iloc[0], color="0.5", lw=0.8, ls=_LINES[i + 1],
                    label=f"SDE(η) vs gradient flow, g = {g}")
    ax1.set(xscale="log", yscale="log", xlabel=f"SVAG l (per-step LR η/l, η = {eta:g})",
            ylabel="|E g(x) − E g(X_T)|", title="Thm 4.3: ∀T, η ∃l: SVAG → SDE(η)")
    ax1.legend(fontsize=8)
    for i, (g, d) in enumerate(df[df.scheme == "sgd"].groupby("g")):
        ax2.plot(d.eta, d.error, marker=_MARKERS[i], ls="-", label=f"SGD vs SDE(η), g = {g}")
    for i, (g, d) in enumerate(df[df.scheme == "sde-gf"].groupby("g")):
        ax2.plot(d.eta, d.error, marker=_MARKERS[i], mfc="none", ls="--",
                 label=f"SDE(η) vs gradient flow, g = {g}")
    ax2.set(xscale="log", yscale="log", xlabel="SGD learning rate η",
            ylabel="weak error", title="∀T ∃η: SGD → SDE(η), and SDE(η) → GF alike")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weak_double_well(df: pd.DataFrame):
    """SVAG's weak error vs l on the double well (Monte Carlo, ±1 SE bars) against the finest
    Euler–Maruyama reference; the coarser EM reference's gap shows the reference's own error."""
    fig, ax = _axes(1, 5.6, 3.8)
    for i, (g, d) in enumerate(df[df.method == "svag"].groupby("g")):
        lower = np.minimum(d.error_se, 0.7 * d.error)
        ax.errorbar(d.l, d.error, yerr=[lower, d.error_se], marker=_MARKERS[i], ls=_LINES[i],
                    capsize=3, label=f"SVAG, g = {g}")
    floor = float(df.error_se.min())  # the Monte Carlo resolution
    ax.axhspan(floor / 4, floor, color="0.88", label="below 1 SE (Monte Carlo noise)")
    em = df[(df.method == "em")].dropna(subset=["error"])
    for i, (g, d) in enumerate(em.groupby("g")):  # shown at the floor when below it
        ax.plot(d.l, np.maximum(d.error, floor / 2), marker="x", ls="none", ms=8,
                color="0.4" if i else "0.1",
                label=f"EM dt = η/{int(d.l.iloc[0])} vs finest EM, g = {g}")
    first = df[(df.method == "svag")].groupby("g").error.first().max()
    ls = np.array(sorted(df[df.method == "svag"].l.unique()), dtype=float)
    ax.plot(ls, first / ls, color="k", lw=0.8, ls=":", label="∝ 1/l")
    ax.set(xscale="log", yscale="log", ylim=(floor / 4, None), xlabel="SVAG l",
           ylabel="|E g(x) − E g(X_T)| ± 1 SE", title="Double well, x-dependent skewed noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_equilibrium(df: pd.DataFrame):
    """Left: both sides of eq. (11) (SGD) and eq. (12) (SVAG, large l). Right: R∞/R̄∞ against
    SGD's G/N with the eqs. (11)–(12) prediction and Thm 5.2's bound on C."""
    fig, (ax1, ax2) = _axes()
    for i, (alg, d) in enumerate(df.groupby("algorithm")):
        label = "SGD, eq. (11)" if alg == "sgd" else f"SVAG l={int(d.l.iloc[0])}, eq. (12)"
        ax1.plot(d.rhs, d.lhs, marker=_MARKERS[i], ls="none", mfc="none" if i else None,
                 label=label)
    lim = np.array([0.0, df[["lhs", "rhs"]].max().max() * 1.1])
    ax1.plot(lim, lim, color="k", lw=0.8, label="lhs = rhs")
    ax1.fill_between(lim, lim * 0.95, lim * 1.05, color="0.85", label="±5 %")
    ax1.set(xlim=lim, ylim=lim, xlabel="rhs: η(G + N)  |  ηN",
            ylabel="lhs: (2 − ηλ)λR  |  2λR", title="Equilibrium norm identities")
    ax1.legend(fontsize=8)
    t = thm52_table(df).sort_values("G_over_N")
    ax2.plot(t.G_over_N, t.R_ratio, marker="o", ls="-", label="measured R∞ / R̄∞")
    ax2.plot(t.G_over_N, t.R_ratio_pred, marker="x", ls="none",
             label="eqs. (11)–(12): 2(1 + G/N)N/((2 − ηλ)N̄)")
    xs = np.geomspace(t.G_over_N.min(), t.G_over_N.max(), 50)
    ax2.plot(xs, 1 + xs, ls="--", color="0.3", label="1 + G/N (if N∞ = N̄∞)")
    ax2.plot(t.G_over_N, t.C_min, marker="^", mfc="none", ls="none", label="C_min (eq. 8)")
    ax2.plot(xs, np.sqrt(1 + xs), ls=":", color="0.3", label="Thm 5.2: C ≥ sqrt(1 + G/N)")
    ax2.set(xscale="log", xlabel="SGD's G∞/N∞ (larger B →)", ylabel="ratio",
            title="SGD vs SDE equilibria (Thm 5.2)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_lsr(df: pd.DataFrame):
    """Left: QQ plot of x_T for the LSR pairs (κB, κη) and large-l SVAG against the Itô SDE.
    Right: |κ3(x_T)| vs SVAG l against the LSR pairs (constant) and the SDE (0)."""
    fig, (ax1, ax2) = _axes()
    qcols = [c for c in df.columns if c.startswith("q")]
    ref = df[df.kind == "sde"][qcols].iloc[0].to_numpy()
    for i, (_, r) in enumerate(df[df.kind == "sgd"].iterrows()):
        ax1.plot(ref, r[qcols].to_numpy(dtype=float), marker=_MARKERS[i], ls="none",
                 mfc="none" if i % 2 else None, label=f"SGD (κB, κη), κ = {int(r.kappa)}")
    last = df[df.kind == "svag"].iloc[-1]
    ax1.plot(ref, last[qcols].to_numpy(dtype=float), marker="*", ls="none",
             label=f"SVAG l = {int(last.l)}")
    lim = [ref.min(), ref.max()]
    ax1.plot(lim, lim, color="k", lw=0.8, label="Itô SDE (2)")
    ax1.set(xlabel="SDE quantile", ylabel="quantile of x_T",
            title="App. B.1: the LSR pairs agree, not with the SDE")
    ax1.legend(fontsize=8)
    sv = df[df.kind == "svag"]
    ax2.errorbar(sv.l, sv.k3.abs(), yerr=np.minimum(sv.k3_se, 0.999 * sv.k3.abs()),
                 marker="o", ls="none", capsize=3, label="SVAG (Monte Carlo ± 1 SE)")
    ax2.plot(sv.l, sv.k3_exact.abs(), ls="--", color="0.3", label="SVAG exact (3l − 1)/l²")
    pairs = df[df.kind == "sgd"]
    kappas = ", ".join(str(int(k)) for k in pairs.kappa)
    ax2.axhline(pairs.k3.abs().mean(), color="k", ls=":", label=f"every LSR pair, κ = {kappas}")
    ax2.set(xscale="log", yscale="log", xlabel="SVAG l at the base (B, η)",
            ylabel="|third cumulant of x_T|", title="Itô SDE: κ3 = 0")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_tail_index(df: pd.DataFrame, anisotropy_claim: float):
    """Left: α̂ of Gaussian vectors vs anisotropy. Right: α̂ per case (every replicate)."""
    fig, (ax1, ax2) = _axes()
    gs = df[df.case == "gaussian"].groupby("anisotropy").alpha_hat.agg(["mean", "std"])
    ax1.errorbar(gs.index, gs["mean"], yerr=gs["std"], marker="o", capsize=3,
                 label="N(0, diag σ²), log σ_j ~ N(0, s²)")
    for ax in (ax1, ax2):
        ax.axhline(2.0, color="k", lw=0.8, label="α = 2 (Gaussian)")
        ax.axhline(1.8, color="k", lw=0.8, ls=":", label="claim threshold 1.8")
    ax1.set(xlabel="anisotropy s (std of log σ_j)", ylabel="tail index α̂ (mean ± sd)",
            title="Block-sum estimator on Gaussian vectors")
    ax1.legend(fontsize=8)
    cases = [("isotropic\nGaussian", (df.case == "gaussian") & (df.anisotropy == 0)),
             (f"Gaussian\ns = {anisotropy_claim:g}",
              (df.case == "gaussian") & (df.anisotropy == anisotropy_claim)),
             ("Gaussian,\nNGD diag", df.case == "gaussian-ngd-diag"),
             ("NGD noise\n(Gaussian)", df.case == "ngd"), ("SGD noise", df.case == "sgd")]
    for i, (_, mask) in enumerate(cases):
        v = df[mask].alpha_hat.to_numpy()
        jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
        ax2.plot(i + jitter, v, ls="none", marker=_MARKERS[i], mfc="none", color="0.3")
        ax2.plot([i - 0.25, i + 0.25], [v.mean()] * 2, color="k", lw=2)
    ax2.set_xticks(range(len(cases)), [c[0] for c in cases], fontsize=8)
    ax2.set(ylabel="tail index α̂", title=f"d = {int(df.dim.iloc[0])}, K1 = {int(df.block.iloc[0])}")
    fig.tight_layout()
    return fig


# ============================================================================ claim statistics


def lsr_summary(df: pd.DataFrame) -> dict[str, float]:
    """Statistics behind App. B.1's claims, from :func:`lsr_vs_sde`'s frame.

    Returns:
        ``pairs_min_ks_p``: smallest two-sample KS p-value of an LSR pair (κ > 1) against κ = 1;
        ``pairs_max_k3_z``: largest |κ3(κ) − κ3(1)| / SE among the pairs;
        ``sde_max_ks_p``: largest KS p-value of an LSR pair against the SDE's Gaussian;
        ``sde_min_k3_z``: smallest |κ3| / SE of an LSR pair (the SDE has κ3 = 0).
    """
    sgd = df[df.kind == "sgd"]
    base = sgd[sgd.kappa == 1].iloc[0]
    pairs = sgd[sgd.kappa != 1]
    z = (pairs.k3 - base.k3).abs() / np.sqrt(pairs.k3_se**2 + base.k3_se**2)
    return {"pairs_min_ks_p": float(pairs.ks_p_base.min()), "pairs_max_k3_z": float(z.max()),
            "sde_max_ks_p": float(sgd.ks_p_sde.max()),
            "sde_min_k3_z": float((sgd.k3.abs() / sgd.k3_se).min())}
