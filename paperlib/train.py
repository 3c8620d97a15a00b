"""One training loop for SGD, SVAG, NGD and GD; the algorithm only decides how a step's gradient
is formed (``GRADIENT_STEPS``, the single dispatch). The update is always eq. (1)/(7):

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
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from . import seeding
from .config import RunConfig
from .data import DeviceData, Sampler, load_dataset, prepare
from .models import build_model, has_batch_coupling, trained_parameters
from .ngd import gd_weights, ngd_weights, split_chunks
from .nsr import online_nsr
from .paths import data_root
from .schedules import (
    Schedule,
    constant_schedule,
    cosine_schedule,
    step_schedule,
    triangle_schedule,
)
from .svag import svag_coefficients, svag_example_weights

HISTORY_COLUMNS = (
    "step",  # actual optimizer steps taken
    "effective_step",  # step / l (= base steps; the x axis of SVAG plots)
    "epoch",  # effective_step / (N // B)
    "lr",  # η_k of the last step of the window (per actual step)
    "wd",  # λ_k of the last step
    "train_loss", "train_acc",  # mean over the window's training batches (full data: GD/NGD)
    "test_loss", "test_acc",  # on the whole test set at evaluation rows, NaN elsewhere
    "R",  # |x|² over trained parameters at the end of the window
    "G", "N",  # online estimates of |∇L|² and Tr Σ_B averaged over the window (NaN if none)
    "grad_sq",  # mean |g_k|² of the gradient used by the steps (weight decay excluded)
    "nsr_count",  # number of online G/N measurements in the window
)

INT_COLUMNS = ("step", "nsr_count")


def history_frame(rows) -> pd.DataFrame:
    """A history DataFrame with fixed column order and dtypes (int steps, float metrics), the
    same whether built in memory or read back from CSV."""
    df = pd.DataFrame({c: rows[c] for c in HISTORY_COLUMNS})
    return df.astype({c: ("int64" if c in INT_COLUMNS else "float64") for c in HISTORY_COLUMNS})


@dataclass
class TrainResult:
    history: pd.DataFrame
    status: str  # complete | diverged
    diverged_step: int | None
    state: dict  # the final checkpoint state
    device: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not allowed here: no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


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


# --- gradient formation -------------------------------------------------------------------------

@dataclass
class Context:
    config: RunConfig
    model: torch.nn.Module
    params: list
    data: DeviceData
    sampler: Sampler  # batches of B (SGD) or 2B (SVAG, l > 1)
    extra_sampler: Sampler | None  # independent batches for BN nets' online estimate
    coupled: bool  # BatchNorm: examples interact, so no fused / split passes
    n_pop: int | None  # finite population for the estimator (None: sampling with replacement)
    device: torch.device


def _losses(ctx: Context, x, y):
    if ctx.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if ctx.config.bf16:  # forward (and so backward) in bfloat16 where autocast allows; loss fp32
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            out = ctx.model(x).float()
    else:
        out = ctx.model(x)
    return F.cross_entropy(out, y, reduction="none"), (out.argmax(1) == y)


def _batch(ctx: Context, idx, *keys: int):
    """Examples ``idx`` on the device, augmented with a generator keyed by ``keys``."""
    gen = seeding.generator(ctx.config.seed, *keys, device=ctx.device)
    return ctx.data.batch(idx, augment=ctx.config.augment, generator=gen)


def _grad(loss, params):
    return torch.autograd.grad(loss, params)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _set_grads(params, flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _stats(losses, correct, g=None, G=None, N=None):
    return dict(loss_sum=losses.detach().sum(), correct=correct.sum(), count=losses.numel(),
                g=g, G=G, N=N)


def sgd_gradient(ctx: Context, k: int) -> dict:
    """Minibatch gradient ∇L_γ (eq. 1). G/N: two half-batch passes (no coupling) or an extra
    independent batch every ``nsr_extra_every`` steps (BatchNorm: splitting would change it)."""
    c = ctx.config
    x, y = _batch(ctx, ctx.sampler.indices(k, device=ctx.device), seeding.STREAM_AUGMENT, k)
    B = c.batch_size
    if not ctx.coupled and k % c.nsr_every == 0 and B >= 2:
        b = B // 2
        parts = [slice(0, b), slice(b, 2 * b)] + ([slice(2 * b, B)] if B % 2 else [])
        grads, losses, correct = [], [], []
        for s in parts:
            ls, cr = _losses(ctx, x[s], y[s])
            grads.append(_flat(_grad(ls.sum(), ctx.params)))
            losses.append(ls)
            correct.append(cr)
        g = sum(grads) / B  # exact batch mean: Σ over parts of summed per-example grads / B
        G, N = online_nsr(grads[0] / b, grads[1] / b, b, B, n=ctx.n_pop, disjoint=True)
        return _stats(torch.cat(losses), torch.cat(correct), g, G, N)
    losses, correct = _losses(ctx, x, y)
    g = _flat(_grad(losses.mean(), ctx.params))
    G = N = None
    if ctx.coupled and ctx.extra_sampler is not None and k % c.nsr_extra_every == 0:
        xe, ye = _batch(ctx, ctx.extra_sampler.indices(k, device=ctx.device),
                        seeding.STREAM_EXTRA, k)
        with frozen_batchnorm_stats(ctx.model):
            le, _ = _losses(ctx, xe, ye)
            ge = _flat(_grad(le.mean(), ctx.params))
        G, N = online_nsr(g, ge, B, B, n=ctx.n_pop, disjoint=False)
    return _stats(losses, correct, g, G, N)


def svag_gradient(ctx: Context, k: int) -> dict:
    """∇(c1 L_γ1 + c2 L_γ2) (eq. 5). One fused pass with per-example weights when examples do not
    interact; two passes of B (per-batch statistics) for BatchNorm and on measuring steps."""
    c = ctx.config
    B = c.batch_size
    x, y = _batch(ctx, ctx.sampler.indices(k, device=ctx.device), seeding.STREAM_AUGMENT, k)
    c1, c2 = svag_coefficients(c.l)
    if ctx.coupled or k % c.nsr_every == 0:
        l1, a1 = _losses(ctx, x[:B], y[:B])
        g1 = _flat(_grad(l1.mean(), ctx.params))
        l2, a2 = _losses(ctx, x[B:], y[B:])
        g2 = _flat(_grad(l2.mean(), ctx.params))
        G, N = online_nsr(g1, g2, B, B, n=ctx.n_pop, disjoint=ctx.n_pop is not None)
        return _stats(torch.cat([l1, l2]), torch.cat([a1, a2]), c1 * g1 + c2 * g2, G, N)
    # Weights before the forward pass: their host-to-device copy waits for the GPU, so done
    # here it does not stall the backward launches behind the forward (no effect on CPU).
    w = svag_example_weights(c.l, B, dtype=x.dtype, device=ctx.device)
    losses, correct = _losses(ctx, x, y)
    g = _flat(_grad((w * losses).sum(), ctx.params))
    return _stats(losses, correct, g)


def full_data_gradient(ctx: Context, k: int) -> dict:
    """GD (w_i = 1/N) or NGD (eq. 3; w_i = 1/N + (z_i − z̄)/√(N·B), z fresh each step and shared
    by all chunks): Σ_i w_i ∇ℓ_i over the whole training set, in chunks (memory flat in N)."""
    c = ctx.config
    n = ctx.data.train_size
    if c.algo == "ngd":
        gen = seeding.generator(c.seed, seeding.STREAM_NGD, k, device=ctx.device)
        w = ngd_weights(n, c.batch_size, generator=gen, dtype=torch.float32, device=ctx.device)
    else:
        w = gd_weights(n, dtype=torch.float32, device=ctx.device)
    total = None
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    for j, s in enumerate(split_chunks(n, c.chunk_size)):
        idx = torch.arange(s.start, s.stop, device=ctx.device)
        x, y = _batch(ctx, idx, seeding.STREAM_AUGMENT, k, j)
        losses, cr = _losses(ctx, x, y)
        grads = _flat(_grad((w[s] * losses).sum(), ctx.params))
        total = grads if total is None else total + grads
        loss_sum = loss_sum + losses.detach().sum()
        correct = correct + cr.sum()
    if c.algo == "gd":  # GD's gradient is ∇L exactly and carries no noise
        return dict(loss_sum=loss_sum, correct=correct, count=n, g=total,
                    G=total.double().square().sum(), N=torch.zeros((), device=ctx.device))
    return dict(loss_sum=loss_sum, correct=correct, count=n, g=total, G=None, N=None)


GRADIENT_STEPS = {"sgd": sgd_gradient, "svag": svag_gradient, "ngd": full_data_gradient,
                  "gd": full_data_gradient}


class frozen_batchnorm_stats:
    """Context manager: BatchNorm running statistics are restored on exit (extra batches must
    not change the trained model's state)."""

    def __init__(self, model):
        self.bns = [m for m in model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.bns]

    def __exit__(self, *exc):
        for m, s in zip(self.bns, self.saved, strict=True):
            m.load_state_dict(s)
        return False


# --- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, data: DeviceData, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) on the whole test set (BN in eval mode)."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in data.test_batches(batch_size):
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    return loss / count, 100.0 * correct / count


def squared_norm(params) -> torch.Tensor:
    return sum(p.detach().square().sum() for p in params)


# --- the loop -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def device_data(dataset: str, subset: int | None, resolution: int, device: torch.device,
                data_seed: int) -> DeviceData:
    """The prepared (read-only) data set, shared by the runs of one process."""
    raw = load_dataset(dataset, root=data_root())
    return prepare(raw, subset=subset, resolution=resolution, device=device, seed=data_seed)


def build(config: RunConfig, device: torch.device):
    """Data, model and samplers of a run (shared by train and by measurement tools)."""
    data = device_data(config.dataset, config.subset, config.resolution, device,
                       config.data_seed)
    model = build_model(config.arch, width=config.width, norm=config.norm,
                        num_classes=data.num_classes, in_channels=data.in_channels,
                        seed=config.seed).to(device)
    n = data.train_size
    svag = config.update_rule == "svag"
    sampler = Sampler(config.sampler, n, config.batch_size * (2 if svag else 1), config.seed)
    coupled = has_batch_coupling(model)
    extra = None
    if coupled and config.update_rule == "sgd":
        kind = "replacement" if config.sampler == "replacement" else "iid"
        extra = Sampler(kind, n, config.batch_size,
                        seeding.derive_seed(config.seed, seeding.STREAM_EXTRA) % (1 << 62))
    n_pop = None if config.sampler == "replacement" else n
    params = trained_parameters(model)
    accelerator_options(config, model, device)
    return Context(config, model, params, data, sampler, extra, coupled, n_pop, device)


def accelerator_options(config: RunConfig, model: torch.nn.Module, device: torch.device) -> None:
    """Apply ``channels_last``, ``tf32`` and ``compile`` to a built model (``bf16`` autocast
    is applied per pass in ``_losses``). TF32 is a process-wide CUDA switch, set from the config
    of the run being built; CPU convolutions and matmuls are always full fp32."""
    if device.type == "cuda":  # the allow_tf32 flags: code reading either torch API sees them
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compile:
        model.compile()  # in place: parameters and state_dict keys are unchanged


def train(
    config: RunConfig,
    *,
    resume: dict | None = None,
    on_checkpoint=None,
    progress: bool = True,
    step_callback=None,
) -> TrainResult:
    """Train one run and return its history; see the module docstring for the update."""
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    ctx = build(config, device)
    model, params = ctx.model, ctx.params
    model.train()
    opt = torch.optim.SGD(params, lr=config.step_lr, momentum=config.momentum,
                          weight_decay=config.wd)
    lr_schedule, wd_schedule = schedule_from_config(config)
    gradient = GRADIENT_STEPS[config.update_rule]

    rows: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        rows = {c: list(resume["history"][c]) for c in HISTORY_COLUMNS}
        start = int(resume["step"])
    if progress and start == 0:
        print(config.summary(), flush=True)

    l = config.l_eff
    spe = config.steps_per_epoch
    unit_steps = spe if config.schedule_unit == "epoch" else 1
    log_every, total = config.actual_log_every, config.total_steps
    ckpt_every = int(round(config.checkpoint_every * l))
    eval_every = int(round(config.eval_every * l))
    eval_start = config.eval_from * total  # test evaluations cost; some figures need only the end
    acc = _Window(device)
    diverged_step = None
    bar = tqdm(total=total, initial=start, disable=not progress, mininterval=1.0,
               desc=f"{config.algo} l={l:g} B={config.batch_size}", leave=False)

    def state(step):
        return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "history": {c: list(v) for c, v in rows.items()}}

    for k in range(start, total):
        t = (k / l) / unit_steps  # base time in schedule units (SVAG: milestones stretch by l)
        lr_k = config.step_lr * lr_schedule(t)
        wd_k = config.wd * wd_schedule(t)
        for group in opt.param_groups:
            group["lr"], group["weight_decay"] = lr_k, wd_k
        stats = gradient(ctx, k)
        _set_grads(params, stats["g"])
        opt.step()
        acc.add(k, stats)
        bar.update(1)
        if step_callback is not None:
            step_callback(k + 1)
        step = k + 1
        if step % log_every and step != total:
            continue
        window = acc.flush()
        R = squared_norm(params).item()
        bad = window.pop("first_bad")
        if bad is None and not torch.isfinite(torch.tensor(R)):
            bad = k
        evaluate_now = bad is None and (
            step == total or (step % eval_every == 0 and step >= eval_start))
        test_loss, test_acc = evaluate(model, ctx.data) if evaluate_now else (float("nan"),) * 2
        rows["step"].append(step)
        rows["effective_step"].append(step / l)
        rows["epoch"].append(step / l / spe)
        rows["lr"].append(lr_k)
        rows["wd"].append(wd_k)
        rows["test_loss"].append(test_loss)
        rows["test_acc"].append(test_acc)
        rows["R"].append(R)
        for key, value in window.items():
            rows[key].append(value)
        if progress:
            bar.set_postfix(loss=f"{window['train_loss']:.3f}", acc=f"{window['train_acc']:.1f}",
                            test=f"{test_acc:.1f}", refresh=False)
        if bad is not None:
            diverged_step = bad + 1
            break
        if on_checkpoint is not None and (step % ckpt_every == 0) and step != total:
            on_checkpoint(state(step))
    bar.close()
    status = "diverged" if diverged_step is not None else "complete"
    history = history_frame(rows)
    return TrainResult(history, status, diverged_step, state(int(history["step"].iloc[-1])),
                       str(device))


class _Window:
    """On-device sums over a logging window (one host sync per history row)."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        z = torch.zeros((), device=self.device, dtype=torch.float64)
        self.loss, self.correct, self.count, self.gsq = z.clone(), z.clone(), 0, z.clone()
        self.G, self.N, self.nsr, self.steps = z.clone(), z.clone(), 0, 0
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.long)

    def add(self, k: int, s: dict):
        loss = s["loss_sum"].double()
        gsq = s["g"].double().square().sum()
        self.loss += loss
        self.correct += s["correct"].double()
        self.count += s["count"]
        self.gsq += gsq
        self.steps += 1
        finite = torch.isfinite(loss + gsq)  # (|g|² in float64 is finite iff every g_i is)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite,
                                     torch.full_like(self.first_bad, k), self.first_bad)
        if s["G"] is not None:
            self.G += s["G"].double()
            self.N += s["N"].double()
            self.nsr += 1

    def flush(self) -> dict:
        bad = int(self.first_bad.item())
        nan = float("nan")
        out = {
            "train_loss": (self.loss / self.count).item(),
            "train_acc": (100.0 * self.correct / self.count).item(),
            "grad_sq": (self.gsq / self.steps).item(),
            "G": (self.G / self.nsr).item() if self.nsr else nan,
            "N": (self.N / self.nsr).item() if self.nsr else nan,
            "nsr_count": self.nsr,
            "first_bad": None if bad < 0 else bad,
        }
        self.reset()
        return out
