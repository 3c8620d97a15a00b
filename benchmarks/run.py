"""``make bench``: the speed of paperlib's training steps, as ratios against baselines.

``python -m benchmarks [--quick] [--device auto|cpu|cuda] [--only svag,...] [--out BENCHMARKS.md]``

Each group of rows lives in its own module and is named by what it measures:

* ``svag``: an SVAG step against an SGD step at batch 2B (``benchmarks/svag.py``);
* ``full-batch``: NGD against GD over the same N, NGD's peak memory, the max-pool route, the CPU
  probe's net (``benchmarks/full_batch.py``);
* ``online-nsr``: the online G/N estimate's overhead and the authors' direct estimator
  (``benchmarks/online_nsr.py``);
* ``pipeline``: the on-device pipeline against a DataLoader with PIL transforms;
* ``figures``: ``make figures`` wall time per figure, from ``figures/timings.json``;
* ``monitor``: :class:`paperlib.NoiseMonitor`'s overhead (accumulation, 2-rank DDP);
* ``epoch`` (GPU profile, or ``--only epoch``): seconds per epoch of 50 000 images.

The machinery (profiles, paired timing, rows) is in ``benchmarks/harness.py``. Timings never go
into tests; ``tests/test_bench.py`` checks that ``--quick`` yields every row with finite values.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import epoch, figures, full_batch, monitor, online_nsr, pipeline, svag
from benchmarks.harness import PROFILES, Bench, Row, machine_info, quick_profile, table
from paperlib.config import resolve_device
from paperlib.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from paperlib.docs import update_section
from paperlib.paths import data_root

GROUPS: dict[str, Callable[[Bench], list[Row]]] = {
    "svag": svag.svag_rows,
    "full-batch": full_batch.rows,
    "online-nsr": online_nsr.rows,
    "pipeline": pipeline.rows,
    "figures": lambda b: figures.rows(),
    "monitor": monitor.rows,
    "epoch": epoch.rows,
}


def load_bench_dataset(choice: str):
    """The RawDataset to measure on: CIFAR-10 when it can be loaded offline, else synthetic."""
    if choice == "synthetic":
        return load_dataset("synthetic"), "synthetic (requested)"
    try:
        return load_dataset("cifar10", root=data_root(), download=False), "cifar10"
    except (DatasetNotFoundError, DatasetFormatError, FileNotFoundError) as err:
        if choice == "cifar10":
            raise
        return load_dataset("synthetic"), f"synthetic (no CIFAR-10: {type(err).__name__})"


def run_bench(*, quick: bool = False, device: str = "auto", profile: str = "auto",
              dataset: str = "auto", groups: tuple[str, ...] | None = None,
              workers: int | None = None, compile: bool = False, log=print,
              on_group: Callable[[list[Row], dict], None] | None = None
              ) -> tuple[list[Row], dict]:
    """Run the selected groups of rows and return (rows, machine/meta info).

    A group that raises becomes one row with value None and the error as its note (the others
    still run); ``on_group(rows, meta)`` is called after each group (partial reports).
    """
    dev = resolve_device(device)
    name = ("gpu" if dev.type == "cuda" else "cpu") if profile == "auto" else profile
    prof = PROFILES[name]
    if quick:
        prof = quick_profile(prof)
    if dataset == "auto" and quick:
        dataset = "synthetic"
    raw, data_note = load_bench_dataset(dataset)
    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    b = Bench(prof, dev, raw, workers, quick, compile)
    if groups is None:  # GPU: the epoch time first, so a time limit cannot cut the headline
        groups = (("epoch",) if name == "gpu" else ()) + tuple(g for g in GROUPS if g != "epoch")
    meta = machine_info(dev) | {"profile": prof.name + (" (quick)" if quick else ""),
                                "dataset": data_note, "dataloader_workers": workers}
    rows: list[Row] = []
    t0 = time.time()
    for group in groups:
        t = time.time()
        try:
            with warnings.catch_warnings():
                # the steps' advice on how G/N was sampled (e.g. BN from disjoint batches)
                # concerns the estimate's bias, not its speed
                warnings.filterwarnings("ignore", message="G/N of a train-mode BatchNorm")
                rows += GROUPS[group](b)
        except Exception as err:  # report it in the table and go on with the other groups
            rows.append(Row(group, "FAILED", "", None, "", note=f"{type(err).__name__}: {err}"))
        log(f"{group}: {time.time() - t:.0f} s", flush=True)
        meta["seconds"] = round(time.time() - t0, 1)
        with contextlib.suppress(OSError):
            meta["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        if on_group is not None:
            on_group(rows, meta)
    return rows, meta


def report(rows: list[Row], meta: dict, note: str = "") -> str:
    keys = ("date", "cpu", "cores", "gpu", "device", "threads", "torch", "python", "profile",
            "dataset", "dataloader_workers", "load_average_1min", "load_average_1min_end",
            "seconds")
    head = ", ".join(f"{k}: {meta[k]}" for k in keys if k in meta)
    quick = "(quick)" in str(meta.get("profile", ""))
    return f"{head}\n\n" + (f"{note}\n\n" if note else "") + table(rows, quick=quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long version (tests, dry runs)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--profile", default="auto", choices=("auto", "cpu", "gpu"),
                    help="sizes: cpu (small nets at 8x8/16x16) or gpu (PreResNet-32, B=128/1024)")
    ap.add_argument("--dataset", default="auto", choices=("auto", "cifar10", "synthetic"),
                    help="auto: CIFAR-10 if it loads offline (synthetic with --quick)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of {','.join(GROUPS)} (default: all; epoch on "
                    "GPU only)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default 1 on CPU for stable ratios; 0: torch's)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of the pipeline rows (default min(8, cores - 1))")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile epoch")
    ap.add_argument("--out", type=Path, default=None,
                    help="update this markdown file's bench section (e.g. BENCHMARKS.md)")
    ap.add_argument("--section", default=None, help="section name in --out (default: device)")
    ap.add_argument("--json", type=Path, default=None, help="also write rows and meta as JSON")
    ap.add_argument("--note", default="", help="a line printed above the table")
    a = ap.parse_args(argv)
    try:
        dev = resolve_device(a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = a.threads if a.threads is not None else (1 if dev.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    groups = tuple(a.only.split(",")) if a.only else None
    if groups and set(groups) - set(GROUPS):
        print(f"error: --only {a.only!r}: choose from {sorted(GROUPS)}", file=sys.stderr)
        return 2
    section = a.section or dev.type
    section += "-quick" if a.quick else ""

    def write(rows: list[Row], meta: dict) -> None:  # after every group: partial results survive
        if a.out is not None:
            update_section(a.out, section, report(rows, meta, a.note))
        if a.json is not None:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(
                {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))

    rows, meta = run_bench(quick=a.quick, device=a.device, profile=a.profile, dataset=a.dataset,
                           groups=groups, workers=a.workers, compile=a.compile, on_group=write)
    print(report(rows, meta, a.note))
    return 1 if any(r.what == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
