"""Claims tables: each row compares a measured value with a threshold and says PASS or FAIL.

Every notebook ends with one; rows are computed from data, never typed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Claim:
    claim: str  # the statement, with the paper's equation / theorem / figure
    paper: str  # the paper's value or statement
    measured: float  # the value measured here
    threshold: str  # the test applied, e.g. "≤ 2 points"
    passed: bool
    seeds: str = ""  # the seeds (or sample size) behind the measurement

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def check(claim: str, paper: str, measured: float, op: str, bound: float, *, unit: str = "",
          seeds: str = "") -> Claim:
    """A claim ``measured <op> bound`` with op in {"<=", ">=", "<", ">"}; NaN always fails."""
    ops = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}
    if op not in ops:
        raise ValueError(f"op={op!r} is not allowed; choose one of {list(ops)}")
    m = float(measured)
    passed = (not math.isnan(m)) and ops[op](m, float(bound))
    shown = {"<=": "≤", ">=": "≥"}.get(op, op)
    return Claim(claim, paper, m, f"{shown} {bound:g}{unit}", passed, seeds)


def claims_table(claims: list[Claim]) -> pd.DataFrame:
    rows = [{**asdict(c), "verdict": c.verdict} for c in claims]
    df = pd.DataFrame(rows, columns=["claim", "paper", "measured", "threshold", "verdict", "seeds"])
    df["measured"] = df["measured"].map(lambda v: f"{v:.4g}")
    return df


def save_claims(table: pd.DataFrame, fig_id: str, fig_dir: str | Path) -> Path:
    """``<fig_dir>/<fig_id>.claims.csv`` (atomic): the README's claims table is built from these."""
    from .files import atomic_write_bytes

    path = Path(fig_dir) / f"{fig_id}.claims.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path
