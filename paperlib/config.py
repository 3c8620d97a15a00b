"""One frozen dataclass per run, its validation, and the smoke / cpu / paper presets.

Units: "base" steps/epochs are those of the l = 1 run (SGD). SVAG with knob l runs l× as many
actual steps with LR η/l (eq. 5); plots use effective steps = actual steps / l.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass

from .constants import (
    ALGORITHMS,
    DATASET_CLASSES,
    DATASET_SIZES,
    DATASETS,
    NORMS,
    PRESETS,
    RESOLUTIONS,
    SAMPLERS,
    SCHEDULE_UNITS,
    SCHEDULES,
    parse_arch,
)
from .svag import svag_lr, svag_steps
from .validate import check_choice, check_number, is_int, is_whole

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str):
    """The ``torch.device`` a run with ``device=name`` trains on here ("auto": CUDA when present).

    Raises:
        ValueError: ``name="cuda"`` on a machine without a CUDA device.
    """
    import torch  # here, so that reading and validating configs does not import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not allowed here: no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (its hash names the run in the store)."""

    # --- algorithm -------------------------------------------------------------------------
    algo: str = "sgd"  # sgd (eq. 1) | svag (eq. 5) | ngd (eq. 3) | gd
    l: float = 1.0  # SVAG knob l ≥ 1 (eq. 5); LR η/l, l× the steps; l = 1 is exactly SGD
    # --- model -------------------------------------------------------------------------------
    arch: str = "preresnet32"  # preresnet<6n+2> | vgg11/13/16/19 | convnet | resnet<6n+2>
    width: float = 1.0  # width factor w (channels 16w/32w/64w)
    norm: str = "bn"  # bn | gn | none
    # --- data --------------------------------------------------------------------------------
    dataset: str = "cifar10"  # cifar10 | cifar100 | svhn | synthetic
    subset: int | None = None  # n: size of a seeded class-balanced training subset; None = all
    resolution: int = 32  # r: images average-pooled to r×r pixels (divides 32)
    augment: bool = True  # random crop (padding 4) + horizontal flip on training batches
    sampler: str = "reshuffle"  # reshuffle | iid | replacement | fixed (appendix sampling schemes)
    data_seed: int = 0  # seed of the training subset (independent of `seed`)
    # --- optimization ------------------------------------------------------------------------
    batch_size: int = 128  # B: minibatch size (SVAG draws two batches of B per step)
    lr: float = 0.8  # η: base LR of the l = 1 run, per step
    wd: float = 5e-4  # λ: coupled weight decay, x ← x − η(∇L_γ(x) + λx)
    momentum: float = 0.0  # heavy-ball momentum (the paper uses 0)
    schedule: str = "step"  # constant | step | cosine | triangle (LR multiplier vs base time)
    milestones: tuple[float, ...] = (250.0,)  # step schedule: LR ×gamma at each (schedule_unit)
    gamma: float = 0.1  # step schedule factor
    final_lr_factor: float = 1.25e-3  # cosine: final LR / η (the paper's appendix: 0.8 → 0.001)
    wd_milestones: tuple[float, ...] = ()  # λ ×wd_gamma at each (schedule_unit)
    wd_gamma: float = 1.0  # weight-decay factor schedule
    schedule_unit: str = "epoch"  # epoch | step (units of milestones and of cosine/triangle)
    epochs: float | None = 300.0  # training length in base epochs (one of epochs / steps)
    steps: int | None = None  # training length in base steps (overrides epochs when set)
    # --- bookkeeping -------------------------------------------------------------------------
    seed: int = 0  # seed of init, batches, augmentation and NGD noise
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    log_every: int = 100  # base steps per history row (train metrics and G, N averaged over it)
    eval_every: int = 1000  # base steps between test evaluations (a multiple of log_every)
    eval_from: float = 0.0  # evaluate only from this fraction of training on (the end always)
    nsr_every: int = 1  # measure the online G/N estimate at every k-th step (1 = every step)
    nsr_extra_every: int = 4  # BN nets under SGD: one extra independent batch every k steps
    chunk_size: int = 1000  # examples per forward pass of the full-data (GD/NGD) gradient
    checkpoint_every: int = 1000  # base steps between checkpoints (rounded to a log boundary)
    # --- accelerator options (speed; tf32 / bf16 change rounding; no-ops on CPU at defaults) --
    channels_last: bool = False  # NHWC memory format for model and batches (faster convs on GPU)
    tf32: bool = True  # CUDA only: TF32 convs/matmuls (10-bit mantissa inputs); no effect on CPU
    compile: bool = False  # torch.compile the model (slow first steps; mainly for CUDA)
    bf16: bool = False  # bfloat16 autocast of training passes (off: the paper's numerics are fp32)

    def __post_init__(self) -> None:
        # Values are stored as their declared types (l=2 and l=2.0 are one config, one run id).
        for name, (kind, optional) in _field_kinds().items():
            object.__setattr__(self, name, _as_kind(name, getattr(self, name), kind, optional))
        validate(self)

    # --- derived quantities (printed when a run starts) ------------------------------------
    @property
    def train_size(self) -> int:
        """n: number of training examples used."""
        return self.subset if self.subset is not None else DATASET_SIZES[self.dataset][0]

    @property
    def steps_per_epoch(self) -> int:
        """Base steps per epoch, drop_last (N // B)."""
        return max(1, self.train_size // self.batch_size)

    @property
    def base_steps(self) -> int:
        """Training length in base (l = 1) steps."""
        if self.steps is not None:
            return self.steps
        return int(round(self.epochs * self.steps_per_epoch))

    @property
    def total_steps(self) -> int:
        """Actual optimizer steps: l × base steps for SVAG (Thm 4.3 needs lT/η steps)."""
        return svag_steps(self.base_steps, self.l_eff)

    @property
    def update_rule(self) -> str:
        """The update actually computed: SVAG with l = 1 is exactly SGD (eq. 5, c1 = 1, c2 = 0),
        so it runs as SGD (one batch of B, SGD's G/N measurement)."""
        return "sgd" if self.algo == "svag" and self.l == 1 else self.algo

    @property
    def l_eff(self) -> float:
        return self.l if self.algo == "svag" else 1.0

    @property
    def step_lr(self) -> float:
        """Per-step LR before the schedule: η/l for SVAG (eq. 5), η otherwise."""
        return svag_lr(self.lr, self.l_eff)

    @property
    def actual_log_every(self) -> int:
        return svag_steps(self.log_every, self.l_eff)

    def summary(self) -> str:
        return (
            f"{self.algo}{f' l={self.l:g}' if self.algo == 'svag' else ''} {self.arch} "
            f"w={self.width:g} norm={self.norm} {self.dataset} N={self.train_size} "
            f"r={self.resolution} B={self.batch_size} η={self.lr:g} (step LR {self.step_lr:g}) "
            f"λ={self.wd:g} ηλ={self.lr * self.wd:.2e} | {self.base_steps} base steps "
            f"({self.base_steps / self.steps_per_epoch:.1f} epochs of {self.steps_per_epoch}), "
            f"{self.total_steps} actual steps, seed {self.seed}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> RunConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


@functools.cache
def _field_kinds() -> dict[str, tuple[type, bool]]:
    """Declared type of each RunConfig field: (int | float | bool | str | tuple, optional)."""
    hints = typing.get_type_hints(RunConfig)
    kinds = {}
    for f in dataclasses.fields(RunConfig):
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple:
            kinds[f.name] = (tuple, False)
            continue
        args = typing.get_args(tp)
        base = [a for a in args if a is not type(None)]
        kinds[f.name] = (base[0] if base else tp, len(base) < len(args))
    return kinds


_KIND_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
               tuple: "a list of numbers"}


def _as_kind(name: str, value, kind: type, optional: bool):
    """``value`` as the declared type of field ``name``, or ValueError: ints become floats in
    float fields, integral floats become ints in int fields, lists become tuples of floats."""
    if value is None and optional:
        return None
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is float and real:
        return float(value)
    if kind is int and (is_int(value) or is_whole(value)):
        return int(value)
    if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
        return value
    if kind is tuple and isinstance(value, (list, tuple)) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    raise ValueError(f"{name}={value!r} is not allowed; it must be {_KIND_NAMES[kind]}"
                     + (" or None" if optional else ""))


def validate_arch(arch: str) -> None:
    """ValueError naming ``arch`` unless it is one of the grammar's (``constants.parse_arch``)."""
    parse_arch(arch)


def ignored_fields(c: RunConfig) -> dict[str, str]:
    """Fields whose value has no effect on the run ``c`` describes, each with the reason."""
    out = {}
    if c.algo != "svag":
        out["l"] = f"only SVAG uses l (algo={c.algo!r})"
    if c.schedule != "step":
        out["milestones"] = out["gamma"] = \
            f"only the step schedule uses them (schedule={c.schedule!r})"
    elif not c.milestones:
        out["gamma"] = "there are no milestones to apply it at"
    if c.schedule != "cosine":
        out["final_lr_factor"] = f"only the cosine schedule uses it (schedule={c.schedule!r})"
    if not c.wd_milestones:
        out["wd_gamma"] = "there are no wd_milestones to apply it at"
    if c.algo in ("gd", "ngd"):
        out["sampler"] = out["nsr_every"] = \
            f"{c.algo.upper()} uses the whole training set every step"
    else:
        out["chunk_size"] = "only GD and NGD form full-data gradients in chunks"
    if not (c.update_rule == "sgd" and c.norm == "bn"):
        out["nsr_extra_every"] = "only SGD on a BatchNorm net draws extra batches for G/N"
    if c.steps is not None:
        out["epochs"] = f"steps={c.steps} sets the training length"
    if c.subset is None:
        out["data_seed"] = "it only draws the training subset (subset=None uses all data)"
    return out


# Inherited by the figure sweeps from the step-schedule presets into cosine / triangle runs;
# stored results are named by them, so a config may carry them (the CLI refuses them as flags).
_TOLERATED_IGNORED = ("milestones", "gamma")


def refuse_ignored(c: RunConfig, given=None) -> None:
    """Refuse settings that ``c`` ignores, so that they cannot name a run of their own with
    the history of another (the store calls this before it trains): by default every field
    whose value differs from the default (None counts as unset) and has no effect; with
    ``given`` (names a user set explicitly, e.g. CLI flags) each of those that has no effect.
    A RunConfig may hold them (tools that only build a run's parts use them as switches)."""
    default = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for name, reason in ignored_fields(c).items():
        value = getattr(c, name)
        if given is None:
            if value is None or value == default[name] or (
                    name in _TOLERATED_IGNORED and c.schedule != "step"):
                continue
        elif name not in given or value == default[name]:
            continue
        raise ValueError(f"{name}={value!r} is not allowed here: it would be ignored, since "
                         f"{reason}; leave it out")


def validate(c: RunConfig) -> None:
    """Raise ValueError naming the first bad field and what is allowed; does no work."""
    check_choice("algo", c.algo, ALGORITHMS)
    check_choice("norm", c.norm, NORMS)
    check_choice("dataset", c.dataset, DATASETS)
    check_choice("sampler", c.sampler, SAMPLERS)
    check_choice("schedule", c.schedule, SCHEDULES)
    check_choice("schedule_unit", c.schedule_unit, SCHEDULE_UNITS)
    check_choice("device", c.device, DEVICES)
    validate_arch(c.arch)
    check_number("l", c.l, 1, what="SVAG's l (eq. 5)")
    if c.algo == "svag" and c.l != int(c.l):
        raise ValueError(f"l={c.l!r} is not allowed; use an integer l ≥ 1 so l × steps is exact")
    check_number("width", c.width, 0, low_open=True, what="the width factor")
    check_number("lr", c.lr, 0, low_open=True, what="η")
    check_number("wd", c.wd, 0, what="λ")
    check_number("momentum", c.momentum, 0, 1, high_open=True)
    check_number("gamma", c.gamma, 0, what="the step schedule's factor")
    check_number("wd_gamma", c.wd_gamma, 0, what="the weight-decay factor")
    check_number("final_lr_factor", c.final_lr_factor, 0, 1)
    check_number("eval_from", c.eval_from, 0, 1, what="the fraction of training")
    n_train = DATASET_SIZES[c.dataset][0]
    n_classes = DATASET_CLASSES[c.dataset]
    if c.subset is not None and not n_classes <= c.subset <= n_train:
        raise ValueError(
            f"subset={c.subset!r} is not allowed; the class-balanced subset needs at least one "
            f"example per class, so N must be in [{n_classes}, {n_train}] for {c.dataset}"
        )
    if c.resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={c.resolution!r} is not allowed; choose one of "
                         f"{list(RESOLUTIONS)} (divisors of 32)")
    if not 1 <= c.batch_size <= c.train_size:
        raise ValueError(
            f"batch_size={c.batch_size!r} is not allowed; B must be an integer in "
            f"[1, N={c.train_size}]"
        )
    if c.update_rule == "svag" and 2 * c.batch_size > c.train_size:
        raise ValueError(
            f"batch_size={c.batch_size} is not allowed for SVAG; it draws two batches, so "
            f"2B must be ≤ N={c.train_size}"
        )
    if c.algo == "sgd" and c.norm != "bn" and c.batch_size < 2:
        raise ValueError("batch_size=1 is not allowed for SGD's online G/N estimate; use B ≥ 2")
    if c.algo in ("ngd", "gd") and c.norm == "bn":
        raise ValueError(
            f"norm='bn' is not allowed with algo={c.algo!r}: the full-data pass needs per-example "
            "gradients that do not depend on the batch; use norm 'gn' or 'none'"
        )
    if c.steps is None and c.epochs is None:
        raise ValueError("set one of epochs or steps (training length)")
    if c.steps is not None and c.steps < 1:
        raise ValueError(f"steps={c.steps!r} is not allowed; it must be an integer ≥ 1")
    if c.steps is None:
        check_number("epochs", c.epochs, 0, low_open=True, what="the training length in epochs")
    for name in ("log_every", "eval_every", "nsr_every", "nsr_extra_every", "chunk_size",
                 "checkpoint_every"):
        v = getattr(c, name)
        if v < 1:
            raise ValueError(f"{name}={v!r} is not allowed; it must be an integer ≥ 1")
    if c.eval_every % c.log_every:
        raise ValueError(
            f"eval_every={c.eval_every} is not allowed; it must be a multiple of "
            f"log_every={c.log_every}"
        )
    for name in ("milestones", "wd_milestones"):
        ms = getattr(c, name)
        if not all(math.isfinite(m) and m >= 0 for m in ms) or list(ms) != sorted(ms):
            raise ValueError(f"{name}={ms!r} is not allowed; use finite, non-negative, sorted "
                             "values")
    if c.seed < 0 or c.data_seed < 0:
        raise ValueError(f"seed={c.seed!r}, data_seed={c.data_seed!r}: seeds must be ≥ 0")


# --- presets: one function that scales a config, not copies of configs ------------------------

# `paper`: the paper's CIFAR-10 recipe (Sec. 5, App. F). `cpu`: a 2-core probe's noise-dominated
# setting (8×8 images, n = 2000, small scale-invariant convnet, ηλ = 2e-3, 4000 steps, ×0.1 at
# 3500), where every paper claim was visible on 2 cores. `smoke`: seconds, for tests.
_PRESET_FIELDS: dict[str, dict] = {
    "paper": {},
    "cpu": dict(
        arch="convnet", width=1.0, norm="gn", subset=2000, resolution=8, augment=False,
        batch_size=16, lr=0.4, wd=5e-3, schedule="step", schedule_unit="step",
        milestones=(3500.0,), steps=4000, epochs=None, log_every=50, eval_every=500,
        checkpoint_every=1000,
    ),
    "smoke": dict(
        arch="convnet", width=1.0, norm="gn", subset=256, resolution=8, augment=False,
        batch_size=16, lr=0.4, wd=5e-3, schedule="step", schedule_unit="step",
        milestones=(30.0,), steps=40, epochs=None, log_every=10, eval_every=20,
        checkpoint_every=20,
    ),
}


def preset(name: str, **overrides) -> RunConfig:
    """The RunConfig of preset `name` (smoke | cpu | paper) with `overrides` applied."""
    check_choice("preset", name, PRESETS)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown RunConfig field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    merged = {**_PRESET_FIELDS[name], **overrides}
    if "epochs" in overrides and "steps" not in overrides:
        merged["steps"] = None  # a length in epochs replaces the preset's length in steps
    return RunConfig(**merged)


__all__ = ["RunConfig", "preset", "validate", "validate_arch", "ignored_fields", "refuse_ignored"]
