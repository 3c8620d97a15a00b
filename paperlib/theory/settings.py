"""The sizes of every theory experiment: one frozen dataclass per result and the smoke / cpu /
paper presets (:func:`settings`). Validation uses :mod:`paperlib.config`'s validators.

A settings dataclass's fields (``dataclasses.asdict``) name its stored result
(:mod:`paperlib.theory.cache`): renaming a field or changing a default renames every result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..constants import PRESETS
from ..validate import as_real, check_choice, check_int, check_ints, check_number

DT = torch.float64  # every theory computation is float64


def check_pos(name: str, value) -> float:
    """``value`` as a float when it is a finite number > 0, else ValueError naming it."""
    v = as_real(name, value)
    check_number(name, v, 0, low_open=True)
    return v


def n_steps(T: float, step_lr: float) -> int:
    """Number of steps T / step_lr, which must be an integer (to within 1e-9): Thm 4.3 compares
    SVAG after lT/η steps of LR η/l with the SDE at time T."""
    k = T / step_lr
    if abs(k - round(k)) > 1e-9 * max(1.0, k):
        raise ValueError(f"T / (per-step LR) must be an integer, got T={T}, LR={step_lr}")
    return int(round(k))


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
        check_int("n", self.n, 2)
        check_int("d", self.d, 1)
        check_ints("batch_sizes", self.batch_sizes)
        if self.n ** (2 * max(self.batch_sizes)) > 5_000_000:
            raise ValueError(f"n^(2B) must be <= 5e6 to enumerate, got n={self.n}, "
                             f"B={max(self.batch_sizes)}")
        check_ints("l_values", self.l_values)
        check_pos("eta", self.eta)


@dataclass(frozen=True)
class OUSettings:
    """Thm 4.3 on L(x) = ½xᵀAx with x-independent skewed noise: SDE (2) is an OU process."""

    eta: float = 0.5  # η: SGD LR whose SDE is the target; SVAG uses η/l
    T: float = 2.0  # effective (continuous) time of the comparison
    l_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # SVAG l
    fit_min_l: int = 16  # slope fitted over l >= fit_min_l (the asymptotic tail)
    sgd_etas: tuple[float, ...] = tuple(0.5 / 2**j for j in range(9))  # SGD LR sweep at fixed T

    def __post_init__(self):
        check_pos("eta", self.eta)
        check_pos("T", self.T)
        check_ints("l_values", self.l_values)
        if sum(v >= self.fit_min_l for v in self.l_values) < 2:
            raise ValueError(f"fit_min_l={self.fit_min_l} leaves fewer than 2 l values to fit")
        for e in self.sgd_etas:
            n_steps(self.T, check_pos("sgd_etas entry", e))
        n_steps(self.T, self.eta)


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
            check_pos(name, getattr(self, name))
        check_number("p", self.p, 0, 1, low_open=True, high_open=True)
        check_ints("l_values", self.l_values)
        check_ints("dt_divisors", self.dt_divisors)
        check_int("paths", self.paths, 2)
        n_steps(self.T, self.eta)


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
        check_ints("batch_sizes", self.batch_sizes)
        if any(b % 2 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be even (two half batches), got {self.batch_sizes}")
        for name in ("eta", "wd", "burn_in", "window", "logit_scale"):
            check_pos(name, getattr(self, name))
        if self.eta * self.wd >= 1:
            raise ValueError(f"eta * wd must be < 1, got {self.eta * self.wd}")
        check_int("l", self.l, 1)
        for name in ("chains", "n", "dim", "classes", "exact_every"):
            check_int(name, getattr(self, name), 1)

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
        check_int("batch_size", self.batch_size, 1)
        for name in ("eta", "T"):
            check_pos(name, getattr(self, name))
        check_ints("kappas", self.kappas)
        check_ints("l_values", self.l_values)
        check_int("paths", self.paths, 10)
        for k in self.kappas:
            n_steps(self.T, k * self.eta)


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
        check_int("vectors", self.vectors, 1)
        if self.anisotropy_claim not in self.anisotropy or any(s < 0 for s in self.anisotropy):
            raise ValueError(f"anisotropy must be >= 0 and contain anisotropy_claim, got "
                             f"{self.anisotropy!r} / {self.anisotropy_claim!r}")
        check_int("subset", self.subset, 2)
        check_int("batch_size", self.batch_size, 1)
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
    to seconds (and is never stored); ``paper`` enlarges samples, l ranges and runs (minutes to
    an hour on a CPU).

    Raises:
        ValueError: unknown preset.
    """
    check_choice("preset", preset, PRESETS)
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
