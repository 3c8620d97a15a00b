"""The history table of a run: one row per logging window (the schema ``train`` writes and the
store reads), and the on-device window that accumulates one row from the steps' ``StepStats``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

if TYPE_CHECKING:
    from .stepstats import StepStats

__all__ = ["HISTORY_COLUMNS", "INT_COLUMNS", "StepWindow", "history_frame", "history_to_csv",
           "read_history"]

HISTORY_COLUMNS = (
    "step",  # actual optimizer steps taken
    "effective_step",  # step / l (= base steps; the x axis of SVAG plots)
    "epoch",  # effective_step / (n // B), n the training-set size
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


def history_to_csv(history: pd.DataFrame) -> bytes:
    """CSV bytes that read back bitwise (17 significant digits)."""
    return history.to_csv(index=False, float_format="%.17g").encode()


def read_history(path: str | Path) -> pd.DataFrame:
    """A history CSV written by :func:`history_to_csv`, with the schema's dtypes."""
    return history_frame(pd.read_csv(path))


class StepWindow:
    """Sums of a logging window's ``StepStats`` on the device: one host sync per history row.

    ``add`` each step's stats, ``flush`` at the end of the window: the means of loss, accuracy,
    |g|² and (over the measuring steps) G and N, and the first step whose loss or gradient was
    not finite (divergence), all in float64.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device, dtype=torch.float64)
        self.loss, self.correct, self.count, self.gsq = z.clone(), z.clone(), 0, z.clone()
        self.G, self.N, self.nsr, self.steps = z.clone(), z.clone(), 0, 0
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.long)

    def add(self, k: int, s: StepStats) -> None:
        """Add step ``k``'s stats (``correct`` None counts as no accuracy: NaN in the row)."""
        loss = s.loss_sum.double()
        gsq = s.grad_sq
        self.loss += loss
        self.correct += s.correct.double() if s.correct is not None else float("nan")
        self.count += s.count
        self.gsq += gsq
        self.steps += 1
        finite = torch.isfinite(loss + gsq)  # (|g|² in float64 is finite iff every g_i is)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite,
                                     torch.full_like(self.first_bad, k), self.first_bad)
        if s.G is not None:
            self.G += s.G.double()
            self.N += s.N.double()
            self.nsr += 1

    def flush(self) -> dict:
        """The window's row (train_loss, train_acc, grad_sq, G, N, nsr_count, first_bad), then
        reset. ``first_bad`` is the first non-finite step index or None."""
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
