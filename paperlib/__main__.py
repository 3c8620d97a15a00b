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

    q = sub.add_parser("predict-lsr", help="largest safe batch size from one run (Thm 5.6)")
    q.add_argument("run_dir", type=Path, help="a run folder of the store (data/runs/<id>)")
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


def cmd_predict_lsr(a: argparse.Namespace) -> int:
    from .equilibrium import equilibrium_stats
    from .history import read_history
    from .lsr import critical_kappa, predict_critical_batch
    from .store import load_manifest

    d = a.run_dir
    if load_manifest(d) is None:
        raise ValueError(f"run_dir={str(d)!r} is not an intact run folder (no valid manifest)")
    config = RunConfig.from_dict(json.loads((d / "config.json").read_text()))
    if config.algo != "sgd":
        raise ValueError(f"run {d} uses algo={config.algo!r}; Thm 5.6 needs an SGD baseline run")
    stats = equilibrium_stats(read_history(d / "history.csv"), config)
    G, N = stats["G"], stats["N"]
    print(f"equilibrium (window of {stats['rows']} rows): G={G:.4g} N={N:.4g} N/G={N / G:.3g}")
    print(f"Thm 5.6: (C, κ)-LSI fails for κ > {critical_kappa(G, N, a.C):.3g} (C={a.C:.3g})")
    b_star = predict_critical_batch(G, N, config.batch_size, a.C)
    print(f"predicted largest safe batch size: {b_star:.0f} "
          f"(from B={config.batch_size}, η={config.lr:g})")
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

