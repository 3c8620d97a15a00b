"""``make verify``: retrain a small, fixed sample of the committed `cpu` runs and report how far
each new history is from the committed one, and whether any claim's verdict would change.

Training is deterministic for a given machine and torch build, so on the machine that trained
the committed runs every history comes back bitwise equal. On another CPU code path (another
instruction set, another BLAS kernel) float rounding differs, runs diverge chaotically and final
accuracies move by about a seed's spread; the claims' intervals exist for that, and this check
shows whether the committed verdicts survive it: each sampled run replaces its committed twin in
the figures that use it, and their claims are recomputed.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import registered
from .notebooks import FIGURES, registered_parameters
from .paths import COMMITTED_RUNS
from .store import RunResult, load_result, run, run_id
from .sweeps import tidy

# (figure id, the run's settings): cheap runs (≈ 3.5 min in all on 2 cores) covering SGD at small
# and large B, two samplers, SVAG at l = 1 and 4, the LSR's largest B and both normalizations.
# NGD and GD runs cost ~8 min each, so none.
SAMPLE = (
    ("figA-sampling", dict(sampler="iid", seed=0)),
    ("figA-sampling", dict(sampler="replacement", seed=0)),
    ("fig1", dict(algo="sgd", batch_size=500, seed=0)),
    ("fig3", dict(batch_size=1024, seed=0)),
    ("fig4", dict(batch_size=128, l=1.0, seed=0)),
    ("fig4", dict(batch_size=128, l=4.0, seed=0)),
    ("figA-svag-baselines", dict(batch_size=128, l=1.0, seed=0)),
)
HISTORY_COLUMNS = ("train_loss", "test_acc", "R", "G", "N")


def _registered(fig_id: str):
    f = {f.id: f for f in FIGURES}[fig_id]
    p = registered_parameters(fig_id, "cpu")
    return f, p, registered.configs(f.notebook, p)


def compare(old: RunResult, new: RunResult) -> dict:
    """How far ``new``'s history is from ``old``'s: bitwise equal or not, the largest relative
    difference per column, and the final test accuracy of each (points)."""
    a, b = old.history, new.history
    out = {"run": run_id(old.config), "what": old.config.summary()[:60],
           "bitwise": (old.path / "history.csv").read_bytes() == (new.path / "history.csv")
           .read_bytes(), "status": f"{old.status} → {new.status}"}
    for col in HISTORY_COLUMNS:
        if col in a and col in b and len(a) == len(b):
            x, y = a[col].to_numpy(float), b[col].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            rel = np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-12)
            out[f"{col}_max_rel"] = float(rel.max()) if ok.any() else math.nan
    out["final_acc_old"] = float(old.final["test_acc"])
    out["final_acc_new"] = float(new.final["test_acc"])
    return out


def verify(root: str | Path | None = None, sample=SAMPLE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Retrain ``sample`` into ``root`` (default: a temporary folder) and compare.

    Returns:
        (per run: bitwise, max relative difference per history column, final accuracies;
         per claim of every figure that uses a sampled run: committed and new verdict).
    Raises:
        StaleResultError: a sampled run is not in the committed store.
    """
    import torch

    from .files import StaleResultError

    # the committed runs trained with one thread per worker process (make figures); the thread
    # count decides the reduction order, so a bitwise comparison needs the same
    torch.set_num_threads(1)
    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="paperlib-verify-")
        root = tmp.name
    rows, retrained = [], {}
    for fig_id, where in sample:
        _, _, cfgs = _registered(fig_id)
        c = next(c for c in cfgs if all(getattr(c, k) == v for k, v in where.items()))
        old = load_result(c, COMMITTED_RUNS)
        if old is None:
            raise StaleResultError(f"{run_id(c)} ({c.summary()}) is not in the committed store")
        t0 = time.time()
        new = run(c, root, allow_train=True, progress=False)
        print(f"retrained {run_id(c)} in {time.time() - t0:.0f} s: {c.summary()[:70]}",
              flush=True)
        retrained[c] = new
        rows.append(compare(old, new))
    verdicts = []
    for f in FIGURES:
        p = registered_parameters(f.id, "cpu")
        cfgs = registered.configs(f.notebook, p) if p else None
        if not cfgs or not any(c in retrained for c in cfgs):
            continue
        old = [load_result(c, COMMITTED_RUNS) for c in cfgs]
        new = [retrained.get(c, r) for c, r in zip(cfgs, old, strict=True)]
        before = registered.claims(f.notebook, p, tidy(old), cfgs[0])
        after = registered.claims(f.notebook, p, tidy(new), cfgs[0])
        for b, a in zip(before, after, strict=True):
            verdicts.append({"figure": f.id, "claim": b.claim[:60], "committed": b.verdict,
                             "value": f"{b.measured:.4g}", "after retraining": a.verdict,
                             "new value": f"{a.measured:.4g}",
                             "runs replaced": sum(c in retrained for c in cfgs)})
    if tmp is not None:
        tmp.cleanup()
    return pd.DataFrame(rows), pd.DataFrame(verdicts)


def main() -> int:
    runs, verdicts = verify()
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("\nper run (the committed history vs the one retrained here):")
        print(runs.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print("\nclaims of the figures that use them, with the retrained runs in place:")
        print(verdicts.to_string(index=False))
    changed = verdicts[verdicts["committed"] != verdicts["after retraining"]]
    flips = changed[changed["committed"].isin(["PASS", "FAIL"])
                    & changed["after retraining"].isin(["PASS", "FAIL"])]
    print(f"\n{int(runs['bitwise'].sum())} of {len(runs)} runs bitwise equal; "
          f"{len(changed)} of {len(verdicts)} claim verdicts would change, {len(flips)} of "
          "them between PASS and FAIL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
