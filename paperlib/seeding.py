"""Counter-based seeding: every random draw is a pure function of (seed, stream, step).

A run that is killed and resumed at step k therefore draws exactly the batches, augmentations
and NGD noise it would have drawn without the interruption; no generator state is checkpointed.
"""

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. ``derive_seed(seed, STREAM_BATCH, step)``.

    Uses numpy's SeedSequence (good mixing, no collisions between nearby keys).
    """
    for k in keys:
        if int(k) < 0:
            raise ValueError(f"seed keys must be non-negative integers, got {keys!r}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by ``derive_seed(*keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g


# Streams: one integer per independent source of randomness in a run.
STREAM_BATCH = 1  # minibatch indices (samplers)
STREAM_AUGMENT = 2  # random crop / flip
STREAM_NGD = 3  # NGD's z ~ N(0, I_N)
STREAM_EXTRA = 4  # the extra independent batch of the online NSR estimate (BN nets)
STREAM_SUBSET = 5  # the fixed training subset
STREAM_INIT = 6  # model initialization
