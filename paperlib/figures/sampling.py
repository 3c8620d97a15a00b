"""App. F, sampling schemes: the SDE view models SGD's noise through its covariance only, so
how batches are drawn (reshuffled epochs, independent draws, with replacement, a fixed
order) should barely change the outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim, check
from ..sweeps import final_test_acc, sweep
from .common import base_config, check_seeds, eq11_claims, group_means, interval_of, spread

SETTINGS = {
    # The authors' sampling configs: 160 epochs, ×0.1 at epochs 80 and 120.
    "paper": dict(arch="preresnet32", norm="bn", batch_size=128, lr=0.8, epochs=160.0,
                  milestones=(80.0, 120.0), schedule_unit="epoch", log_every=50,
                  eval_every=500),
    "cpu": dict(),
    "smoke": dict(),
}
SAMPLERS = ("reshuffle", "iid", "replacement", "fixed")

BARELY_MATTERS = 2.0  # points: max − min over samplers of the mean final test accuracy


def configs(preset_name: str = "cpu", samplers=SAMPLERS, seeds=(0, 1, 2), **overrides):
    base = base_config(preset_name, SETTINGS, **overrides)
    return [base.replace(algo="sgd", sampler=s, seed=seed) for s in samplers
            for seed in check_seeds(seeds)]


def run(preset_name: str = "cpu", *, root=None, workers=None, **kw):
    """(tidy frame, results) of :func:`configs` (trained where missing)."""
    return sweep(configs(preset_name, **kw), root=root, workers=workers)


def claims(df: pd.DataFrame) -> list[Claim]:
    final = final_test_acc(df)
    names = sorted(final["sampler"].unique())
    est, dof, how = group_means(final, {s: {"sampler": s} for s in names})
    means = [est[s][0] for s in names]
    text = "; ".join(f"{s}: {spread(final, sampler=s)}" for s in names)
    return [check("App.: sampling scheme barely matters (max − min of mean final test acc)",
                  "curves overlap", max(means) - min(means), "<=", BARELY_MATTERS,
                  interval=interval_of(lambda **m: np.ptp(np.stack(list(m.values())), axis=0),
                                       est, dof, how), seeds=text),
            *eq11_claims(df)]
