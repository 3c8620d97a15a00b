"""Command line: python -m paperlib {train,predict-lsr,figures,verify} ... (--help on each).

Bad input (a value out of range, a setting the run would ignore, a net that cannot train,
unreadable data, work estimated above the unattended limit) stops with one ``error:`` line and
exit status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from .config import RunConfig, preset
from .constants import PRESETS

REFUSALS = ("ValueError", "DatasetFormatError", "DatasetNotFoundError", "FileNotFoundError",
            "TooLongError", "StaleResultError")  # exit 2: nothing was done
PENDING = 3  # exit status of `figures` when runs are still in cluster jobs (not an error)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(s)


_KIND_TEXT = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
              tuple: "comma-separated numbers (e.g. 80,120)"}


def _parser_for(kind: type, optional: bool):
    """argparse type for a RunConfig field: its error names the expected type and the value
    (argparse adds the flag: ``argument --lr: expected a number, got 'abc'``)."""
    expected = _KIND_TEXT[kind] + (" or none" if optional else "")

    def parse(s: str):
        if optional and s.lower() == "none":
            return None
        try:
            if kind is bool:
                return _parse_bool(s)
            if kind is tuple:
                return tuple(float(v) for v in s.split(",") if v.strip())
            return kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None

    parse.__name__ = expected
    return parse


def _field_help(name: str) -> str:
    """The field's comment from config.py (unit and paper symbol)."""
    import inspect

    from . import config as config_module
    for line in inspect.getsource(config_module.RunConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "#" in stripped:
            return stripped.split("#", 1)[1].strip()
    return ""


def _path(s: str) -> Path:
    return Path(s).expanduser().resolve()  # against the directory the command was typed in


def build_parser() -> argparse.ArgumentParser:
    from .config import _field_kinds

    p = argparse.ArgumentParser(prog="python -m paperlib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    store_help = ("results store: runs in STORE/runs/<id>/, theory results in STORE/theory/ "
                  "(default: data/, the committed one, for the cpu preset, build/<preset>/store "
                  "for the others; an empty folder retrains everything; the decoded data sets "
                  "stay in data/)")
    allow_help = "go ahead when the estimated wall time exceeds the unattended limit (3 h)"

    t = sub.add_parser("train", help="train one run (cached in the run store)",
                       description="Train one run; every RunConfig field is a flag. Flags the "
                                   "run would ignore (e.g. --l without --algo svag) are "
                                   "refused.")
    t.add_argument("--preset", default="cpu",
                   help=f"base settings: {' | '.join(PRESETS)} (default cpu, as make figures)")
    t.add_argument("--store", type=_path, default=None, help=store_help)
    t.add_argument("--allow-long", action="store_true", help=allow_help)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in dataclasses.fields(RunConfig):
        flags = ["--" + f.name.replace("_", "-")]
        if f.name == "l":  # torchrun's parser reads `--l` as a prefix of its own options
            flags.append("--svag-l")
        t.add_argument(*flags, dest=f.name, type=_parser_for(*_field_kinds()[f.name]),
                       default=argparse.SUPPRESS, help=_field_help(f.name))  # absent: unset

    q = sub.add_parser("predict-lsr", help="Thm 5.6: the batch size beyond which the LSR fails",
                       description="Thm 5.6 from one small-batch SGD run: (C, κ)-LSI certainly "
                                   "fails for κ > C²(1 + N/G), i.e. beyond B* = B·C²(1 + N/G). "
                                   "G and N are window means late in the constant-LR phase; a "
                                   "stored run must not have diverged and must have reached a "
                                   "constant-LR equilibrium (Sec. 5).")
    q.add_argument("run", type=_path,
                   help="a run folder of the store (data/runs/<id>) or a CSV log with columns "
                        "effective_step (or step), lr, G, N (your own training's log)")
    q.add_argument("--batch-size", type=_parser_for(int, False), default=None,
                   help="B of the run (required for a CSV log; read from the config otherwise)")
    q.add_argument("--l", type=_parser_for(float, False), default=1.0,
                   help="SVAG l of a CSV log's run (default 1)")
    q.add_argument("--window", type=_parser_for(float, False), nargs=2,
                   metavar=("START", "END"), default=None,
                   help="average over effective steps (START, END] instead of the second half "
                        "of the constant-LR phase (the longest stretch of equal logged LR)")
    q.add_argument("--C", type=_parser_for(float, False), default=2 ** 0.5,
                   help="closeness constant C > 1 (default √2)")

    fgs = sub.add_parser("figures", help="execute every figure notebook with papermill",
                         description="Execute the notebook of each paper figure (the registry "
                                     "paperlib.notebooks.FIGURES) with its parameters. The cpu "
                                     "preset from the default store writes the committed "
                                     "figures/ and notebooks/; any other preset or store "
                                     "writes under build/<preset>/.")
    fgs.add_argument("--preset", default="cpu", help=f"{' | '.join(PRESETS)} (default cpu)")
    fgs.add_argument("--only", default=None,
                     help="comma-separated figure ids (fig1, figA-svag-cosine, ...) or main "
                          "notebook names (fig3_lsr)")
    fgs.add_argument("--store", type=_path, default=None, help=store_help)
    fgs.add_argument("--out", type=_path, default=None,
                     help="write figures/ and notebooks/ here instead (default: see above)")
    fgs.add_argument("--allow-long", action="store_true", help=allow_help)
    c = fgs.add_argument_group(
        "cluster", "train missing runs as submitit jobs (see README, 'On a cluster'); the "
                   "notebooks' kernels get these through PAPERLIB_EXECUTOR and friends")
    c.add_argument("--executor", default=None,
                   help="pool (default: local worker processes) | local (submitit's local "
                        "executor, waits) | slurm (one job array; returns, and the next run "
                        "plots once the jobs are done)")
    c.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    c.add_argument("--gpus-per-job", type=_parser_for(int, False), default=None,
                   help="GPUs per job (slurm: 1 per rank; local: 1 with CUDA, else 0)")
    c.add_argument("--time-limit", default=None,
                   help="per job: minutes, H:MM:SS or D-H:MM:SS (default 1440); a run that "
                        "needs longer is requeued and resumes from its checkpoint")
    c.add_argument("--array-parallelism", type=_parser_for(int, False), default=None,
                   help="jobs running at once (slurm: 64; local: one per core)")
    c.add_argument("--nproc-per-run", type=_parser_for(int, False), default=None,
                   help="DDP processes (ranks, one GPU each on Slurm) per run (default 1)")
    c.add_argument("--slurm-extra", default=None,
                   help='further sbatch options as JSON, e.g. \'{"account": "abc"}\'')

    sub.add_parser("verify", help="retrain a fixed sample of committed runs and compare",
                   description="Retrain a small, fixed sample of the committed cpu runs "
                               "(paperlib.verify.SAMPLE, a few minutes) into a temporary "
                               "folder; print per run how far the new history is from the "
                               "committed one and, per claim of the figures that use them, "
                               "whether its verdict would change.")
    return p


def _use_store(store: Path | None) -> None:
    """Every part of this process, and the notebook kernels it starts, use ``store``."""
    if store is not None:
        os.environ["PAPERLIB_STORE"] = str(store)


def cmd_train(a: argparse.Namespace) -> int:
    from .distributed import process_group

    with process_group():  # under torchrun: one run on K ranks (paperlib.distributed)
        return _train(a)


def _train(a: argparse.Namespace) -> int:
    import torch

    from .checks import check_trainable
    from .config import refuse_ignored
    from .distributed import is_writer
    from .paths import runs_root
    from .plan import check_budget, device_of, duration, estimate_seconds
    from .store import diagnose, load_result, run

    overrides = {f.name: getattr(a, f.name) for f in dataclasses.fields(RunConfig)
                 if hasattr(a, f.name)}  # `--subset none` sets None
    config = preset(a.preset, **overrides)  # validates the values before any work
    refuse_ignored(config, given=set(overrides))
    check_trainable(config)
    root = a.store / "runs" if a.store else runs_root(a.preset)
    writer = is_writer()  # rank 0 (or the only process) plans, reports and writes
    if writer and load_result(config, root) is None:
        reason = diagnose(config, root)
        if reason != "not stored":
            print(f"recomputing: {reason}")
        seconds = estimate_seconds([config])[0]
        print(f"estimated {duration(seconds)} on this machine ({device_of(config)}, "
              f"{torch.get_num_threads()} thread(s))", flush=True)
        check_budget(seconds, "this run", a.allow_long or None)
    result = run(config, root, progress=writer and not a.quiet)
    if not writer:
        return 0
    final = result.final
    print(f"{result.status}: {result.path}")
    print(f"final test acc {final['test_acc']:.2f}%  train loss {final['train_loss']:.4f}  "
          f"steps {int(final['step'])}" + (f"  (diverged at step {result.diverged_step})"
                                           if result.status == "diverged" else ""))
    return 0


def cmd_predict_lsr(a: argparse.Namespace) -> int:
    from .predict import predict_from_csv, predict_from_run

    path = a.run
    if path.is_dir():
        if a.batch_size is not None or a.l != 1.0:
            raise ValueError("--batch-size and --l are read from a run folder's config; give "
                             "them only with a CSV log")
        lines = predict_from_run(path, C=a.C, window=a.window)
    elif path.is_file():
        lines = predict_from_csv(path, a.batch_size, l=a.l, C=a.C, window=a.window)
    else:
        raise ValueError(f"run={str(path)!r} does not exist; give a run folder of the store or "
                         "a CSV log")
    for line in lines:
        print(line)
    return 0


def _use_executor(a: argparse.Namespace) -> None:
    """Check the cluster flags (before anything runs) and hand them to the notebook kernels
    through the environment (``cluster.ENV``), as ``--store`` is."""
    from .cluster import ENV, from_env

    flags = {"executor": a.executor, "partition": a.partition, "gpus_per_job": a.gpus_per_job,
             "time_limit": a.time_limit, "array_parallelism": a.array_parallelism,
             "nproc_per_run": a.nproc_per_run, "slurm_extra": a.slurm_extra}
    env = dict(os.environ)
    for name, value in flags.items():
        if value is not None and value != "":
            env[ENV[name]] = str(value)
    options = from_env(env)  # raises ValueError naming a bad value
    for var in ENV.values():
        os.environ.pop(var, None)
    if options is not None:
        os.environ.update(options.to_env())


def cmd_figures(a: argparse.Namespace) -> int:
    from papermill.exceptions import PapermillExecutionError

    from .make_figures import FiguresPendingError, execute_all

    _use_executor(a)
    _use_store(a.store)
    if a.allow_long:
        os.environ["PAPERLIB_ALLOW_LONG"] = "1"
    for var in ("CIFAR10_PATH", "CIFAR100_PATH", "SVHN_PATH"):  # kernels run in notebooks/
        if os.environ.get(var):
            os.environ[var] = str(_path(os.environ[var]))
    # SIGTERM stops like Ctrl-C: papermill shuts the notebook kernel down with its process
    # group (the training workers included) instead of leaving it running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        execute_all(preset=a.preset, only=a.only.split(",") if a.only else None, out=a.out)
    except PapermillExecutionError as e:
        print(f"error: {e.ename}: {e.evalue}", file=sys.stderr)
        return 2 if e.ename in REFUSALS else 1
    except FiguresPendingError as e:
        for fig_id, message in e.pending.items():
            print(f"pending: {fig_id}: {message}", file=sys.stderr)
        print(f"{e}; nothing is wrong: run the same command again to plot them once the jobs "
              "have finished", file=sys.stderr)
        return PENDING
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .verify import main as verify_main

    return verify_main()


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetNotFoundError
    from .plan import TooLongError

    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "predict-lsr": cmd_predict_lsr,
                "figures": cmd_figures, "verify": cmd_verify}[args.command](args)
    except (ValueError, DatasetNotFoundError, FileNotFoundError, TooLongError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the notebook being executed was not replaced; finished runs stay "
              "in the store and a partial one resumes from its last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
