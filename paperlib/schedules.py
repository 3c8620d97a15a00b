"""Learning-rate (and weight-decay) schedules as functions of BASE time.

A :class:`Schedule` maps the base time t (in epochs or steps of the l = 1 run, see ``unit``) to
a multiplier of the base LR η (or of the weight decay λ for a decay-factor schedule). SVAG with
parameter l (eq. 5) takes l steps per base step, so its step k sits at base time k/l: evaluating
the same schedule at :func:`base_time` stretches every milestone, knot and cosine period by l
automatically (Thm 4.3 compares SVAG step k with SDE time kη/l). The LR actually used by SVAG is
then ``svag_lr(η, l) * schedule(t)``.

Units (the training loop converts, via :func:`base_time` or :meth:`Schedule.at_step`):

* ``unit="step"``: t = k / l, with k the 0-based step index of the run.
* ``unit="epoch"``: t = k / (l · S), with S the number of steps per epoch of the l = 1 run
  (N // B with drop_last). SVAG consumes 2B examples per step, so an "epoch" here is a base
  epoch, not a pass of the SVAG loader.

t is the time at the START of step k (the first step of a run has t = 0). A step decay at
milestone m therefore applies to every step with t ≥ m. The authors' code changes the LR once
per epoch; ``resolution=1.0`` (epochs) reproduces that by flooring t to whole epochs.

Kinds: "constant"; "step" (``milestones`` with ``gamma`` per milestone, or explicit cumulative
``factors``); "cosine" (from 1 to ``min_factor`` over ``total``); "piecewise_linear" and its alias
"triangle" (linear interpolation through ``knots``). The paper's schedules (App. F):
:func:`triangle_schedule` and :func:`cosine_schedule` build the appendix ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paperlib.constants import SCHEDULE_KINDS as KINDS
from paperlib.constants import SCHEDULE_UNITS as UNITS
from paperlib.validate import as_real, check_int

__all__ = [
    "KINDS",
    "UNITS",
    "Schedule",
    "base_time",
    "constant_schedule",
    "cosine_schedule",
    "step_schedule",
    "triangle_schedule",
]


def base_time(
    step: int, l: float = 1.0, steps_per_epoch: int | None = None, unit: str = "epoch"
) -> float:
    """Base time of step ``step`` of a run with SVAG parameter ``l`` (l = 1: SGD/NGD/GD).

    t = step / l for ``unit="step"`` and t = step / (l · steps_per_epoch) for ``unit="epoch"``,
    where ``steps_per_epoch`` is that of the l = 1 run.

    Args:
        step: 0-based step index, an integer ≥ 0.
        l: SVAG parameter, ≥ 1.
        steps_per_epoch: steps per base epoch (≥ 1); required for ``unit="epoch"``.
        unit: "epoch" or "step".

    Returns:
        t as a float.

    Raises:
        ValueError: if step < 0, l < 1, unit is unknown, or steps_per_epoch is missing/invalid
            for ``unit="epoch"``.
    """
    check_int("step", step, 0)
    lf = as_real("l", l)
    if lf < 1.0:
        raise ValueError(f"l must be >= 1, got {l!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if unit == "step":
        return step / lf
    check_int("steps_per_epoch", steps_per_epoch, 1)  # unit="epoch" needs it
    return (step / lf) / steps_per_epoch  # (k / l) / S: the base step, then its epoch


@dataclass(frozen=True)
class Schedule:
    """A multiplier f(t) ≥ 0 of the base LR (or of λ) as a function of base time t ≥ 0.

    Fields (only those of the chosen ``kind`` may differ from their defaults):

    * ``kind``: one of :data:`KINDS`.
    * ``milestones`` ("step"): strictly increasing times ≥ 0. With ``factors`` empty,
      f(t) = gamma^j where j = #{milestones ≤ t}; otherwise f(t) = factors[j − 1] (1 for j = 0),
      ``factors`` being the cumulative multipliers after each milestone (same length).
    * ``gamma`` ("step"): per-milestone factor ≥ 0 (default 0.1, the paper's decay).
    * ``total``, ``min_factor`` ("cosine"): f(t) = m + (1 − m)(1 + cos(π·min(t, T)/T))/2 with
      T = total > 0 and m = min_factor ≥ 0: 1 at t = 0, m from t = T on.
    * ``knots`` ("piecewise_linear" / "triangle"): pairs (t_i, f_i) with strictly increasing
      t_i ≥ 0 and f_i ≥ 0; linear interpolation between knots, f_0 before the first and f_last
      after the last.
    * ``unit``: "epoch" or "step", the unit of t (documentation for the loop, see
      :meth:`at_step`).
    * ``resolution``: if > 0, t is first floored to a multiple of it (piecewise-constant
      schedule, e.g. 1.0 epoch to change the LR once per epoch as the authors' code does).

    Raises:
        ValueError: on construction, for an unknown kind/unit, unsorted or negative milestones,
            non-increasing knot times, negative factors, a field not used by the kind, etc.
    """

    kind: str = "constant"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    factors: tuple[float, ...] = ()
    total: float | None = None
    min_factor: float = 0.0
    knots: tuple[tuple[float, float], ...] = ()
    unit: str = "epoch"
    resolution: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        res = as_real("resolution", self.resolution)
        if res < 0.0:
            raise ValueError(f"resolution must be >= 0, got {self.resolution!r}")
        object.__setattr__(self, "resolution", res)
        kind = self.kind
        step_like, cos_like = kind == "step", kind == "cosine"
        lin_like = kind in ("piecewise_linear", "triangle")
        unused = []
        if not step_like and (self.milestones or self.factors or self.gamma != 0.1):
            unused.append("milestones/factors/gamma")
        if not cos_like and (self.total is not None or self.min_factor != 0.0):
            unused.append("total/min_factor")
        if not lin_like and self.knots:
            unused.append("knots")
        if unused:
            raise ValueError(f"kind={kind!r} does not use {', '.join(unused)}")
        if step_like:
            self._validate_step()
        elif cos_like:
            self._validate_cosine()
        elif lin_like:
            self._validate_knots()

    def _validate_step(self) -> None:
        ms = tuple(as_real("milestone", m) for m in self.milestones)
        if any(m < 0.0 for m in ms):
            raise ValueError(f"milestones must be >= 0, got {self.milestones!r}")
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones!r}")
        gamma = as_real("gamma", self.gamma)
        if gamma < 0.0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma!r}")
        fs = tuple(as_real("factor", f) for f in self.factors)
        if fs and len(fs) != len(ms):
            raise ValueError(
                f"factors must have one entry per milestone ({len(ms)}), got {len(fs)}"
            )
        if any(f < 0.0 for f in fs):
            raise ValueError(f"factors must be >= 0, got {self.factors!r}")
        object.__setattr__(self, "milestones", ms)
        object.__setattr__(self, "factors", fs)
        object.__setattr__(self, "gamma", gamma)

    def _validate_cosine(self) -> None:
        if self.total is None:
            raise ValueError("kind='cosine' needs total > 0, got None")
        total = as_real("total", self.total)
        if total <= 0.0:
            raise ValueError(f"total must be > 0, got {self.total!r}")
        m = as_real("min_factor", self.min_factor)
        if m < 0.0:
            raise ValueError(f"min_factor must be >= 0, got {self.min_factor!r}")
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "min_factor", m)

    def _validate_knots(self) -> None:
        if len(self.knots) == 0:
            raise ValueError(f"kind={self.kind!r} needs at least one knot (t, f)")
        knots = []
        for knot in self.knots:
            if len(knot) != 2:
                raise ValueError(f"each knot must be a pair (t, f), got {knot!r}")
            t, f = as_real("knot t", knot[0]), as_real("knot f", knot[1])
            if t < 0.0 or f < 0.0:
                raise ValueError(f"knot times and factors must be >= 0, got {knot!r}")
            knots.append((t, f))
        ts = [t for t, _ in knots]
        if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
            raise ValueError(f"knot times must be strictly increasing, got {ts!r}")
        object.__setattr__(self, "knots", tuple(knots))

    def __call__(self, t: float) -> float:
        """The multiplier f(t) at base time t.

        Args:
            t: base time ≥ 0 (in ``unit``s).

        Returns:
            f(t) ≥ 0 as a float.

        Raises:
            ValueError: if t is negative or not finite.
        """
        t = as_real("t", t)
        if t < 0.0:
            raise ValueError(f"t must be >= 0, got {t!r}")
        if self.resolution > 0.0:
            t = math.floor(t / self.resolution) * self.resolution
        kind = self.kind
        if kind == "constant":
            return 1.0
        if kind == "step":
            j = sum(1 for m in self.milestones if t >= m)
            if self.factors:
                return self.factors[j - 1] if j else 1.0
            return self.gamma**j
        if kind == "cosine":
            m, total = self.min_factor, self.total
            return m + (1.0 - m) * (1.0 + math.cos(math.pi * min(t, total) / total)) / 2.0
        knots = self.knots
        if t <= knots[0][0]:
            return knots[0][1]
        for (t0, f0), (t1, f1) in zip(knots, knots[1:], strict=False):
            if t <= t1:
                return f0 + (f1 - f0) * (t - t0) / (t1 - t0)
        return knots[-1][1]

    def at_step(self, step: int, l: float = 1.0, steps_per_epoch: int | None = None) -> float:
        """f(base_time(step, l, steps_per_epoch, self.unit)): the multiplier at step ``step``.

        Raises:
            ValueError: as :func:`base_time`.
        """
        return self(base_time(step, l, steps_per_epoch, self.unit))


def constant_schedule(unit: str = "epoch") -> Schedule:
    """f ≡ 1."""
    return Schedule("constant", unit=unit)


def step_schedule(
    milestones: tuple[float, ...], gamma: float = 0.1, unit: str = "epoch"
) -> Schedule:
    """Multiply by ``gamma`` at each milestone (paper: ×0.1 at epoch 250 of 300 for Figs 3-4,
    at step 24000 for Fig 1; the authors' configs: epochs 80 and 120 of 160).

    Raises:
        ValueError: as :class:`Schedule`.
    """
    return Schedule("step", milestones=tuple(milestones), gamma=gamma, unit=unit)


def cosine_schedule(
    base_lr: float = 0.8, final_lr: float = 1e-3, total: float = 160.0, unit: str = "epoch"
) -> Schedule:
    """Cosine decay from ``base_lr`` to ``final_lr`` over ``total`` (the paper: 0.8 → ~0.001
    over 160 epochs), as factors of ``base_lr``: min_factor = final_lr / base_lr.

    Args:
        base_lr: the base LR (> 0); the schedule multiplies it.
        final_lr: LR reached at t = total (0 ≤ final_lr).
        total: length of the decay (> 0).
        unit: "epoch" or "step".

    Returns:
        A "cosine" :class:`Schedule`.

    Raises:
        ValueError: if base_lr ≤ 0, final_lr < 0, total ≤ 0, or unit is unknown.
    """
    b = as_real("base_lr", base_lr)
    if b <= 0.0:
        raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
    f = as_real("final_lr", final_lr)
    if f < 0.0:
        raise ValueError(f"final_lr must be >= 0, got {final_lr!r}")
    return Schedule("cosine", total=total, min_factor=f / b, unit=unit)


def triangle_schedule(
    base_lr: float = 0.8,
    min_lr: float = 1e-4,
    total: float = 160.0,
    heights: tuple[float, ...] = (1.0, 0.5),
    shift: float = 1.0,
    unit: str = "epoch",
) -> Schedule:
    """Cyclic triangle LR of the appendix (App. F), as factors of ``base_lr``.

    ``len(heights)`` cycles of length P = total / cycles, half-length H = P / 2. Cycle c rises
    linearly from min_lr·h_c to base_lr·h_c over H and falls back to min_lr over H. Following
    the authors' code (which sets the LR of epoch e to the triangle's value at e + 1), the curve
    is shifted left by ``shift`` (1 unit), and where two cycles meet the LR is min_lr·h_{c+1}.
    With the defaults (0.8, 1e-4, 160 epochs, heights (1, 0.5)) the knots are

        t:   0       39    79        80       119   159
        LR:  0.0201  0.8   0.00005   0.01005  0.4   0.00005

    i.e. "linear 0.02 → 0.8 (epoch 39) → ~0 (79) → 0.4 (119) → ~0 (159)".

    Args:
        base_lr: the peak LR of the first cycle, which is also the base LR of the run (> 0).
        min_lr: LR at the bottom of each cycle before height scaling (0 ≤ min_lr < base_lr).
        total: total length (> 0).
        heights: one positive height per cycle.
        shift: left shift of the curve, in [0, H).
        unit: "epoch" or "step".

    Returns:
        A "triangle" :class:`Schedule` with ``knots``.

    Raises:
        ValueError: for out-of-range arguments.
    """
    b = as_real("base_lr", base_lr)
    if b <= 0.0:
        raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
    lo = as_real("min_lr", min_lr)
    if not 0.0 <= lo < b:
        raise ValueError(f"min_lr must be in [0, base_lr={b}), got {min_lr!r}")
    tot = as_real("total", total)
    if tot <= 0.0:
        raise ValueError(f"total must be > 0, got {total!r}")
    hs = tuple(as_real("height", h) for h in heights)
    if not hs or any(h <= 0.0 for h in hs):
        raise ValueError(f"heights must be a non-empty tuple of positive numbers, got {heights!r}")
    period = tot / len(hs)
    half = period / 2.0
    s = as_real("shift", shift)
    if not 0.0 <= s < half:
        raise ValueError(f"shift must be in [0, half cycle={half}), got {shift!r}")

    def rising(c: int, x: float) -> float:  # LR at offset x in [0, H] into cycle c
        return ((b - lo) * x / half + lo) * hs[c]

    knots = [(0.0, rising(0, s))]
    for c in range(len(hs)):
        knots.append((c * period + half - s, b * hs[c]))
        end = (c + 1) * period - s
        nxt = min(c + 1, len(hs) - 1)
        knots.append((end, lo * hs[nxt]))
        if c + 1 < len(hs) and s > 0.0:
            knots.append(((c + 1) * period, rising(c + 1, s)))
    return Schedule("triangle", knots=tuple((t, v / b) for t, v in knots), unit=unit)
