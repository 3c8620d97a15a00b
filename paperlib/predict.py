"""Thm 5.6 from one run (``python -m paperlib predict-lsr``): a stored run folder, or the CSV log
of the user's own training. The prediction needs G and N at a constant-LR equilibrium of SGD
(Sec. 5), so a stored run is checked first.

Refused (ValueError): a folder that is not an intact finished run, a run that is not SGD, a run
that diverged (the message gives the step), and a run that has no equilibrium window: no weight
decay (R then grows without bound), no constant-LR phase (cosine / triangle schedules), or a
constant-LR phase shorter than ``RELAX_STEPS`` / (ηλ) steps. |x|² relaxes towards its equilibrium
at rate about 2ηλ per step, so the window (the phase's second half) then starts before R has
had one relaxation time to settle. A run that has a window gets its prediction, with a warning
when the window does not look stationary: R drifting by more than ``MAX_DRIFT`` over it, or
eq. (11) missed by more than ``MAX_EQ11_GAP``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .config import RunConfig
from .equilibrium import eq11_applies, equilibrium_stats, first_decay_step, run_equilibrium_stats
from .history import read_history
from .lsr import critical_kappa, predict_critical_batch, predict_critical_batch_approx
from .models import is_scale_invariant
from .store import load_manifest
from .validate import is_int

RELAX_STEPS = 2.0  # the constant-LR phase must last ≥ RELAX_STEPS / (ηλ) steps
MAX_DRIFT = 0.05  # |ΔR| / R over the window (the figures' eq. 11 claims use the same bound)
MAX_EQ11_GAP = 0.05  # relative gap of (2 − ηλ)λR = η(G + N), eq. (11)


def load_run(run_dir: Path) -> tuple[RunConfig, dict]:
    """The config and manifest of a finished run folder, or ValueError saying what is wrong."""
    d = Path(run_dir)
    manifest = load_manifest(d)
    if manifest is None:
        raise ValueError(f"run_dir={str(d)!r} is not an intact run folder (no manifest whose "
                         "checksums match); give a folder data/runs/<id> of a finished run")
    if manifest["status"] == "partial":
        raise ValueError(f"run {d.name} is partial (stopped at step {manifest.get('step')}); "
                         "finish it first (train it again: it resumes from its checkpoint)")
    return RunConfig.from_dict(json.loads((d / "config.json").read_text())), manifest


def equilibrium_problems(config: RunConfig) -> str | None:
    """Why the run has no constant-LR equilibrium window (None when it has one)."""
    if config.wd == 0:
        return "it has no weight decay (λ = 0): |x|² grows without bound, so there is no " \
               "equilibrium (Sec. 5 needs λ > 0)"
    if config.schedule not in ("constant", "step"):
        return f"its LR never stays constant (schedule={config.schedule!r}); Thm 5.6 needs " \
               "G and N from a constant-LR phase"
    first_lr_decay = min(config.milestones) if config.schedule == "step" and config.milestones \
        else float("inf")
    if config.wd_milestones and min(config.wd_milestones) < first_lr_decay:
        return "its weight decay changes during the constant-LR phase (wd_milestones)"
    end = first_decay_step(config)
    eta_lambda = config.step_lr * config.wd
    needed = RELAX_STEPS / eta_lambda
    if end < needed:
        return (f"its constant-LR phase lasts {end:.0f} steps, shorter than {RELAX_STEPS:g}/(ηλ) "
                f"= {needed:.0f} steps (ηλ = {eta_lambda:.3g}): |x|² cannot settle at its "
                "equilibrium; train longer before the first LR decay")
    return None


def _window(window) -> dict:
    """``(START, END)`` as equilibrium_stats' phase arguments (the whole range)."""
    start, end = window
    if not start < end:
        raise ValueError(f"window ({start:g}, {end:g}]: START must be below END")
    return {"start": float(start), "end": float(end), "start_frac": 0.0}


def predict_from_run(run_dir: Path, C: float = 2 ** 0.5, window=None) -> list[str]:
    """The lines ``predict-lsr`` prints for a stored run: the window, G and N, κ* and B*, and
    any warning. ``window``: (start, end] in effective steps instead of the second half of the
    constant-LR phase."""
    config, manifest = load_run(run_dir)
    name = Path(run_dir).name
    if config.update_rule != "sgd":
        raise ValueError(f"run {name} uses algo={config.algo!r}; Thm 5.6 needs an SGD baseline "
                         "run")
    if manifest["status"] == "diverged":
        raise ValueError(f"run {name} diverged at step {manifest.get('diverged_step')} (its loss "
                         "or weights became non-finite); Thm 5.6 needs a run that reached "
                         "equilibrium")
    if window is None:
        problem = equilibrium_problems(config)
        if problem:
            raise ValueError(f"run {name} has no constant-LR equilibrium window: {problem}")
    return predict(config, read_history(Path(run_dir) / "history.csv"), C, window=window)


def predict_from_csv(path: Path, batch_size: int, l: float = 1.0, C: float = 2 ** 0.5,
                     window=None) -> list[str]:
    """The lines ``predict-lsr`` prints for a CSV log of one's own training (columns
    ``effective_step`` or ``step``, ``lr``, ``G``, ``N``; ``wd`` and ``R`` optional): the window
    is the second half of the longest stretch of equal logged LR, or ``window``."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"--batch-size={batch_size!r}: a CSV log needs the run's batch size B, "
                         "an integer >= 1")
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a readable CSV log: {e}") from e
    missing = {"lr", "G", "N"} - set(history.columns)
    if missing:
        raise ValueError(f"the CSV log {path} lacks the column(s) {sorted(missing)}")
    stats = equilibrium_stats(history, l=l, eq11=False, min_rows=2,
                              **(_window(window) if window is not None else {}))
    warnings = []
    if "R" in history and not abs(stats["R_drift"]) <= MAX_DRIFT:
        warnings.append(f"R changed by {stats['R_drift']:+.1%} over the window (at equilibrium "
                        f"|drift| ≤ {MAX_DRIFT:.0%})")
    return _lines(stats, batch_size, C, warnings)


def predict(config: RunConfig, history, C: float = 2 ** 0.5, window=None) -> list[str]:
    """Thm 5.6 from the equilibrium window of an SGD run's history (see the module docstring);
    warnings when the window does not look stationary."""
    stats = (run_equilibrium_stats(history, config, min_rows=2) if window is None else
             equilibrium_stats(history, config.step_lr, config.wd, config.l_eff, min_rows=2,
                               eq11=eq11_applies(config), **_window(window)))
    drift, gap = stats["R_drift"], stats["eq11_rel_err"]
    warnings = []
    if stats["rows"] < 2 or not abs(drift) <= MAX_DRIFT:
        warnings.append(f"R changed by {drift:+.1%} over the window (at equilibrium "
                        f"|drift| ≤ {MAX_DRIFT:.0%})")
    if eq11_applies(config) and not gap <= MAX_EQ11_GAP:
        warnings.append(f"eq. (11) holds only within {gap:.1%} (at equilibrium ≤ "
                        f"{MAX_EQ11_GAP:.0%})")
    if not is_scale_invariant(config.arch) or config.norm == "none":
        warnings.append("the net is not scale invariant (ResNet control or no normalization), "
                        "so Sec. 5's equilibrium argument does not apply to it")
    extra = f", R drift {drift:+.1%}" + (f", eq. (11) gap {gap:.1%}" if gap == gap else "")
    return _lines(stats, config.batch_size, C, warnings, extra)


def _lines(stats: dict, B: int, C: float, warnings: list[str], extra: str = "") -> list[str]:
    G, N = stats["G"], stats["N"]
    C2 = C * C
    lines = [
        f"equilibrium window: effective steps ({stats['window_start']:g}, "
        f"{stats['window_end']:g}], {stats['rows']} rows{extra}",
        f"  G = {G:.4g} ± {stats['G_se']:.2g}   N = {N:.4g} ± {stats['N_se']:.2g}   "
        f"N/G = {stats['N_over_G']:.4g} ± {stats['N_over_G_se']:.2g}   (± one standard error over "
        "block means of the rows)",
        f"Thm 5.6: (C, κ)-LSI fails for every κ > {critical_kappa(G, N, C):.4g} (C = {C:.4g}), "
        f"i.e. the linear scaling rule from B = {B} certainly fails beyond",
        f"  critical batch size B* = B·C²(1 + N/G) = {predict_critical_batch(G, N, B, C):.0f} "
        f"± {B * C2 * stats['N_over_G_se']:.0f}",
        f"  (the Fig 3 caption's approximation C²·B·N/G = "
        f"{predict_critical_batch_approx(G, N, B, C):.0f})",
    ]
    lines += [f"warning: the window is not an equilibrium: {w}; the prediction is unreliable"
              for w in warnings]
    return lines
