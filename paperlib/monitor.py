"""A noise-scale monitor for any PyTorch training loop: unbiased G = |∇L|² and N = Tr Σ_B at the
current point, from gradients the training computes anyway, and Thm 5.6's critical batch size.

Where the gradient estimates come from (``source``):

* ``"micro_batches"`` (one process, gradient accumulation): k ≥ 2 micro-batch gradients at one
  point. A hook on each parameter tensor (``Tensor.register_hook``) sees each backward pass's
  gradient before it is added to ``p.grad``; per micro-batch the monitor keeps |g_j|² (a float64
  scalar) and adds g_j into one flat copy, whose |Σ_j g_j|² gives |ḡ|² at
  :meth:`NoiseMonitor.step` (:class:`paperlib.grad_taps.GradientTaps`). No extra backward, and
  what the loop does to ``p.grad`` afterwards (clipping, ``unscale_``, ``zero_grad``) does not
  matter.
* ``"ranks"`` (``DistributedDataParallel``): every micro-batch on every rank is a source. The
  same hook gives each rank's Σ_j |g_rj|²; a DDP communication hook (DDP's own all-reduce, plus
  the norm of each all-reduced bucket) gives |ḡ|² of the global mean. The ranks' Σ_j |g_rj|²
  and micro-batch counts ride in DDP's all-reduce of the last bucket (two more elements): no
  collective of the monitor's own, and no gradient communicated twice. Accumulate with
  ``model.no_sync()`` around every micro-batch but the last (forward and backward), as usual;
  a loop that synchronizes every micro-batch gets the same numbers.
* ``"step_stats"`` (one process, one micro-batch): no hooks; hand over the (G, N) that
  :func:`paperlib.sgd_step` measured (two half batches, or an extra batch for BatchNorm nets)
  with ``step(stats=...)``.

Per step the monitor reports (G, N at the optimizer step's batch size B), and over a sliding
window their means with standard errors over block means
(:func:`paperlib.windows.block_summary`), a bias-corrected EMA,
N/G and G/N with error bars, Thm 5.6's B* = B·C²(1 + N/G) next to McCandlish et al.'s
B_simple = Tr Σ₁/|∇L|², and whether the LR was constant over the window (the equilibrium
quantities of Thm 5.6 are means in a constant-LR phase). Rows go to CSV and JSONL files (always,
with ``log_dir``) and TensorBoard (when installed), written by :mod:`paperlib.monitor_logs`; the
CSV feeds ``python -m paperlib predict-lsr noise.csv --batch-size B``.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from pathlib import Path

import torch

from .grad_taps import GradientTaps
from .lsr import SQRT2, check_c, simple_noise_scale
from .monitor_logs import LOG_COLUMNS
from .monitor_logs import NoiseLogs as _Logs  # the name NoiseMonitor.__init__ uses
from .nsr import direct_nsr_from_norms
from .sampling import Sampling, batch_coupled, warn_if_coupled_disjoint
from .stepstats import StepStats
from .validate import check_int, is_int
from .warn import warn_user
from .windows import block_summary

__all__ = ["LOG_COLUMNS", "SOURCES", "NoiseMonitor", "estimate_from_norms"]

SOURCES = ("micro_batches", "ranks", "step_stats")
ACCUMULATION = ("mean", "sum")
# skip reasons that are likely a mistake in the loop: warned once each
WARNED = ("no backward", "no synchronized", "a partial accum")


def estimate_from_norms(sum_sq: float, mean_sq: float, *, sources: int, batch_size: int,
                        sampling: Sampling) -> tuple[float, float]:
    """(G, N at batch size B) from the K source gradients of one optimizer step.

    The step's B examples were split into K equal sources (micro-batches, on one or all ranks)
    of b = B/K examples; g_1..g_K are their mean-loss gradients and ḡ their mean (= the step's
    gradient). Which arguments the k-sample estimator :func:`paperlib.nsr.direct_nsr` needs:

    * ``n``: a without-replacement scheme draws from n examples (``Sampling.population``);
      with replacement there is no finite population (None).
    * ``disjoint``: ``Sampling.shuffled(n)`` describes the usual case, a shuffled DataLoader
      (or ``DistributedSampler``) whose consecutive batches are slices of one permutation: the
      k micro-batches of a step, and the ranks' batches of a step (rank r takes positions
      r, r + R, … of the permutation, so the R batches of one step are one contiguous stretch
      of it, split disjointly), are disjoint parts of ONE without-replacement draw of B, so
      Cov(g_i, g_j) = −Σ₁/(n − 1) and ``disjoint=True``. ``Sampling.independent(n)`` says each
      source was its own draw (may overlap): ``disjoint=False``. Same meaning as for the two
      batches of :func:`paperlib.sgd_step`.
    * ``b`` = B/K is each source's batch size, ``batch_size`` = B the size at which N is
      reported (the optimizer step's batch).

    Args:
        sum_sq: Σ_j |g_j|² (gradient units squared, loss scaling already divided out).
        mean_sq: |ḡ|².
        sources: K ≥ 2.
        batch_size: B, a multiple of K.
        sampling: how the sources' batches were drawn.

    Returns:
        ``(G, N)`` as floats (G can be negative for one step; both unbiased), equal to
        :func:`paperlib.nsr.direct_nsr_from_norms`'s.

    Raises:
        ValueError: K < 2, B not a multiple of K, or sizes the sampling scheme cannot have.
    """
    if not is_int(sources) or sources < 2:
        raise ValueError(f"sources={sources!r}: the k-sample estimator needs K >= 2 gradients "
                         "(micro-batches or ranks) per step")
    if batch_size % sources:
        raise ValueError(f"batch_size={batch_size} is not a multiple of the {sources} sources: "
                         "every micro-batch must hold B/K examples (use drop_last=True)")
    # on Python floats: the same numbers as on tensors, without the ~15 tensor ops a step would
    # otherwise spend on two scalars
    return direct_nsr_from_norms(float(sum_sq), float(mean_sq), sources, batch_size // sources,
                                 batch_size, sampling.population, sampling.disjoint)


class NoiseMonitor:
    """Unbiased G and N of every optimizer step, window statistics, EMA and Thm 5.6's B*.

    Plain loop with gradient accumulation (k micro-batches per step of B examples)::

        mon = paperlib.NoiseMonitor(model, batch_size=B, sampling=paperlib.Sampling.shuffled(n),
                                    optimizer=opt, log_dir="noise")
        for x, y in loader:                        # batches of B
            for xm, ym in zip(x.chunk(k), y.chunk(k)):
                (loss_fn(model(xm), ym) / k).backward()
            mon.step()                             # before opt.step() (and scaler.update())
            opt.step(); opt.zero_grad()
        mon.summary()                              # window means ± SE, B*, B_simple, ...

    Args:
        model: the trained ``nn.Module`` (its parameters with ``requires_grad`` are watched), a
            ``DistributedDataParallel`` module (source "ranks"), or None for "step_stats".
        batch_size: B, the examples of one optimizer step (all micro-batches, all ranks).
        sampling: how batches are drawn (:class:`paperlib.Sampling`; see
            :func:`estimate_from_norms` for what it means for micro-batches and ranks).
        source: "micro_batches" | "ranks" | "step_stats"; default: "ranks" for a DDP module,
            "micro_batches" for any other module, "step_stats" for ``model=None``.
        accumulation: "mean" when each micro-batch's mean loss is divided by the number of
            micro-batches k before ``backward`` (Lightning, Hugging Face and most loops), "sum"
            when it is not.
        optimizer: read the LR from ``optimizer.param_groups[0]["lr"]`` at each step.
        scaler: a ``torch.amp.GradScaler``: gradients are divided by its scale, read at
            :meth:`step` (call it before ``scaler.update()``).
        C: closeness constant of Thm 5.6, > 1 (paper: √2, C² = 2).
        window: steps in the sliding window of :meth:`summary` (None: every step since
            :meth:`reset_window`).
        blocks: standard errors from the means of this many contiguous blocks of the window
            (consecutive steps are correlated); fewer than 2 steps per block: over single steps.
        ema: EMA decay β in [0, 1), bias-corrected by 1 − β^t.
        log_dir: write ``<name>.csv`` and ``<name>.jsonl`` there (rank 0 only under DDP), and
            TensorBoard events when ``tensorboard`` is installed; an earlier monitor's logs of
            the same ``name`` in that folder are replaced (its events files deleted).
        tensorboard: None: when installed; True: required; False: never.
        every: measure every ``every``-th optimizer step (steps 1, 1 + every, ...); between
            them the parameter hooks are detached, so an unmeasured step costs one counter
            (under DDP the communication hook still does DDP's all-reduce, with two zeros
            appended to the last bucket, which costs two copies of that bucket). The
            window, EMA and ``measured`` count measured steps. Sources "micro_batches" and
            "ranks" only (``sgd_step``'s ``measure`` chooses the steps of "step_stats").

    Raises:
        ValueError: an unknown source or accumulation, a DDP source without a DDP module, bad
            sizes, C ≤ 1, β outside [0, 1), a non-positive window, or ``every`` < 1 (or ≠ 1
            for "step_stats").
    """

    def __init__(self, model: torch.nn.Module | None = None, *, batch_size: int,
                 sampling: Sampling, source: str | None = None, accumulation: str = "mean",
                 optimizer: torch.optim.Optimizer | None = None, scaler=None,
                 C: float = SQRT2, window: int | None = 200, blocks: int = 10,
                 ema: float = 0.98, log_dir: str | Path | None = None,
                 tensorboard: bool | None = None, name: str = "noise", every: int = 1):
        from torch.nn.parallel import DistributedDataParallel as DDP

        is_ddp = isinstance(model, DDP)
        if source is None:
            source = "step_stats" if model is None else ("ranks" if is_ddp else "micro_batches")
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not allowed; choose one of {list(SOURCES)}")
        if accumulation not in ACCUMULATION:
            raise ValueError(f"accumulation={accumulation!r} is not allowed; choose one of "
                             f"{list(ACCUMULATION)}")
        if not is_int(batch_size) or batch_size < 2:
            raise ValueError(f"batch_size={batch_size!r}: B must be an integer >= 2")
        if not isinstance(sampling, Sampling):
            raise ValueError(f"sampling must be a paperlib.Sampling (how the batches are drawn), "
                             f"got {sampling!r}")
        if sampling.population is not None and batch_size >= sampling.population:
            raise ValueError(f"batch_size={batch_size} must be < n={sampling.population}")
        if source == "ranks" and not is_ddp:
            raise ValueError("source='ranks' needs a torch DistributedDataParallel module, got "
                             f"{type(model).__name__}")
        if source != "step_stats" and not isinstance(model, torch.nn.Module):
            raise ValueError(f"source={source!r} needs the model, got {model!r}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema={ema!r} is not allowed; the EMA decay must be in [0, 1)")
        check_int("window", window, 2, allow_none=True)
        self.every = check_int("every", every, 1)
        if source == "step_stats" and every != 1:
            raise ValueError(f"every={every!r} is for the sources whose gradients the monitor "
                             "reads itself (micro_batches, ranks); with source='step_stats' a "
                             "step is measured when you pass it stats= from "
                             "sgd_step(..., measure=True), so measure only the steps you want")
        check_int("blocks", blocks, 0)
        self.C = check_c(C)
        self.batch_size, self.sampling, self.source = batch_size, sampling, source
        self.accumulation, self.optimizer, self.scaler = accumulation, optimizer, scaler
        self.window, self.blocks, self.beta = window, blocks, ema
        self.step_count = 0  # optimizer steps seen (measured or skipped)
        self.measured = 0
        self.skipped = 0
        self.skip_reasons: dict[str, int] = {}
        self.history: list[dict] = []  # one row per measured step
        self._win: deque = deque(maxlen=window)  # (G, N, lr) of the window's steps
        self._ema_g = self._ema_n = 0.0
        self._taps = None  # the hooks that see each micro-batch's gradient (not step_stats)
        self._removed = False  # remove() was called: every= does not re-attach the hooks
        self._k_max = 0  # most sources of a measured step: a step with fewer is a partial group
        rank = 0
        if source != "step_stats":
            module = model.module if is_ddp else model
            self._taps = GradientTaps(model, source, accumulation)
            self.params = self._taps.params
            rank = self._taps.rank
            if batch_coupled(module):
                warn_if_coupled_disjoint(sampling)
        self.logs = (_Logs(Path(log_dir), tensorboard, name)
                     if log_dir is not None and rank == 0 else None)

    @contextlib.contextmanager
    def paused(self):
        """Backward passes inside this block are not micro-batches of the step (e.g. a
        gradient penalty or an evaluation that differentiates)."""
        if self._taps is None:
            yield
            return
        self._taps.paused = True
        try:
            yield
        finally:
            self._taps.paused = False

    def remove(self) -> None:
        """Detach the parameter hook and close the log files (the DDP hook stays registered:
        torch cannot unregister one; it keeps doing DDP's all-reduce, with two zeros appended to
        the last bucket so that the other ranks' all-reduces keep their size)."""
        self._removed = True
        if self._taps is not None:
            self._taps.remove()
        if self.logs is not None:
            self.logs.close()
            self.logs = None

    # --- one optimizer step ----------------------------------------------------------------------

    def _scale(self, scale: float | None) -> float:
        if scale is not None:
            return float(scale)
        if self.scaler is not None and self.scaler.is_enabled():
            return float(self.scaler.get_scale())
        return 1.0

    def step(self, lr: float | None = None, *, scale: float | None = None,
             stats: StepStats | None = None, examples: int | None = None) -> dict | None:
        """End one optimizer step: estimate (G, N), update the window, EMA and logs.

        Call it after the step's last backward and before ``optimizer.step()`` (and before
        ``scaler.update()`` under mixed precision).

        Args:
            lr: the step's LR (default: the optimizer's, if given; else NaN).
            scale: the loss scale of this step's backward passes (default: the scaler's, or 1).
            stats: source "step_stats" only: a :class:`paperlib.StepStats` with G and N.
            examples: the number of examples this step used (all micro-batches and ranks), if
                known: a step with fewer than ``batch_size`` (a DataLoader's partial last batch,
                ``drop_last=False``) is skipped, since its sources are smaller than B/K.

        Returns:
            The step's row (``LOG_COLUMNS``), or None for a step that ``every`` leaves out or
            one that was skipped (non-finite
            gradients under mixed precision, no backward pass, a partial batch, fewer
            micro-batches than earlier steps (a partial accumulation group), or B not a
            multiple of the K sources); reasons in ``skip_reasons``.

        Raises:
            ValueError: ``stats`` missing (or given) for the wrong source or from another batch
                size, or one process with fewer than 2 micro-batches.
        """
        self.step_count += 1
        if self.every > 1:  # (1 for step_stats) the hooks are attached for exactly the
            # measured steps' backward passes
            measured = (self.step_count - 1) % self.every == 0
            if measured:
                self._taps.remove()
            elif self.step_count % self.every == 0 and not self._removed:
                self._taps.attach()  # the next step is measured
            if not measured:
                return None
        if lr is None and self.optimizer is not None:
            lr = self.optimizer.param_groups[0]["lr"]
        lr = float("nan") if lr is None else float(lr)
        if self.source == "step_stats":
            if stats is None or stats.G is None or stats.N is None:
                raise ValueError("source='step_stats' needs step(stats=...) with G and N "
                                 "(paperlib.sgd_step(..., measure=True))")
            if stats.count != self.batch_size:
                raise ValueError(f"the StepStats come from a batch of {stats.count} examples but "
                                 f"the monitor's batch_size is {self.batch_size}")
            G, N = float(stats.G), float(stats.N)
            grad_sq, sum_sq, K = float(stats.grad_sq), float("nan"), 2
            reason = None if math.isfinite(G) and math.isfinite(N) else "non-finite estimate"
        else:
            if stats is not None:
                raise ValueError(f"stats= is for source='step_stats'; this monitor measures "
                                 f"{self.source!r} itself")
            s = self._scale(scale)
            sum_sq, grad_sq, K, reason = self._taps.norms(s)
            if reason is None and not (math.isfinite(sum_sq) and math.isfinite(grad_sq)):
                reason = "non-finite gradients (mixed-precision overflow)"
            if reason is None and 0 < K < self._k_max:
                # the loop stepped early (Lightning / HF at an epoch's end, or a loop that steps
                # on the last batch): these K micro-batches hold B/k examples each, not B/K
                reason = (f"a partial accumulation group: {K} micro-batch source(s), not the "
                          f"{self._k_max} of earlier steps (an epoch whose batches are not a "
                          "multiple of the accumulation steps ends with one)")
            if reason is None and K < 2:
                raise ValueError(
                    "one micro-batch per step gives no noise estimate: accumulate k >= 2 "
                    "micro-batches, run DDP, or use sgd_step(measure=True) with "
                    "source='step_stats'")
            if reason is None and examples is not None and examples != self.batch_size:
                reason = (f"a partial batch ({examples} examples, not B = {self.batch_size}): "
                          "use drop_last=True")
            if reason is None and self.batch_size % K:
                reason = (f"B = {self.batch_size} is not a multiple of the {K} sources (a partial "
                          "last batch? use drop_last=True)")
            if reason is None:
                G, N = estimate_from_norms(sum_sq, grad_sq, sources=K,
                                           batch_size=self.batch_size, sampling=self.sampling)
                self._k_max = max(self._k_max, K)
        if reason is not None:
            self.skipped += 1
            # warn once for what is likely a mistake in the loop (a partial batch, or step()
            # called with no backward since the last one, e.g. after zero_grad) or a partial
            # accumulation group (every epoch's last step loses its measurement)
            if reason not in self.skip_reasons and ("drop_last" in reason
                                                    or reason.startswith(WARNED)):
                warn_user(f"NoiseMonitor skips steps: {reason}")
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
            return None
        self.measured += 1
        self._win.append((G, N, lr))
        b = self.beta
        self._ema_g = b * self._ema_g + (1 - b) * G
        self._ema_n = b * self._ema_n + (1 - b) * N
        ema_g, ema_n = self.ema
        bs, bsimple = self._predictions(ema_g, ema_n)
        row = {"step": self.step_count, "effective_step": self.step_count, "lr": lr,
               "batch_size": self.batch_size, "sources": K, "G": G, "N": N, "grad_sq": grad_sq,
               "sum_sq": sum_sq, "ema_G": ema_g, "ema_N": ema_n,
               "ema_N_over_G": ema_n / ema_g if ema_g > 0 else float("nan"),
               "ema_B_star": bs, "ema_B_simple": bsimple, "skipped": self.skipped}
        self.history.append(row)
        if self.logs is not None:
            self.logs.write(row)
        return row

    # --- reports ---------------------------------------------------------------------------------

    @property
    def ema(self) -> tuple[float, float]:
        """Bias-corrected EMAs (G, N): EMA_t / (1 − β^t); NaN before the first step."""
        if not self.measured:
            return float("nan"), float("nan")
        c = 1.0 - self.beta ** self.measured if self.beta else 1.0
        return self._ema_g / c, self._ema_n / c

    @property
    def C2(self) -> float:
        """C² of Thm 5.6: 2 for the default C = √2 (whose float square is 2.0000000000000004)."""
        return float(f"{self.C ** 2:.15g}")

    def _predictions(self, G: float, N: float) -> tuple[float, float]:
        """(B*, B_simple) from G, N; NaN where undefined (G ≤ 0, N < 0)."""
        if not (G > 0 and N >= 0):
            return float("nan"), float("nan")
        B = self.batch_size
        return (B * self.C2 * (1 + N / G),  # Thm 5.6, eq. 15
                simple_noise_scale(G, N, B, self.sampling.population))

    def reset_window(self) -> None:
        """Start a new window (e.g. at an LR change)."""
        self._win.clear()

    def summary(self) -> dict:
        """Window means with standard errors and what follows from them.

        Returns:
            dict with ``count``, ``G``, ``G_se``, ``N``, ``N_se``, ``N_over_G``, ``N_over_G_se``,
            ``G_over_N``, ``G_over_N_se``, ``B_star`` and ``B_star_se`` (Thm 5.6, C² =
            ``C2``), ``B_simple`` and ``B_simple_se`` (McCandlish et al.), ``trace_sigma1``,
            ``lr_constant`` (True / False; None when the LR is unknown), ``lr_first``,
            ``lr_last``, ``ema_G``, ``ema_N``, ``ema_N_over_G``, ``ema_B_star``, ``batch_size``,
            ``C2``, ``se_from`` ("blocks" or "steps"), ``steps``, ``skipped``. NaN where
            undefined (fewer than 2 steps, mean G ≤ 0). Standard errors are over ``blocks``
            block means (or single steps), i.e. assume the blocks independent.
        """
        nan = float("nan")
        rows = list(self._win)
        s = block_summary([g for g, _, _ in rows], [n for _, n, _ in rows], blocks=self.blocks)
        se_from = "blocks" if s["se_from"] == "blocks" else "steps"
        G, N, r, r_se = s["G"], s["N"], s["N_over_G"], s["N_over_G_se"]
        B, C2 = self.batch_size, self.C2
        b_star, b_simple = self._predictions(G, N)
        lrs = [lr for *_, lr in rows]
        known = bool(lrs) and all(math.isfinite(v) for v in lrs)
        ema_g, ema_n = self.ema
        return {
            "count": len(rows), "G": G, "G_se": s["G_se"], "N": N, "N_se": s["N_se"],
            "N_over_G": r, "N_over_G_se": r_se,
            "G_over_N": 1 / r if r > 0 else nan,
            "G_over_N_se": r_se / r ** 2 if r > 0 else nan,  # delta method on 1/x
            "B_star": b_star, "B_star_se": B * C2 * r_se if r == r else nan,
            "B_simple": b_simple,
            "B_simple_se": b_simple * r_se / r if r > 0 else nan,  # B_simple ∝ N/G
            "trace_sigma1": b_simple * G if G > 0 else nan,
            "lr_constant": (max(lrs) - min(lrs) <= 1e-12 * abs(max(lrs))) if known else None,
            "lr_first": lrs[0] if lrs else nan, "lr_last": lrs[-1] if lrs else nan,
            "ema_G": ema_g, "ema_N": ema_n,
            "ema_N_over_G": ema_n / ema_g if ema_g > 0 else nan,
            "ema_B_star": self._predictions(ema_g, ema_n)[0],
            "batch_size": B, "C2": C2, "se_from": se_from, "steps": self.step_count,
            "skipped": self.skipped,
        }
