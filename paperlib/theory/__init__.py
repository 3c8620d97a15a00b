"""Theory made visible: cheap, exact (or well-resolved Monte Carlo) checks of the paper's math.

One module per result, each with its experiment ``f(S) -> pandas.DataFrame`` (``S`` the
:class:`TheorySettings` of a preset, ``settings("smoke" | "cpu" | "paper")``), its summaries and
its claims (named thresholds, an uncertainty and a three-way verdict, :mod:`paperlib.claims`):

* :mod:`.moments`: one-step moments of SVAG (Lemma 4.7) by enumerating every batch pair.
* :mod:`.weak_ou`: Thm 4.3's order-1 weak error of SVAG on an Ornstein–Uhlenbeck model with
  skewed, x-independent noise, exactly through cumulant recursions; SGD's error vs η.
* :mod:`.weak_double_well`: the same on a nonlinear model with x-dependent noise, by Monte
  Carlo against a torchsde Euler–Maruyama reference.
* :mod:`.equilibrium_norms`: eqs. (10)–(12) and Thm 5.2 on a scale-invariant normalized
  linear model.
* :mod:`.lsr_sde`: App. B.1, the LSR holds exactly while the Itô SDE fails.
* :mod:`.tails`: App. B.3, the block-sum tail-index estimator calls Gaussian noise
  heavy-tailed.

Results of the ``cpu`` and ``paper`` presets are stored like training runs, checksummed, under
``<store>/theory/`` (:mod:`.cache`); ``smoke`` always recomputes. Their figures are drawn by
:mod:`paperlib.plots`. Each theory notebook calls the experiments, the plots and one claims
function: :func:`sde_claims` (``theory-sde``) or :func:`noise_claims` (``theory-noise``).
"""

from __future__ import annotations

import pandas as pd

from ..claims import Claim
from .cache import CACHE_VERSION, cached, fmt, result_dir
from .equilibrium_norms import (
    equilibrium,
    equilibrium_claims,
    equilibrium_run,
    normalized_linear_data,
    normalized_linear_grads,
    thm52_table,
)
from .lsr_sde import (
    LSR_LEVELS,
    k3_se,
    lsr_claims,
    lsr_exact_k3,
    lsr_samples,
    lsr_summary,
    lsr_vs_sde,
)
from .moments import (
    batch_population,
    lemma47,
    lemma47_claims,
    lemma47_formulas,
    lemma47_summary,
    lemma47_toy,
    svag_increment_moments,
)
from .settings import (
    DoubleWellSettings,
    EquilibriumSettings,
    LemmaSettings,
    LSRSettings,
    OUSettings,
    TailSettings,
    TheorySettings,
    settings,
)
from .tails import tail_claims, tail_index, tail_index_experiment, tail_summary
from .weak_double_well import (
    SequentialBrownian,
    double_well_em,
    double_well_svag,
    register_brownian,
    weak_error_double_well,
)
from .weak_ou import (
    OUModel,
    loglog_slope,
    moments_from_cumulants,
    ou_claims,
    ou_noise_cumulant,
    ou_sde_cumulants,
    ou_slopes,
    ou_svag_cumulants,
    simulate_ou_svag,
    weak_error_ou,
)


def sde_claims(S: TheorySettings, *, lemma: pd.DataFrame, ou: pd.DataFrame,
               lsr: pd.DataFrame) -> list[Claim]:
    """The ``theory-sde`` notebook's claims: Lemma 4.7, Thm 4.3 (OU model), App. B.1."""
    return [*lemma47_claims(lemma, S.lemma), *ou_claims(ou, S.ou), *lsr_claims(lsr, S.lsr)]


def noise_claims(S: TheorySettings, *, eq: pd.DataFrame, tails: pd.DataFrame) -> list[Claim]:
    """The ``theory-noise`` notebook's claims: eqs. (11)–(12), Thm 5.2, App. B.3."""
    return [*equilibrium_claims(eq, S.equilibrium), *tail_claims(tails, S.tail)]


__all__ = [
    "CACHE_VERSION", "DoubleWellSettings", "EquilibriumSettings", "LSRSettings", "LSR_LEVELS",
    "LemmaSettings", "OUModel", "OUSettings", "SequentialBrownian", "TailSettings",
    "TheorySettings", "batch_population", "cached", "double_well_em", "double_well_svag",
    "equilibrium", "equilibrium_claims", "equilibrium_run", "fmt", "k3_se", "lemma47",
    "lemma47_claims", "lemma47_formulas", "lemma47_summary", "lemma47_toy", "loglog_slope",
    "lsr_claims", "lsr_exact_k3", "lsr_samples", "lsr_summary", "lsr_vs_sde",
    "moments_from_cumulants", "noise_claims", "normalized_linear_data",
    "normalized_linear_grads", "ou_claims", "ou_noise_cumulant", "ou_sde_cumulants",
    "ou_slopes", "ou_svag_cumulants", "register_brownian", "result_dir", "sde_claims",
    "settings", "simulate_ou_svag", "svag_increment_moments", "tail_claims", "tail_index",
    "tail_index_experiment", "tail_summary", "thm52_table", "weak_error_double_well",
    "weak_error_ou",
]
