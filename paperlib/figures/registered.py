"""The runs and claims of a registered figure id (``paperlib.notebooks.FIGURES``), as its
notebook computes them: the registry's parameters at a preset → the figure module's configs,
and a tidy frame → the figure module's claims. Used by ``paperlib verify`` and the tests; each
notebook makes the same one call."""

from __future__ import annotations

import pandas as pd

from ..claims import Claim
from ..config import RunConfig
from . import fig1, fig3, fig4, sampling

TRAINING_NOTEBOOKS = ("fig1", "fig3_lsr", "fig4_svag", "sampling")


def configs(notebook: str, p: dict) -> list[RunConfig] | None:
    """The RunConfigs of ``notebook`` with its parameters ``p`` (the notebook's defaults with
    the registry's values, ``notebooks.registered_parameters``); None for a notebook that does
    not train runs (theory, the monitor's plain-loop MLP)."""
    preset = p["PRESET"]
    if notebook == "fig1":
        return fig1.configs(preset, seeds=p["SEEDS"], gap_batch_sizes=p["GAP_BATCH_SIZES"],
                            gap_seeds=p["GAP_SEEDS"], batch_size=p["BATCH_SIZE"],
                            width=p["WIDTH"])
    if notebook == "fig3_lsr":
        return fig3.configs(preset, batch_sizes=p["BATCH_SIZES"] or None, seeds=p["SEEDS"],
                            arch=p["ARCH"], norm=p["NORM"], width=p["WIDTH"],
                            dataset=p["DATASET"])
    if notebook == "fig4_svag":
        return fig4.configs(preset, ls=p["LS"], seeds=p["SEEDS"],
                            panels=[tuple(x) for x in p["PANELS"]] or None, arch=p["ARCH"],
                            norm=p["NORM"], width=p["WIDTH"], schedule=p["SCHEDULE"],
                            dataset=p["DATASET"])
    if notebook == "sampling":
        return sampling.configs(preset, samplers=p["SAMPLERS"], seeds=p["SEEDS"])
    return None


def claims(notebook: str, p: dict, df: pd.DataFrame, first: RunConfig) -> list[Claim]:
    """The claims of ``notebook`` from its tidy frame (``first``: its first run's config, the
    main batch size of Fig 1)."""
    if notebook == "fig1":
        return fig1.claims(df, first.batch_size)
    if notebook == "fig3_lsr":
        return fig3.claims(df, C=p["C2"] ** 0.5)
    if notebook == "fig4_svag":
        return fig4.claims(df)
    if notebook == "sampling":
        return sampling.claims(df)
    raise ValueError(f"notebook={notebook!r} trains no runs; choose one of "
                     f"{list(TRAINING_NOTEBOOKS)}")
