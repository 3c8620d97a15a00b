"""The run store: ``run(config)`` = cached | resumed | trained.

Layout: ``<runs_root>/<run_id>/`` with ``config.json``, ``history.csv``, ``checkpoint.pt`` and
``manifest.json``. The manifest is written last (atomically) and holds the sha256 of every other
file (the checkpoint is optional: it is gitignored, while the small result files are committed),
the status (``partial`` | ``complete`` | ``diverged``) and the code identity. A file whose
checksum does not match is never used: a truncated history is recomputed, a bad checkpoint
discarded. The run id hashes the config's non-default fields with ``RESULTS_VERSION``.

Nothing is written for a run until it has trained to its first checkpoint: a config that cannot
train (bad values, a net that cannot run, unreadable data, no CUDA) leaves the store untouched.
The manifest also records what decides the run's floating-point results (``numerics``): torch's
version, the CPU kernels torch chose (``cpu_capability``), the intra-op thread count and the
device. Two runs of one config agree bit for bit when these agree; otherwise only statistically.
A run trained on K DDP ranks (:mod:`paperlib.distributed`) is written by rank 0 alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .config import RunConfig, resolve_device
from .files import StaleResultError, atomic_write_bytes, sha256
from .history import history_to_csv, read_history
from .paths import runs_root

RESULTS_VERSION = 2  # bump when a change alters what a run computes or records
FILES = ("config.json", "history.csv")
NO_TRAIN_ENV = "PAPERLIB_NO_TRAIN"  # set: missing results raise instead of being computed
RESULT_LOG_ENV = "PAPERLIB_RESULT_LOG"  # a file: one JSON line per result used (make figures)


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    history: pd.DataFrame  # one row per logged step (see history.HISTORY_COLUMNS)
    status: str  # complete | diverged
    diverged_step: int | None
    path: Path
    meta: dict  # the manifest (wall time, versions, device)

    @property
    def final(self) -> pd.Series:
        """The last history row with a test evaluation."""
        evaluated = self.history.dropna(subset=["test_acc"])
        return evaluated.iloc[-1] if len(evaluated) else self.history.iloc[-1]


def run_id(config: RunConfig) -> str:
    """sha256 of the config's non-default fields + RESULTS_VERSION.

    Hashing only what differs from the defaults keeps stored results valid when a new field
    (with a default that preserves old behaviour) is added; changing a default's value must bump
    RESULTS_VERSION. ``device`` is excluded: a result is valid on any device.
    """
    default = RunConfig()
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(RunConfig)
         if f.name != "device" and getattr(config, f.name) != getattr(default, f.name)}
    blob = json.dumps({"config": d, "results_version": RESULTS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_dir(config: RunConfig, root: Path | str | None = None) -> Path:
    return Path(root or runs_root()) / run_id(config)


def training_allowed() -> bool:
    """False when the environment sets ``PAPERLIB_NO_TRAIN`` (to anything but "" or "0"): then a
    missing or stale result raises :class:`StaleResultError` instead of being computed
    (notebooks under nbval check the committed results without recomputing them)."""
    return os.environ.get(NO_TRAIN_ENV, "") in ("", "0")


def note_result(kind: str, name: str, event: str) -> None:
    """Append ``{"kind", "name", "event": stored | computed}`` to the file named by
    ``PAPERLIB_RESULT_LOG`` (when set): how ``make figures`` counts, per figure, the results it
    loaded and the ones it computed (in the notebook's kernel, a separate process)."""
    path = os.environ.get(RESULT_LOG_ENV)
    if path:
        line = json.dumps({"kind": kind, "name": name, "event": event}) + "\n"
        with open(path, "a") as f:  # one short append per line: safe across processes
            f.write(line)


# --- checksummed manifest -----------------------------------------------------------------------


def numerics(device: str) -> dict:
    """What decides a run's floating-point results here: torch's version, the CPU kernel set
    torch dispatches to (``ATEN_CPU_CAPABILITY``, e.g. AVX512 or AVX2), the intra-op thread
    count (reductions split differently) and the device. Equal configs give bitwise-equal
    histories when all of these are equal."""
    out = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": device,
        "device_name": _cpu_name(),
    }
    if device.startswith("cuda"):
        out.update(device_name=torch.cuda.get_device_name(torch.device(device)),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_manifest(d: Path, status: str, extra: dict, files: tuple[str, ...] = FILES) -> dict:
    """Write ``<d>/manifest.json`` (atomically, after every file it vouches for) with the sha256
    of each of ``files`` present in ``d``: the store's one checksummed format, for runs and for
    :mod:`paperlib.theory`'s results (``files`` names theirs)."""
    files = {name: sha256(d / name) for name in files if (d / name).exists()}
    ckpt = d / "checkpoint.pt"
    manifest = {
        "status": status,
        "files": files,  # result files: committed for notebooks, verified on every load
        "checkpoint_sha256": sha256(ckpt) if ckpt.exists() else None,  # gitignored, optional
        "results_version": RESULTS_VERSION,
        "paperlib_version": __version__,
        "torch_version": torch.__version__,
        **extra,
    }
    atomic_write_bytes(d / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def load_manifest(d: Path) -> dict | None:
    """The manifest if it parses and every file it lists matches its checksum, else None."""
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        for name, digest in manifest["files"].items():
            if sha256(d / name) != digest:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_result(config: RunConfig, root: Path | str | None = None) -> RunResult | None:
    """The finished (complete or diverged) result of ``config`` if stored intact, else None."""
    d = run_dir(config, root)
    manifest = load_manifest(d)
    if manifest is None or manifest["status"] not in ("complete", "diverged"):
        return None
    if any(name not in manifest["files"] for name in FILES):
        return None
    return RunResult(config, read_history(d / "history.csv"), manifest["status"],
                     manifest.get("diverged_step"), d, manifest)


def diagnose(config: RunConfig, root: Path | str | None = None) -> str:
    """Why ``config`` has no usable stored result (or "stored" when it has one): what a sweep
    prints before it recomputes a run."""
    d = run_dir(config, root)
    if not d.exists():
        return "not stored"
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its folder has no readable manifest (stopped before its first checkpoint)"
    for name in FILES:
        if name not in files:
            return f"{name} is not listed in its manifest"
    for name, digest in files.items():
        if not (d / name).exists():
            return f"{name} is missing"
        if sha256(d / name) != digest:
            return f"{name} does not match the checksum in its manifest (truncated or edited)"
    if manifest.get("status") == "partial":
        then = "resumes from its checkpoint" if _load_checkpoint(d) is not None else \
            "no usable checkpoint, restarts"
        return f"partial: stopped at step {manifest.get('step')} of {config.total_steps}; {then}"
    if manifest.get("status") not in ("complete", "diverged"):
        return f"unknown status {manifest.get('status')!r} in its manifest"
    return "stored"


# --- run(config) ----------------------------------------------------------------------------

def run(
    config: RunConfig,
    root: Path | str | None = None,
    *,
    allow_train: bool | None = None,
    progress: bool = True,
    step_callback=None,
) -> RunResult:
    """Return the result of ``config``: from the store when complete, else resume or train.

    Args:
        allow_train: False raises StaleResultError instead of training; None (default) means
            True unless the environment sets PAPERLIB_NO_TRAIN=1 (notebooks under nbval).
        step_callback: called as ``step_callback(step)`` after every optimizer step (tests use
            it to simulate a killed run).
    Raises:
        ValueError: the config sets a value it would ignore (``config.refuse_ignored``) or
            cannot train here (``checks.check_trainable``); nothing is written.
    """
    from .checks import check_trainable
    from .config import refuse_ignored
    from .distributed import is_writer
    from .train import train  # train imports data/models; keep the store importable alone

    cached = load_result(config, root)
    if cached is not None:
        return cached
    d = run_dir(config, root)
    if allow_train is None:
        allow_train = training_allowed()
    if not allow_train:
        raise StaleResultError(
            f"result {d} is missing or stale ({diagnose(config, root)}) for run "
            f"[{config.summary()}]; regenerate it with `make figures` (or the notebook at its "
            "preset) outside the tests"
        )
    refuse_ignored(config)
    check_trainable(config)
    resume = _load_checkpoint(d)
    previous = load_manifest(d) if resume is not None else None
    t0 = time.time()
    wall_before = resume["wall_s"] if resume else 0.0
    started = False

    def start() -> None:
        """The run's first write, once training has produced its first checkpoint."""
        nonlocal started
        if resume is None and d.exists():
            shutil.rmtree(d)  # partial or corrupt leftovers: start clean
        d.mkdir(parents=True, exist_ok=True)
        for leftover in d.glob("*.tmp*"):  # a write interrupted by a kill
            leftover.unlink()
        atomic_write_bytes(d / "config.json", json.dumps(config.to_dict(), indent=1).encode())
        started = True

    def save_checkpoint(state: dict, device: str) -> None:
        if not started:
            start()
        buf = io.BytesIO()
        torch.save({**state, "wall_s": wall_before + time.time() - t0}, buf)
        atomic_write_bytes(d / "checkpoint.pt", buf.getvalue())
        atomic_write_bytes(d / "history.csv", history_to_csv(pd.DataFrame(state["history"])))
        write_manifest(d, "partial", {"step": state["step"], "numerics": numerics(device)})

    device = str(resolve_device(config.device))
    if not is_writer():  # a DDP rank > 0: trains in lockstep, rank 0 writes the run
        result = train(config, resume=resume, progress=False, step_callback=step_callback)
        return RunResult(config, result.history, result.status, result.diverged_step, d, {})
    result = train(config, resume=resume, progress=progress, step_callback=step_callback,
                   on_checkpoint=lambda state: save_checkpoint(state, device))
    save_checkpoint(result.state, result.device)  # the final checkpoint and the full history.csv
    extra = {
        "step": result.state["step"],
        "diverged_step": result.diverged_step,
        "wall_s": wall_before + time.time() - t0,
        "device": result.device,
        "numerics": numerics(result.device),
    }
    before = (previous or {}).get("numerics")
    if before and before != extra["numerics"]:
        extra["numerics_before_resume"] = before  # the first part ran elsewhere
    manifest = write_manifest(d, result.status, extra)
    return RunResult(config, read_history(d / "history.csv"), result.status,
                     result.diverged_step, d, manifest)


def _load_checkpoint(d: Path) -> dict | None:
    """The checkpoint of a partial run if its checksum matches the manifest, else None."""
    manifest = load_manifest(d)
    ckpt = d / "checkpoint.pt"
    if manifest is None or not ckpt.exists() or manifest.get("checkpoint_sha256") != sha256(ckpt):
        return None
    return torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
