"""The input checks every module shares: what counts as an integer or a real number, and the
errors that name the bad value and the allowed ones (``name=value is not allowed; ...``).

A leaf of the package (no paperlib imports), so that the math modules, the settings
dataclasses (``RunConfig``, ``paperlib.theory``'s), the data layer and the public step API all
refuse the same inputs with the same words.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["FLOAT32_MAX", "as_real", "check_choice", "check_int", "check_ints",
           "check_number", "is_int", "is_real", "is_whole"]

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> bool:
    """A finite real number with an integer value (``2`` or ``2.0``, as papermill may pass it),
    not a bool."""
    return is_real(value) and float(value).is_integer()


def check_int(name: str, value, minimum: int, *, allow_none: bool = False) -> int | None:
    """``value`` as an int when it is an integer ≥ ``minimum`` (a bool is not; ``None`` when
    ``allow_none``), else ValueError naming it and the allowed range."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be an integer ≥ {minimum}"
                         + (" or None" if allow_none else ""))
    return int(value)


def check_ints(name: str, values, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty sequence of integers ≥ ``minimum`` (the l values, batch sizes, κ's)."""
    if not values:
        raise ValueError(f"{name}={values!r} is not allowed; give at least one integer")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def as_real(name: str, value) -> float:
    """``float(value)`` when it is a finite real number, else ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be a real number") \
            from exc
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be finite")
    return v


def check_choice(name: str, value, allowed) -> None:
    """ValueError naming ``value`` and listing ``allowed`` when it is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_number(name: str, value: float, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """Refuse a non-finite ``value``, one beyond float32 (training computes in it: 1e308 is
    finite in Python but overflows there), or one outside [low, high] (ends open as flagged)."""
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite float32 number "
                         f"(|value| ≤ {FLOAT32_MAX:.4g}): training computes in float32")
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        rng = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rng = f"{'>' if low_open else '≥'} {low:g}"
    else:
        rng = f"{'<' if high_open else '≤'} {high:g}"
    raise ValueError(f"{name}={value!r} is not allowed; {what + ' ' if what else ''}must be a "
                     f"finite number {rng}")
