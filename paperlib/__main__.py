"""Command line: ``python -m paperlib {train,predict-lsr,figures} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .config import RunConfig, preset
from .constants import PRESETS


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{s!r} is not a boolean; use true or false")


def _parser_for(tp):
    """argparse type for a RunConfig field annotation (strings, from `from __future__`)."""
    tp = typing.get_type_hints(RunConfig)[tp] if isinstance(tp, str) else tp
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if typing.get_origin(tp) is tuple or typing.get_origin(base) is tuple:
        def parse(s):
            return tuple(float(v) for v in s.split(",") if v.strip())
    elif base is bool:
        parse = _parse_bool
    elif base in (int, float, str):
        parse = base
    else:  # pragma: no cover - every field is one of the above
        raise TypeError(tp)

    def parse_optional(s):
        return None if optional and s.lower() == "none" else parse(s)

    return parse_optional


def _field_help(name: str) -> str:
    """The field's comment from config.py (unit and paper symbol)."""
    import inspect

    from . import config as config_module
    for line in inspect.getsource(config_module.RunConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "#" in stripped:
            return stripped.split("#", 1)[1].strip()
    return ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paperlib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run (cached in the run store)",
                       description="Train one run; every RunConfig field is a flag.")
    t.add_argument("--preset", default="paper",
                   help=f"base settings: {' | '.join(PRESETS)} (default paper)")
    t.add_argument("--runs", type=Path, default=None, help="run store folder (default data/runs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        t.add_argument(flag, dest=f.name, type=_parser_for(hints[f.name]), default=None,
                       help=_field_help(f.name))

    q = sub.add_parser("predict-lsr", help="Thm 5.6: the batch size beyond which the LSR fails",
                       description="Thm 5.6 from one small-batch SGD run: (C, κ)-LSI certainly "
                                   "fails for κ > C²(1 + N/G), i.e. beyond B* = B·C²(1 + N/G). "
                                   "G and N are window means late in the constant-LR phase.")
    q.add_argument("run", type=Path,
                   help="a run folder of the store (data/runs/<id>) or a CSV log with columns "
                        "effective_step (or step), lr, G, N (your own training's log)")
    q.add_argument("--batch-size", type=int, default=None,
                   help="B of the run (required for a CSV log; read from the config otherwise)")
    q.add_argument("--l", type=float, default=1.0, help="SVAG l of a CSV log's run (default 1)")
    q.add_argument("--window", type=float, nargs=2, metavar=("START", "END"), default=None,
                   help="average over effective steps (START, END] instead of the second half "
                        "of the constant-LR phase (the longest stretch of equal logged LR)")
    q.add_argument("--C", type=float, default=2 ** 0.5, help="closeness constant C (default √2)")
    fgs = sub.add_parser("figures", help="execute every figure notebook with papermill",
                         description="Execute the notebook of each paper figure (the registry "
                                     "paperlib.notebooks.FIGURES) with its parameters.")
    fgs.add_argument("--preset", default="cpu", help=f"{' | '.join(PRESETS)} (default cpu)")
    fgs.add_argument("--only", default=None,
                     help="comma-separated figure ids (fig1, figA-svag-cosine, ...) or main "
                          "notebook names (fig3_lsr)")
    return p


def cmd_train(a: argparse.Namespace) -> int:
    from .store import run

    overrides = {f.name: getattr(a, f.name) for f in dataclasses.fields(RunConfig)
                 if getattr(a, f.name) is not None}
    config = preset(a.preset, **overrides)  # validates before any work
    result = run(config, a.runs, progress=not a.quiet)
    final = result.final
    print(f"{result.status}: {result.path}")
    print(f"final test acc {final['test_acc']:.2f}%  train loss {final['train_loss']:.4f}  "
          f"steps {int(final['step'])}" + (f"  (diverged at step {result.diverged_step})"
                                           if result.status == "diverged" else ""))
    return 0


def _window(window) -> dict:
    """``--window START END`` as equilibrium_stats' phase arguments (the whole range)."""
    start, end = window
    if not start < end:
        raise ValueError(f"--window {start:g} {end:g}: START must be below END")
    return {"start": start, "end": end, "start_frac": 0.0}


def cmd_predict_lsr(a: argparse.Namespace) -> int:
    import pandas as pd

    from .equilibrium import equilibrium_stats, run_equilibrium_stats
    from .history import read_history
    from .lsr import critical_kappa, predict_critical_batch, predict_critical_batch_approx
    from .store import load_manifest

    path = a.run
    if path.is_dir():
        if load_manifest(path) is None:
            raise ValueError(f"run={str(path)!r} is not an intact run folder (no valid manifest)")
        config = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
        if config.update_rule != "sgd":
            raise ValueError(f"run {path} uses algo={config.algo!r}; Thm 5.6 needs an SGD "
                             "baseline run")
        if a.batch_size is not None and a.batch_size != config.batch_size:
            raise ValueError(f"--batch-size {a.batch_size} differs from the run's "
                             f"B={config.batch_size}; leave it out for a run folder")
        history = read_history(path / "history.csv")
        B = config.batch_size
        stats = (run_equilibrium_stats(history, config, min_rows=2) if a.window is None else
                 equilibrium_stats(history, config.step_lr, config.wd, config.l_eff,
                                   **_window(a.window), min_rows=2))
    elif path.is_file():
        if a.batch_size is None or a.batch_size < 1:
            raise ValueError(f"--batch-size={a.batch_size!r}: a CSV log needs the run's batch "
                             "size B, an integer >= 1")
        try:
            history = pd.read_csv(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"run={str(path)!r} is not a readable CSV log: {e}") from e
        missing = {"lr", "G", "N"} - set(history.columns)
        if missing:
            raise ValueError(f"the CSV log {path} lacks the column(s) {sorted(missing)}")
        stats = equilibrium_stats(history, l=a.l, eq11=False, min_rows=2,
                                  **(_window(a.window) if a.window else {}))
        B = a.batch_size
    else:
        raise ValueError(f"run={str(path)!r} does not exist; give a run folder or a CSV log")
    G, N = stats["G"], stats["N"]
    print(f"equilibrium window: effective steps ({stats['window_start']:g}, "
          f"{stats['window_end']:g}], {stats['rows']} rows")
    print(f"  G = {G:.4g} ± {stats['G_se']:.2g}   N = {N:.4g} ± {stats['N_se']:.2g}   "
          f"N/G = {stats['N_over_G']:.4g} ± {stats['N_over_G_se']:.2g}   (± one standard error "
          "over block means of the rows)")
    C2 = a.C ** 2
    b_star = predict_critical_batch(G, N, B, a.C)
    print(f"Thm 5.6: (C, κ)-LSI fails for every κ > {critical_kappa(G, N, a.C):.4g} "
          f"(C = {a.C:.4g}), i.e. the linear scaling rule from B = {B} certainly fails beyond")
    print(f"  critical batch size B* = B·C²(1 + N/G) = {b_star:.0f} "
          f"± {B * C2 * stats['N_over_G_se']:.0f}")
    print(f"  (the Fig 3 caption's approximation C²·B·N/G = "
          f"{predict_critical_batch_approx(G, N, B, a.C):.0f})")
    return 0


def cmd_figures(a: argparse.Namespace) -> int:
    from .notebooks import execute_all

    execute_all(preset=a.preset, only=a.only.split(",") if a.only else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "predict-lsr": cmd_predict_lsr,
                "figures": cmd_figures}[args.command](args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

