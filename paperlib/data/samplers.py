"""The paper's minibatch samplers (Appendix: reshuffle, iid, with replacement, fixed order), each
a pure function of (seed, step, device type): a resumed run draws the batches an uninterrupted one
would.

Indices are drawn on the training device with a generator there (no host work or copy per step).
On the CPU this is the stream paperlib has always drawn. A CUDA generator draws a different stream
from the same seed than the CPU one, so CUDA runs see other (equally distributed) batches than the
same config on the CPU, as they already did for augmentation and NGD noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from paperlib import seeding
from paperlib.constants import SAMPLERS
from paperlib.validate import is_int


@lru_cache(maxsize=4)
def _permutation(n: int, device: torch.device, *keys: int) -> torch.Tensor:
    """randperm(n) on ``device`` from ``seeding.generator(*keys, device=device)`` (cached:
    reshuffle slices one permutation for a whole epoch)."""
    return torch.randperm(n, generator=seeding.generator(*keys, device=device), device=device)


@dataclass(frozen=True)
class Sampler:
    """Minibatch indices as a pure function of (seed, step): the paper's sampling schemes.

    Attributes:
        kind: "reshuffle" (new permutation each epoch, consecutive slices, drop_last), "iid"
            (each batch independent, distinct indices within it), "replacement" (uniform with
            replacement) or "fixed" (one permutation from the seed, same order every epoch).
        n: number of training examples.
        batch_size: B, 1 <= B <= n.
        seed: non-negative run seed (stream ``STREAM_BATCH``).
    """

    kind: str
    n: int
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; expected one of {SAMPLERS}")
        for field, value in (("n", self.n), ("batch_size", self.batch_size), ("seed", self.seed)):
            if not is_int(value):
                raise ValueError(f"{field} must be an int, got {value!r}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 1 <= self.batch_size <= self.n:
            raise ValueError(
                f"batch_size must satisfy 1 <= batch_size <= n={self.n}, got {self.batch_size}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def steps_per_epoch(self) -> int:
        """n // batch_size (a nominal epoch for "iid" and "replacement")."""
        return self.n // self.batch_size

    def indices(self, step: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """The batch of step ``step`` (0-based): int64 [batch_size], drawn on ``device``.

        The draw uses a generator on ``device``: on the CPU bitwise the stream paperlib always
        drew. On CUDA the stream differs from the CPU's, and from paperlib before the split of
        ``paperlib.data``, which drew on the host and copied the indices over: a CUDA run
        retrained with this code sees other batches than before (from the same distribution),
        and one resumed across the change mixes the two streams; statistically equivalent, not
        bitwise equal. CPU runs (all committed results) are unaffected.

        Raises:
            ValueError: step not a non-negative int.
        """
        if not is_int(step) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step, device = int(step), torch.device(device)
        b, stream = self.batch_size, seeding.STREAM_BATCH
        if self.kind in ("reshuffle", "fixed"):
            epoch, pos = divmod(step, self.steps_per_epoch)
            keys = (self.seed, stream, epoch) if self.kind == "reshuffle" else (self.seed, stream)
            # clone: a caller that writes into its batch must not change the cached permutation
            return _permutation(self.n, device, *keys)[pos * b : (pos + 1) * b].clone()
        g = seeding.generator(self.seed, stream, step, device=device)
        if self.kind == "iid":  # distinct within the batch: the first B of a permutation of n
            return torch.randperm(self.n, generator=g, device=device)[:b]
        return torch.randint(0, self.n, (b,), generator=g, device=device)
