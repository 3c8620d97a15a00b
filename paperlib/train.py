"""One training loop for SGD, SVAG, NGD and GD; the algorithm only decides how a step's gradient
is formed (:func:`gradient`, the single dispatch onto the public step functions of
:mod:`paperlib.steps`). The update is always eq. (1)/(7):

    x ← x − η_k (g_k + λ_k x)        (optionally with heavy-ball momentum)

with η_k = (η / l) · schedule(k / l) for SVAG (eq. 5; every milestone stretches by l) and
η_k = η · schedule(k) otherwise. Online noise-to-signal estimates (G = |∇L|², N = Tr Σ_B, Sec. 5)
come from gradients the step computes anyway (SVAG's two batches, SGD's two half batches) or,
for BatchNorm nets under SGD, from one extra independent batch every ``nsr_extra_every`` steps.

All randomness is counter-based (``paperlib.seeding``), so a run resumed from a checkpoint draws
the same batches, augmentations and NGD noise as an uninterrupted one: the history is bitwise
equal on CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from . import distributed, seeding
from .config import RunConfig, resolve_device
from .data import DeviceData, RawDataset, Sampler, load_dataset, prepare
from .history import HISTORY_COLUMNS, StepWindow, history_frame
from .models import accelerate, build_model, trained_parameters
from .ngd import split_chunks
from .nsr import sampler_population
from .passes import evaluate
from .paths import data_root
from .sampling import Sampling, batch_coupled, warn_if_coupled_disjoint
from .schedules import (
    Schedule,
    constant_schedule,
    cosine_schedule,
    step_schedule,
    triangle_schedule,
)
from .steps import (
    gd_step,
    ngd_step,
    sgd_step,
    svag_step,
)
from .stepstats import StepStats, set_grad
from .svag import svag_steps


@dataclass
class TrainResult:
    history: pd.DataFrame
    status: str  # complete | diverged
    diverged_step: int | None
    state: dict  # the final checkpoint state
    device: str


def schedule_from_config(config: RunConfig) -> tuple[Schedule, Schedule]:
    """(LR multiplier, λ multiplier) as functions of base time in ``config.schedule_unit``."""
    unit = config.schedule_unit
    length = config.base_steps / (config.steps_per_epoch if unit == "epoch" else 1)
    if config.schedule == "step" and config.milestones:
        lr = step_schedule(config.milestones, config.gamma, unit)
    elif config.schedule == "cosine":
        lr = cosine_schedule(1.0, config.final_lr_factor, length, unit)
    elif config.schedule == "triangle":
        lr = triangle_schedule(1.0, min_lr=1e-4 / 0.8, total=length, unit=unit)
    else:
        lr = constant_schedule(unit)
    wd = (step_schedule(config.wd_milestones, config.wd_gamma, unit) if config.wd_milestones
          else constant_schedule(unit))
    return lr, wd


# --- one step of paperlib's loop: batches from the run's samplers → the public step functions ---

@dataclass
class Context:
    """A built run: what ``gradient`` needs to form step k's gradient."""

    config: RunConfig
    model: torch.nn.Module
    params: list
    data: DeviceData
    sampler: Sampler  # batches of B (SGD) or 2B (SVAG, l > 1)
    extra_sampler: Sampler | None  # independent batches for BN nets' online estimate
    coupled: bool  # BatchNorm: examples interact, so no fused / split passes
    sampling: Sampling  # how a step's batch (SGD halves, SVAG's γ1/γ2) was drawn
    extra_sampling: Sampling | None  # how the extra batch relates to the step's batch
    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model with the accelerator options
    ranks: distributed.Ranks | None = None  # K > 1 processes (DDP) share each step
    bn_merge: distributed.BatchNormMerge | None = None  # SVAG with BatchNorm on 2 ranks

    def batch(self, idx, *keys: int):
        """Examples ``idx`` on the device, augmented with a generator keyed by ``keys``."""
        gen = seeding.generator(self.config.seed, *keys, device=self.device)
        return self.data.batch(idx, augment=self.config.augment, generator=gen)


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, the loss of every paper run."""
    return F.cross_entropy(out, y, reduction="none")


def gradient(ctx: Context, k: int) -> StepStats:
    """Step k's gradient (and G/N on measuring steps) for the run's update rule, through the
    public step functions. Batches, augmentation and NGD noise are keyed by (seed, stream, k),
    so a resumed run draws what an uninterrupted one would. On K > 1 ranks (``ctx.ranks``)
    each rank forms its part and the parts are all-reduced (:mod:`paperlib.distributed`)."""
    c = ctx.config
    rule = c.update_rule
    kw = dict(params=ctx.params, forward=ctx.forward)
    ranks = ctx.ranks
    if rule in ("ngd", "gd"):
        n = ctx.data.train_size
        shard = None if ranks is None else (ranks.rank, ranks.world)
        chunks = (ctx.batch(torch.arange(s.start, s.stop, device=ctx.device),
                            seeding.STREAM_AUGMENT, k, j)
                  for j, s in enumerate(split_chunks(n, c.chunk_size))
                  if ranks is None or ranks.owns(j))
        if rule == "gd":
            stats = gd_step(ctx.model, cross_entropy, chunks, n=n, chunk_size=c.chunk_size,
                            shard=shard, **kw)
        else:
            gen = seeding.generator(c.seed, seeding.STREAM_NGD, k, device=ctx.device)
            stats = ngd_step(ctx.model, cross_entropy, chunks, n=n, batch_size=c.batch_size,
                             generator=gen, chunk_size=c.chunk_size, shard=shard, **kw)
        return stats if ranks is None else distributed.reduce_full_data(stats, gd=rule == "gd")
    # the whole batch on every rank (its augmentation is drawn for the batch), then this
    # rank's part of it
    x, y = ctx.batch(ctx.sampler.indices(k, device=ctx.device), seeding.STREAM_AUGMENT, k)
    if rule == "svag":
        measure = k % c.nsr_every == 0
        if ranks is None:
            return svag_step(ctx.model, cross_entropy, x, y, l=c.l, sampling=ctx.sampling,
                             measure=measure, **kw)
        if ctx.coupled:  # as svag_step: a coupled net is measured at every step
            measure = True
            warn_if_coupled_disjoint(ctx.sampling)
            ctx.bn_merge.before()
        part = sgd_step(ctx.model, cross_entropy, ranks.part(x), ranks.part(y), **kw)
        if ctx.coupled:
            ctx.bn_merge.after()
        return distributed.reduce_svag(part, ranks, l=c.l, batch_size=c.batch_size,
                                       sampling=ctx.sampling if measure else None)
    if ranks is not None:  # SGD (check_supported refused batch-coupled nets)
        part = sgd_step(ctx.model, cross_entropy, ranks.part(x), ranks.part(y), **kw)
        measure = k % c.nsr_every == 0 and c.batch_size >= 2
        return distributed.reduce_parts(part, ranks, batch_size=c.batch_size,
                                        sampling=ctx.sampling if measure else None)
    if ctx.coupled:  # BatchNorm: an independent extra batch every nsr_extra_every steps
        measure = ctx.extra_sampler is not None and k % c.nsr_extra_every == 0
        extra = (ctx.batch(ctx.extra_sampler.indices(k, device=ctx.device),
                           seeding.STREAM_EXTRA, k) if measure else None)
        return sgd_step(ctx.model, cross_entropy, x, y, sampling=ctx.extra_sampling,
                        measure=measure, extra=extra, **kw)
    return sgd_step(ctx.model, cross_entropy, x, y, sampling=ctx.sampling,
                    measure=k % c.nsr_every == 0 and c.batch_size >= 2, **kw)


# --- evaluation -----------------------------------------------------------------------------------

def squared_norm(params) -> torch.Tensor:
    return sum(p.detach().square().sum() for p in params)


# --- the loop -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def device_data(dataset: str, subset: int | None, resolution: int, device: torch.device,
                data_seed: int) -> DeviceData:
    """The prepared (read-only) data set, shared by the runs of one process."""
    raw = load_dataset(dataset, root=data_root())
    return prepare(raw, subset=subset, resolution=resolution, device=device, seed=data_seed)


def build(config: RunConfig, device: torch.device, *, model: torch.nn.Module | None = None,
          data: DeviceData | RawDataset | None = None) -> Context:
    """Data, model and samplers of a run (shared by ``train`` and by measurement tools).

    Args:
        config: the run.
        device: where to train.
        model: a net to train instead of ``build_model(config.arch, ...)`` (moved to
            ``device``; its trained parameters are those with ``requires_grad``).
        data: a prepared ``DeviceData`` (used as is) or a ``RawDataset`` (prepared with the
            config's subset, resolution and data seed) instead of loading ``config.dataset``.

    Raises:
        ValueError: if the data's training-set size differs from ``config.train_size``.
    """
    if data is None:
        data = device_data(config.dataset, config.subset, config.resolution, device,
                           config.data_seed)
    elif isinstance(data, RawDataset):
        data = prepare(data, subset=config.subset, resolution=config.resolution, device=device,
                       seed=config.data_seed)
    n = data.train_size
    if n != config.train_size:
        raise ValueError(f"data has {n} training examples but the config says "
                         f"n={config.train_size} (subset={config.subset!r})")
    if model is None:
        model = build_model(config.arch, width=config.width, norm=config.norm,
                            num_classes=data.num_classes, in_channels=data.in_channels,
                            seed=config.seed)
    model = model.to(device).train()
    svag = config.update_rule == "svag"
    sampler = Sampler(config.sampler, n, config.batch_size * (2 if svag else 1), config.seed)
    coupled = batch_coupled(model)
    sampling = Sampling.from_sampler(config.sampler, n)
    extra = extra_sampling = None
    if coupled and config.update_rule == "sgd":
        # An independent draw (never the step's own permutation), so the pair (g, g_extra) is
        # estimated as two independent batches.
        kind = "replacement" if config.sampler == "replacement" else "iid"
        extra = Sampler(kind, n, config.batch_size,
                        seeding.derive_seed(config.seed, seeding.STREAM_EXTRA) % (1 << 62))
        n_pop = sampler_population(kind, n)
        extra_sampling = (Sampling.with_replacement() if n_pop is None
                          else Sampling.independent(n_pop))
    ranks = distributed.current()
    distributed.check_supported(config, coupled, ranks)
    params = trained_parameters(model)
    forward = accelerate(model, device, channels_last=config.channels_last, tf32=config.tf32,
                         compile=config.compile, bf16=config.bf16)
    merge = distributed.BatchNormMerge(model) if ranks is not None and coupled else None
    return Context(config, model, params, data, sampler, extra, coupled, sampling,
                   extra_sampling, device, forward, ranks, merge)


def train(
    config: RunConfig,
    *,
    resume: dict | None = None,
    on_checkpoint=None,
    progress: bool = True,
    step_callback=None,
    model: torch.nn.Module | None = None,
    data: DeviceData | RawDataset | None = None,
) -> TrainResult:
    """Train one run and return its history; see the module docstring for the update.

    Args:
        config: the run.
        resume: a checkpoint state (from ``on_checkpoint``) to continue from.
        on_checkpoint: called with the state every ``checkpoint_every`` base steps.
        progress: show a progress bar.
        step_callback: called as ``step_callback(step)`` after every optimizer step.
        model, data: injected into :func:`build`.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    ctx = build(config, device, model=model, data=data)
    model, params = ctx.model, ctx.params
    opt = torch.optim.SGD(params, lr=config.step_lr, momentum=config.momentum,
                          weight_decay=config.wd)
    lr_schedule, wd_schedule = schedule_from_config(config)

    rows: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        rows = {c: list(resume["history"][c]) for c in HISTORY_COLUMNS}
        start = int(resume["step"])
    if progress and start == 0:
        print(config.summary(), flush=True)

    l, spe, total = config.l_eff, config.steps_per_epoch, config.total_steps
    log_every = config.actual_log_every
    ckpt_every = svag_steps(config.checkpoint_every, l)
    eval_every = svag_steps(config.eval_every, l)
    eval_start = config.eval_from * total  # test evaluations cost; some figures need only the end
    window = StepWindow(device)
    diverged_step = None
    bar = tqdm(total=total, initial=start, disable=not progress, mininterval=1.0,
               desc=f"{config.algo} l={l:g} B={config.batch_size}", leave=False)

    def state(step):
        return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "history": {c: list(v) for c, v in rows.items()}}

    for k in range(start, total):
        # schedule: SVAG's step k sits at base time k/l, so every milestone stretches by l
        lr_k = config.step_lr * lr_schedule.at_step(k, l, spe)
        wd_k = config.wd * wd_schedule.at_step(k, l, spe)
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = lr_k, wd_k
        stats = gradient(ctx, k)  # step
        set_grad(params, stats.grad)
        opt.step()
        window.add(k, stats)
        bar.update(1)
        if step_callback is not None:
            step_callback(k + 1)
        step = k + 1
        if step % log_every and step != total:
            continue
        # log / evaluate: one history row per window; a non-finite loss, gradient or |x|²
        # anywhere in the window ends the run as diverged at its first bad step
        row = window.flush()
        R = squared_norm(params).item()
        bad = row.pop("first_bad")
        if bad is None and not torch.isfinite(torch.tensor(R)):
            bad = k
        evaluate_now = bad is None and (
            step == total or (step % eval_every == 0 and step >= eval_start))
        test_loss, test_acc = evaluate(model, ctx.data) if evaluate_now else (float("nan"),) * 2
        row.update(step=step, effective_step=step / l, epoch=step / l / spe, lr=lr_k, wd=wd_k,
                   test_loss=test_loss, test_acc=test_acc, R=R)
        for key in HISTORY_COLUMNS:
            rows[key].append(row[key])
        if progress:
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.1f}",
                            test=f"{test_acc:.1f}", refresh=False)
        if bad is not None:
            diverged_step = bad + 1
            break
        # checkpoint (the store writes the final one itself)
        if on_checkpoint is not None and (step % ckpt_every == 0) and step != total:
            on_checkpoint(state(step))
    bar.close()
    status = "diverged" if diverged_step is not None else "complete"
    history = history_frame(rows)
    return TrainResult(history, status, diverged_step, state(int(history["step"].iloc[-1])),
                       str(device))
