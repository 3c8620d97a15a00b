"""LR / weight-decay schedules on base time, the appendix's triangle and cosine, SVAG stretching."""

import math

import pytest

from paperlib.schedules import (
    KINDS,
    Schedule,
    base_time,
    constant_schedule,
    cosine_schedule,
    step_schedule,
    triangle_schedule,
)


def test_constant():
    s = constant_schedule()
    assert s(0.0) == 1.0 and s(1e6) == 1.0
    assert Schedule()(3.0) == 1.0


def test_step_at_and_around_milestones():
    s = step_schedule((80, 120))
    assert s(0) == 1.0
    assert s(79.999) == 1.0
    assert s(80) == pytest.approx(0.1)
    assert s(119.999) == pytest.approx(0.1)
    assert s(120) == pytest.approx(0.01)
    assert s(1e9) == pytest.approx(0.01)
    # explicit cumulative factors
    f = Schedule("step", milestones=(10, 20), factors=(0.5, 0.05))
    assert [f(t) for t in (0, 9.9, 10, 19.9, 20, 30)] == [1.0, 1.0, 0.5, 0.5, 0.05, 0.05]
    # Fig 1: ×0.1 at step 24000
    fig1 = step_schedule((24000,), unit="step")
    assert fig1.at_step(23999) == 1.0 and fig1.at_step(24000) == pytest.approx(0.1)
    assert Schedule("step", milestones=(0,), gamma=0.5)(0.0) == 0.5


def test_cosine_endpoints():
    s = Schedule("cosine", total=100.0, min_factor=0.01)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx((1 + 0.01) / 2)
    assert s(100) == pytest.approx(0.01)
    assert s(250) == pytest.approx(0.01)  # clamped after total
    vals = [s(t) for t in range(0, 101, 5)]
    assert all(b < a for a, b in zip(vals, vals[1:], strict=False))
    c = cosine_schedule()  # the paper: 0.8 → ~0.001 over 160 epochs
    assert 0.8 * c(0) == pytest.approx(0.8)
    assert 0.8 * c(160) == pytest.approx(0.001)
    assert 0.8 * c(80) == pytest.approx((0.8 + 0.001) / 2)


def authors_triangle_lr(epoch: int, lr=0.8, lr_min=1e-4, heights=(1.0, 0.5), total=160):
    """LR of epoch e (0-based) in the authors' tri_lr config: tri_value(e + 1)."""
    cycles = len(heights)
    period, half = total // cycles, total / (2 * cycles)
    s = epoch + 1
    ratio = abs(total // (2 * cycles) - s % period) / half
    return ((lr - lr_min) * (1 - ratio) + lr_min) * heights[min(s // period, cycles - 1)]


def test_triangle_matches_figures_md():
    s = triangle_schedule()
    assert s.kind == "triangle" and s.unit == "epoch"
    lr = [0.8 * s(t) for t in (0, 39, 79, 119, 159)]
    # "linear 0.02→0.8 (epoch 39) →~0 (79) → 0.4 (119) →~0 (159)"
    assert lr[0] == pytest.approx(0.02, abs=2e-4)
    assert lr[1] == pytest.approx(0.8, rel=1e-12)
    assert lr[2] < 1e-3 and lr[4] < 1e-3
    assert lr[3] == pytest.approx(0.4, rel=1e-12)
    assert 0.8 * s(1000) == pytest.approx(lr[4])
    # linear in between: midpoint of the first rise
    assert 0.8 * s(19.5) == pytest.approx((lr[0] + lr[1]) / 2, rel=1e-12)
    # per-epoch values agree with the authors' config to within 1e-4 in LR (resolution 1)
    per_epoch = Schedule("triangle", knots=s.knots, resolution=1.0)
    worst = max(abs(0.8 * per_epoch(e + 0.5) - authors_triangle_lr(e)) for e in range(160))
    assert worst < 1e-4


def test_piecewise_linear_ends_and_interpolation():
    s = Schedule("piecewise_linear", knots=((10, 1.0), (20, 3.0), (30, 0.0)))
    assert s(0) == 1.0 and s(10) == 1.0
    assert s(15) == pytest.approx(2.0)
    assert s(25) == pytest.approx(1.5)
    assert s(30) == 0.0 and s(99) == 0.0
    assert Schedule("triangle", knots=((0, 0.7),))(5) == 0.7


@pytest.mark.parametrize(
    "sched",
    [step_schedule((3, 7)), triangle_schedule(total=16), cosine_schedule(total=10)],
)
def test_svag_stretches_every_milestone(sched):
    """SVAG step k sits at base time k/l: with l = 4 the schedule at SVAG step 4k equals the
    l = 1 schedule at step k, and every milestone is reached l times later."""
    spe = 5  # steps per base epoch of the l = 1 run
    for k in range(0, 120):
        assert sched.at_step(4 * k, l=4, steps_per_epoch=spe) == sched.at_step(
            k, l=1, steps_per_epoch=spe
        )
        assert sched.at_step(k, l=4, steps_per_epoch=spe) == sched(k / (4 * spe))
    if sched.kind == "step":  # milestone 3 epochs = base step 15 = SVAG step 60 at l = 4
        assert sched.at_step(59, l=4, steps_per_epoch=spe) == 1.0
        assert sched.at_step(60, l=4, steps_per_epoch=spe) == pytest.approx(0.1)


def test_base_time():
    assert base_time(30, l=3, unit="step") == 10.0
    assert base_time(30, l=3, steps_per_epoch=5) == 2.0
    assert base_time(0, steps_per_epoch=1) == 0.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        base_time(3)
    with pytest.raises(ValueError, match="step must be"):
        base_time(-1, unit="step")
    with pytest.raises(ValueError, match="l must be"):
        base_time(1, l=0.5, unit="step")
    with pytest.raises(ValueError, match="unit must be one of"):
        base_time(1, unit="iteration")


def test_resolution_floors_time():
    s = Schedule("cosine", total=10.0, resolution=1.0)
    assert s(3.7) == s(3.0)
    assert s(3.7) != Schedule("cosine", total=10.0)(3.7)


def test_schedule_is_frozen_and_normalizes_lists():
    s = Schedule("step", milestones=[5, 10])
    assert s.milestones == (5.0, 10.0)
    with pytest.raises(AttributeError):
        s.gamma = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="linear"), "kind must be one of"),
        (dict(kind="constant", unit="iteration"), "unit must be one of"),
        (dict(kind="step", milestones=(10, 5)), "strictly increasing"),
        (dict(kind="step", milestones=(5, 5)), "strictly increasing"),
        (dict(kind="step", milestones=(-1, 5)), ">= 0"),
        (dict(kind="step", milestones=(1, 5), factors=(0.1,)), "one entry per milestone"),
        (dict(kind="step", milestones=(1,), factors=(-0.1,)), "factors must be >= 0"),
        (dict(kind="step", milestones=(1,), gamma=-0.1), "gamma"),
        (dict(kind="cosine"), "total"),
        (dict(kind="cosine", total=0.0), "total must be > 0"),
        (dict(kind="cosine", total=10.0, min_factor=-0.1), "min_factor"),
        (dict(kind="piecewise_linear"), "at least one knot"),
        (dict(kind="piecewise_linear", knots=((0, 1), (0, 2))), "strictly increasing"),
        (dict(kind="piecewise_linear", knots=((0, 1), (1, -2))), ">= 0"),
        (dict(kind="triangle", knots=((0, 1, 2),)), "pair"),
        (dict(kind="constant", milestones=(3,)), "does not use"),
        (dict(kind="cosine", total=5.0, knots=((0, 1),)), "does not use"),
        (dict(kind="step", total=5.0), "does not use"),
        (dict(kind="constant", resolution=-1.0), "resolution"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_bad_constructor_and_call_inputs():
    with pytest.raises(ValueError, match="t must be >= 0"):
        constant_schedule()(-1.0)
    with pytest.raises(ValueError, match="finite"):
        constant_schedule()(math.nan)
    with pytest.raises(ValueError, match="min_lr"):
        triangle_schedule(min_lr=1.0)
    with pytest.raises(ValueError, match="heights"):
        triangle_schedule(heights=())
    with pytest.raises(ValueError, match="shift"):
        triangle_schedule(total=4.0, shift=1.0)
    with pytest.raises(ValueError, match="base_lr"):
        cosine_schedule(base_lr=0.0)
    assert set(KINDS) == {"constant", "step", "cosine", "piecewise_linear", "triangle"}
