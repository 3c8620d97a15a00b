"""How a step's batches were drawn (:class:`Sampling`) and when a net's examples interact
through the batch (train-mode BatchNorm): the two facts that decide which G/N estimator of
Sec. 5 is unbiased (the finite-population factors are in :mod:`paperlib.nsr`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .nsr import sampler_population
from .validate import is_int

__all__ = ["SAMPLING_SCHEMES", "Sampling", "batch_coupled", "frozen_batchnorm_stats",
           "need_sampling", "warn_if_coupled_disjoint"]

SAMPLING_SCHEMES = ("without_replacement", "independent_draws", "with_replacement")


@dataclass(frozen=True)
class Sampling:
    """How a step's batches were drawn from the training set of ``n`` examples.

    * ``"without_replacement"`` (:meth:`shuffled`): the batches of one step are disjoint slices of
      one random permutation of the n examples: a shuffled ``DataLoader``'s consecutive batches,
      one batch split in halves, or one batch of 2B split into SVAG's two batches.
    * ``"independent_draws"`` (:meth:`independent`): each batch is its own without-replacement
      draw of b of the n examples, independent of the step's other batch (the two may overlap).
    * ``"with_replacement"`` (:meth:`with_replacement`): examples drawn i.i.d. uniformly with
      replacement (``RandomSampler(replacement=True)``); n is not needed and must be None.

    Getting this wrong biases G: two disjoint batches of one permutation have
    Cov(g1, g2) = −Σ₁/(n − 1), so ⟨g1, g2⟩ underestimates G by Tr Σ₁/(n − 1).

    With train-mode BatchNorm a batch gradient is not a mean of fixed per-example gradients, so
    that correction is not exact for two disjoint batches (a bias of order B/n; on n = 8, B = 3
    exact enumeration gave E Ĝ = 1.91 G): draw a batch-coupled net's second batch independently
    (``independent`` or ``with_replacement``) for an unbiased estimate. The step functions warn.

    Raises:
        ValueError: unknown scheme, n missing or < 2 for a without-replacement scheme, or n given
            with ``"with_replacement"``.
    """

    scheme: str
    n: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SAMPLING_SCHEMES:
            raise ValueError(f"scheme={self.scheme!r} is not allowed; choose one of "
                             f"{list(SAMPLING_SCHEMES)}")
        if self.scheme == "with_replacement":
            if self.n is not None:
                raise ValueError(f"n={self.n!r} is not used with 'with_replacement' sampling "
                                 "(the estimator needs no population size); leave it None")
        elif not is_int(self.n) or self.n < 2:
            ctor = {"without_replacement": "Sampling.shuffled(n)",
                    "independent_draws": "Sampling.independent(n)"}.get(self.scheme, "n")
            raise ValueError(f"n={self.n!r} is not allowed; {ctor} ({self.scheme!r} sampling) "
                             "needs the data set size, an integer >= 2")

    @classmethod
    def shuffled(cls, n: int) -> Sampling:
        """Disjoint batches of one permutation of n examples (a shuffled DataLoader)."""
        return cls("without_replacement", n)

    @classmethod
    def independent(cls, n: int) -> Sampling:
        """Each batch an independent without-replacement draw from n examples."""
        return cls("independent_draws", n)

    @classmethod
    def with_replacement(cls) -> Sampling:
        """Examples drawn i.i.d. with replacement."""
        return cls("with_replacement")

    @classmethod
    def from_sampler(cls, kind: str, n: int) -> Sampling:
        """The scheme of a batch of one of paperlib's samplers (``constants.SAMPLERS``): every
        kind but "replacement" draws a batch without replacement, so its parts are disjoint."""
        n_pop = sampler_population(kind, n)
        return cls.with_replacement() if n_pop is None else cls.shuffled(n_pop)

    @property
    def population(self) -> int | None:
        """The estimator's population size: n, or None for sampling with replacement."""
        return self.n

    @property
    def disjoint(self) -> bool:
        """Whether two batches of one step are disjoint parts of one without-replacement draw."""
        return self.scheme == "without_replacement"


def batch_coupled(model: torch.nn.Module) -> bool:
    """True when examples of a batch interact: a BatchNorm layer in training mode."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
               for m in model.modules())


class frozen_batchnorm_stats:
    """Context manager: BatchNorm running statistics are restored on exit (an extra batch drawn
    only to measure G/N must not change the trained model's state)."""

    def __init__(self, model: torch.nn.Module):
        self.bns = [m for m in model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.bns]

    def __exit__(self, *exc):
        for m, s in zip(self.bns, self.saved, strict=True):
            m.load_state_dict(s)
        return False


def warn_if_coupled_disjoint(sampling: Sampling) -> None:
    if sampling.disjoint:
        warnings.warn("G/N of a train-mode BatchNorm net from two disjoint batches of one "
                      "permutation is biased by O(B/n) (see paperlib.Sampling); draw the second "
                      "batch independently for an unbiased estimate", stacklevel=3)


def need_sampling(sampling: Sampling | None, what: str) -> Sampling:
    if not isinstance(sampling, Sampling):
        raise ValueError(f"{what} needs sampling=paperlib.Sampling(...) (how the batches were "
                         f"drawn decides the unbiased estimator), got {sampling!r}")
    return sampling
