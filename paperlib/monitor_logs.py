"""The files :class:`paperlib.NoiseMonitor` writes: one row per measured step (``LOG_COLUMNS``) to
``<name>.csv`` and ``<name>.jsonl``, and TensorBoard scalars when the package is installed. The
CSV is what ``python -m paperlib predict-lsr`` reads. A new monitor on the same ``log_dir``
replaces the earlier run's logs: the CSV and JSONL are rewritten, and the TensorBoard events files
an earlier monitor of the same ``name`` wrote there (``events.out.tfevents.*.<name>``) are
deleted; other events files in the folder are left alone."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

__all__ = ["LOG_COLUMNS", "NoiseLogs"]

LOG_COLUMNS = ("step", "effective_step", "lr", "batch_size", "sources", "G", "N", "grad_sq",
               "sum_sq", "ema_G", "ema_N", "ema_N_over_G", "ema_B_star", "ema_B_simple",
               "skipped")


def _own_events_files(log_dir: Path, name: str) -> list[Path]:
    """The events files a monitor called ``name`` wrote in ``log_dir``: SummaryWriter names them
    ``events.out.tfevents.<time>.<host>.<pid>.<n><suffix>``, with our suffix ``.<name>``. Matched
    in full, so that the monitor "noise" leaves alone those of a monitor "x.noise" (whose
    ``...<pid>.<n>.x.noise`` a plain ``*.noise`` glob would also match)."""
    own = re.compile(r"events\.out\.tfevents\.\d+\..+\.\d+\.\d+" + re.escape(f".{name}"))
    return [p for p in log_dir.iterdir() if p.is_file() and own.fullmatch(p.name)]


class NoiseLogs:
    """CSV + JSONL rows of :class:`paperlib.NoiseMonitor` (and TensorBoard scalars when the
    package is installed) in ``log_dir``: ``<name>.csv``, ``<name>.jsonl``."""

    def __init__(self, log_dir: Path, tensorboard: bool | None, name: str):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.jsonl_path = log_dir / f"{name}.csv", log_dir / f"{name}.jsonl"
        self._csv_file = open(self.csv_path, "w", newline="")  # noqa: SIM115 (closed in close)
        self._csv = csv.DictWriter(self._csv_file, LOG_COLUMNS)
        self._csv.writeheader()
        self._jsonl = open(self.jsonl_path, "w")  # noqa: SIM115
        self.tb = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard not installed
                if tensorboard:
                    raise ImportError("tensorboard=True needs the tensorboard package: pip "
                                      "install 'paperlib[monitor]'") from e
            else:
                # An earlier monitor's events go, as its CSV is overwritten: otherwise each
                # rerun's curve piles onto the last in one run. (purge_step would hide them from
                # TensorBoard's legacy loader only; the default fast loader ignores it.)
                for old in _own_events_files(log_dir, name):
                    old.unlink()
                self.tb = SummaryWriter(str(log_dir), filename_suffix=f".{name}")

    def write(self, row: dict) -> None:
        self._csv.writerow(row)
        self._csv_file.flush()
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self.tb is not None:
            for k in ("G", "N", "ema_N_over_G", "ema_B_star", "ema_B_simple", "lr"):
                if row[k] is not None and math.isfinite(row[k]):
                    self.tb.add_scalar(f"noise/{k}", row[k], row["step"])

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()
