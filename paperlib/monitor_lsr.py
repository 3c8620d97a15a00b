"""Beyond the paper: the NoiseMonitor in a plain PyTorch loop on a model the paper did not study,
and a linear-scaling-rule sweep that checks Thm 5.6's prediction (notebook
``notebooks/noise_monitor.ipynb``, figure id ``monitor-mlp``).

The model is a scale-invariant MLP: every hidden layer is Linear → LayerNorm (no affine) → ReLU
and the classifier head is frozen, so the loss is invariant to scaling the trained weights, the
setting of Sec. 5 (eq. 11) that Thm 5.6 relies on. The loop is what a user writes
(:func:`train_plain`): a shuffled ``DataLoader`` of B examples, k accumulation micro-batches of
B/k per step, ``torch.optim.SGD`` with weight decay, and the monitor reading G, N from the
micro-batches. Results are cached under ``<data>/monitor/`` (one CSV of per-step rows and one
JSON per run, keyed by the config), so a notebook rerun and ``make test``'s nbval do not retrain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .claims import Claim, Interval, check, increase_fraction, increase_fraction_interval
from .constants import DATASET_SIZES, PRESETS
from .equilibrium import equilibrium_stats
from .files import StaleResultError, atomic_write_bytes
from .lsr import (
    lsr_failure_batch,
    lsr_failure_batches,
    predict_critical_batch,
    simple_noise_scale,
)
from .monitor import NoiseMonitor
from .paths import store_root
from .sampling import Sampling
from .store import note_result, training_allowed
from .validate import check_choice, check_int

CACHE_VERSION = 1  # bump when a change alters what a run computes


@dataclass(frozen=True)
class MonitorRun:
    """One run of the plain loop; every field with its unit."""

    dataset: str = "cifar10"  # paperlib.data name
    subset: int = 10_000  # n, training examples (class-balanced subset)
    resolution: int = 8  # images average-pooled to r × r
    width: int = 256  # hidden units per layer
    depth: int = 2  # hidden layers
    batch_size: int = 32  # B, examples per optimizer step
    micro_batches: int = 4  # k, accumulation micro-batches per step (B/k examples each)
    lr: float = 0.1  # η, per-step LR at this B (the LSR scales it with B)
    wd: float = 5e-4  # λ, weight decay
    epochs: int = 24  # passes over the n examples
    decay_epoch: int = 20  # η × 0.1 from this epoch on (the constant-LR phase ends here)
    seed: int = 0  # init, data order

    def __post_init__(self):
        for name in ("subset", "resolution", "width", "depth", "batch_size", "micro_batches",
                     "epochs", "decay_epoch"):
            check_int(name, getattr(self, name), 1)
        if self.batch_size % self.micro_batches or self.micro_batches < 2:
            raise ValueError(f"batch_size={self.batch_size} must split into micro_batches="
                             f"{self.micro_batches} >= 2 equal parts")
        if self.batch_size >= self.subset:
            raise ValueError(f"batch_size={self.batch_size} must be < subset={self.subset}")
        if not (self.lr > 0 and self.wd >= 0):
            raise ValueError(f"lr={self.lr!r} must be > 0 and wd={self.wd!r} >= 0")
        if self.decay_epoch > self.epochs:
            raise ValueError(f"decay_epoch={self.decay_epoch} must be <= epochs={self.epochs}")


# smoke: synthetic data, seconds; cpu: CIFAR-10 at 8×8 on 2 cores; paper: full CIFAR-10 32×32.
PRESET_BASE = {
    "smoke": dict(base=MonitorRun(dataset="synthetic", subset=512, resolution=4, width=32,
                                  epochs=3, decay_epoch=2, lr=0.05, batch_size=16),
                  batch_sizes=(16, 64)),
    "cpu": dict(base=MonitorRun(), batch_sizes=(32, 64, 128, 256, 512, 1024, 2048)),
    "paper": dict(base=MonitorRun(subset=50_000, resolution=32, width=1024, depth=3, epochs=60,
                                  decay_epoch=50, batch_size=128, lr=0.1),
                  batch_sizes=(128, 256, 512, 1024, 2048, 4096, 8192)),
}


def sweep_configs(preset: str, batch_sizes=None, base_lr: float | None = None) -> list[MonitorRun]:
    """The LSR sweep: B and η scaled together from the preset's smallest B (η = η₀·B/B₀),
    the same epochs (so κ× fewer steps), k micro-batches per step throughout."""
    check_choice("preset", preset, PRESETS)
    p = PRESET_BASE[preset]
    base = p["base"] if base_lr is None else dataclasses.replace(p["base"], lr=base_lr)
    bs = sorted(batch_sizes or p["batch_sizes"])
    return [dataclasses.replace(base, batch_size=b, lr=base.lr * b / bs[0]) for b in bs]


# --- the user's model and loop --------------------------------------------------------------

def scale_invariant_mlp(d_in: int, width: int, depth: int, classes: int) -> torch.nn.Module:
    """[Linear → LayerNorm(no affine) → ReLU] × depth, then a frozen Linear head."""
    layers, d = [torch.nn.Flatten()], d_in
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width), torch.nn.LayerNorm(width, elementwise_affine=False),
                   torch.nn.ReLU()]
        d = width
    head = torch.nn.Linear(d, classes)
    head.requires_grad_(False)
    return torch.nn.Sequential(*layers, head)


def _data(cfg: MonitorRun):
    from .data import load_dataset, prepare

    raw = load_dataset(cfg.dataset)
    return prepare(raw, subset=cfg.subset, resolution=cfg.resolution, seed=cfg.seed)


def train_plain(cfg: MonitorRun, data=None) -> tuple[pd.DataFrame, dict]:
    """Train ``cfg`` with a plain loop; returns (per-step monitor rows, final metrics)."""
    from torch.utils.data import DataLoader, TensorDataset

    data = data or _data(cfg)
    torch.manual_seed(cfg.seed)
    d_in = data.train_x[0].numel()
    model = scale_invariant_mlp(d_in, cfg.width, cfg.depth, data.num_classes)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                          weight_decay=cfg.wd)
    steps_per_epoch = data.train_size // cfg.batch_size
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.decay_epoch * steps_per_epoch], 0.1)
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    k = cfg.micro_batches
    # The micro-batches of one step are disjoint parts of one shuffled batch: Sampling.shuffled.
    mon = NoiseMonitor(model, batch_size=cfg.batch_size, sampling=Sampling.shuffled(
        data.train_size), optimizer=opt, window=None)
    losses = []
    for _ in range(cfg.epochs):
        for x, y in loader:
            total = 0.0
            for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
                loss = torch.nn.functional.cross_entropy(model(xm), ym) / k
                loss.backward()
                total += loss.item()
            if mon.step() is not None:  # G, N of this step from its k micro-batch gradients
                losses.append(total)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    mon.remove()
    hist = pd.DataFrame(mon.history)[["step", "lr", "G", "N", "grad_sq"]]
    hist["train_loss"] = losses
    model.eval()
    with torch.no_grad():
        test_err = 100 * (model(data.test_x).argmax(1) != data.test_y).float().mean().item()
        train_err = 100 * (model(data.train_x).argmax(1) != data.train_y).float().mean().item()
    return hist, {"test_error": test_err, "train_error": train_err, "steps": mon.step_count,
                  "skipped": mon.skipped, "n": data.train_size}


# --- cached runs ----------------------------------------------------------------------------

def _paths(cfg: MonitorRun, root) -> tuple[Path, Path, dict]:
    meta = {"config": dataclasses.asdict(cfg), "cache_version": CACHE_VERSION,
            "paperlib_version": __version__}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    d = Path(root) if root else store_root() / "monitor"
    return d / f"{key}.csv", d / f"{key}.json", meta


def _run_one(cfg: MonitorRun, root, cache: bool) -> tuple[pd.DataFrame, dict]:
    torch.set_num_threads(1)
    csv_path, json_path, meta = _paths(cfg, root)
    if cache and csv_path.exists() and json_path.exists():
        note_result("monitor", csv_path.stem, "stored")
        return pd.read_csv(csv_path), json.loads(json_path.read_text())
    if cache and not training_allowed():
        raise StaleResultError(f"monitor run {csv_path} is missing or stale (PAPERLIB_NO_TRAIN "
                               "is set); regenerate it by running notebooks/noise_monitor.ipynb")
    t0 = time.time()
    hist, final = train_plain(cfg)
    final = {**meta, **final, "wall_s": round(time.time() - t0, 1)}
    if cache:
        atomic_write_bytes(csv_path, hist.to_csv(index=False, float_format="%.7g").encode())
        atomic_write_bytes(json_path, json.dumps(final, indent=1).encode())
        note_result("monitor", csv_path.stem, "computed")
    return hist, final


def run_sweep(configs: list[MonitorRun], *, root=None, workers: int = 1,
              cache: bool = True) -> list[tuple[pd.DataFrame, dict]]:
    """Each config's (history, final), from the cache or trained (``workers`` processes)."""
    if workers <= 1:
        return [_run_one(c, root, cache) for c in configs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run_one, configs, [root] * len(configs), [cache] * len(configs)))


# --- summary, claims, figure -----------------------------------------------------------------

def summary(configs, results, C2: float = 2.0) -> tuple[pd.DataFrame, dict]:
    """Per-B table (final test error, window G, N, N/G ± SE, B*, B_simple) and the prediction
    from the smallest-B run next to the observed failure batch."""
    rows = []
    for cfg, (hist, final) in zip(configs, results, strict=True):
        eq = equilibrium_stats(hist, eq11=False)  # 2nd half of the constant-LR phase
        G, N = eq["G"], eq["N"]
        ok = G > 0 and N >= 0
        rows.append({"B": cfg.batch_size, "lr": cfg.lr, "test_error": final["test_error"],
                     "G": G, "N": N, "N_over_G": eq["N_over_G"],
                     "N_over_G_se": eq["N_over_G_se"], "G_over_N": G / N if N > 0 else math.nan,
                     "B_star": predict_critical_batch(G, N, cfg.batch_size, C2 ** 0.5)
                     if ok else math.nan,
                     "B_simple": simple_noise_scale(G, N, cfg.batch_size, final["n"])
                     if ok else math.nan,
                     "window_rows": eq["rows"]})
    per_b = pd.DataFrame(rows)
    base = per_b.iloc[0]
    fail = lsr_failure_batch(per_b["B"].tolist(), per_b["test_error"].tolist(), FAILURE_FACTOR)
    info = {"baseline_B": int(base["B"]), "C2": C2, "B_star": base["B_star"],
            "B_star_se": base["B"] * C2 * base["N_over_G_se"], "B_simple": base["B_simple"],
            "failure_B": fail, "best_error": per_b["test_error"].min()}
    return per_b, info


GN_INCREASING = 1.0  # fraction of consecutive batch sizes with increasing G/N, at least this
PREDICTION_LOG2 = 1.0  # |log2(observed failure B / prediction)| at most this: within a factor 2
FAILURE_FACTOR = 1.2  # the LSR failed at B whose test error exceeds 1.2 × the best (Fig 3)
_DRAWS = 20_000


def claims(per_b: pd.DataFrame, info: dict, dataset: str = "cifar10") -> list[Claim]:
    """Rows computed from the sweep: G/N grows with B, and the failure batch vs B*, B_simple.

    One run per B, so the seed-to-seed spread is not measured. The intervals carry what is:
    each window's block standard error of N/G, and each final test error's sampling noise over
    the ``dataset``'s test set (binomial); they say so in the table.
    """
    rng = np.random.default_rng(0)
    bs = per_b["B"].to_numpy(dtype=float)
    frac = increase_fraction(per_b["G_over_N"].to_numpy(dtype=float))
    # N/G per B drawn from its window mean ± block SE (normal), as G/N = 1 / (N/G)
    n_over_g = list(zip(per_b["N_over_G"], per_b["N_over_G_se"], strict=True))
    frac_iv = increase_fraction_interval(
        n_over_g, None, "95 % interval; one run per B: block SE of N/G in each window only",
        transform=lambda nog: 1 / nog)
    # the same draws again (propagate's stream), for the baseline's B* and B_simple below
    nog = np.stack([m + se * rng.standard_normal(_DRAWS) for m, se in n_over_g], axis=1)
    n_test = DATASET_SIZES[dataset][1]
    p = per_b["test_error"].to_numpy(dtype=float) / 100
    err = np.stack([100 * (q + np.sqrt(q * (1 - q) / n_test) * rng.standard_normal(_DRAWS))
                    for q in p], axis=1)
    base = per_b.iloc[0]
    base_nog = nog[:, 0]
    fail = info["failure_B"]
    seeds = "1 seed per B: " + ", ".join(f"B={b}: {e:.1f}%" for b, e in
                                         zip(per_b["B"], per_b["test_error"], strict=True))
    how = (f"95 % interval; one run per B: test-set sampling noise of the errors (binomial, "
           f"n = {n_test}) and the baseline's block SE of N/G; seed spread not measured")

    # No failure up to the largest B: the failure lies beyond it, so the ratio is at least
    # log2(max B / B*) when B* < max B; the row then shows that lower bound, open above.
    beyond = bs.max()
    first = lsr_failure_batches(bs, err, FAILURE_FACTOR, none=beyond)

    def ratio(pred):
        if not pred > 0:
            return math.nan
        return abs(math.log2(fail / pred)) if fail else \
            math.log2(beyond / pred) if beyond > pred else math.nan

    def ratio_interval(pred_draws):
        lo, hi = np.quantile(np.abs(np.log2(first / pred_draws)), [0.025, 0.975])
        if not fail:
            return Interval(lo, math.inf, how + f"; no failure up to B = {bs.max():.0f}: a lower "
                            "bound")
        return Interval(lo, hi, how)

    b_star = base["B"] * info["C2"] * (1 + base_nog)
    # B_simple = B·(N/G) up to its finite-population factor, which the draws keep
    b_simple = info["B_simple"] * base_nog / base["N_over_G"]
    return [
        check("MLP (not in the paper), accumulation monitor: G/N grows with B (fraction of "
              "consecutive increases)", "monotone in B (Fig 3)", frac, ">=", GN_INCREASING,
              interval=frac_iv, seeds=seeds),
        check(f"Thm 5.6 on the MLP: |log2(observed LSR failure B "
              f"({fail or f'> {bs.max():.0f}'}) ÷ B*)|, B* from the smallest-B run "
              f"({info['B_star']:.0f}); ≤ 1 means within a factor 2",
              "prediction close to observed failure", ratio(info["B_star"]), "<=",
              PREDICTION_LOG2, interval=ratio_interval(b_star), unit=" (|log2 ratio|)",
              seeds=seeds),
        check(f"Comparison, McCandlish et al.: |log2(observed failure B "
              f"({fail or f'> {bs.max():.0f}'}) ÷ B_simple ({info['B_simple']:.0f}))|; ≤ 1 "
              "means within a factor 2", "(not a claim of the paper)",
              ratio(info["B_simple"]), "<=", PREDICTION_LOG2,
              interval=ratio_interval(b_simple), unit=" (|log2 ratio|)", seeds=seeds),
    ]


def plot(configs, results, per_b: pd.DataFrame, info: dict, window: int = 50):
    """(a) the baseline's per-step N/G from the monitor (rolling means); (b) test error vs B
    with B*, B_simple and the observed failure batch."""
    from . import plots

    plots.paper_style()
    fig, (a, b) = plots.plt.subplots(1, 2, figsize=(10, 3.8))
    hist = results[0][0]
    roll = hist[["G", "N"]].rolling(window, min_periods=window).mean()
    a.plot(hist["step"], roll["N"] / roll["G"], label=f"N/G, rolling mean of {window} steps")
    a.axvline(configs[0].decay_epoch * len(hist) / configs[0].epochs, color="gray", ls=":",
              label="η × 0.1")
    a.set(xlabel="step", ylabel="N / G", yscale="log",
          title=f"(a) monitor during training, B={configs[0].batch_size}, "
                f"k={configs[0].micro_batches}")
    a.legend()
    b.plot(per_b["B"], per_b["test_error"], marker="o", label="final test error")
    b.axhline(1.2 * info["best_error"], color="gray", ls=":", label="1.2 × best")
    b.axvline(info["B_star"], color="C3", ls="--", label=f"Thm 5.6 B* = {info['B_star']:.0f}")
    b.axvline(info["B_simple"], color="C2", ls="-.",
              label=f"B_simple = {info['B_simple']:.0f}")
    if info["failure_B"]:
        b.axvline(info["failure_B"], color="k", ls="-", lw=0.8,
                  label=f"observed failure B = {info['failure_B']}")
    b.set(xscale="log", xlabel="batch size B (η ∝ B)", ylabel="test error (%)",
          title="(b) LSR sweep")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig
