"""One run on K processes (paperlib.distributed) with gloo on the CPU, launched by torchrun.

2 ranks give the 1-process history of SGD, SVAG (GroupNorm, and BatchNorm with one of SVAG's
batches per rank), NGD and GD up to the order of float reductions. Tolerance: relative 1e-4 on
every logged value (losses, accuracies, R, G, N, |g|²). Why: the ranks sum their parts in
another order than one process (a mean of two half-batch means instead of one sum over B,
chunk sums added rank by rank, float64 G/N from norms instead of from the two gradients), which
moves each step's gradient by ~1e-7 relative in float32; 40 steps of training carry that into
the logged values at up to ~1e-6 measured. K = 1 under torchrun is bitwise the plain run, and a
2-rank run killed after its first checkpoint resumes on one process.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from paperlib import store
from paperlib.config import preset
from paperlib.store import run_dir

REPO = Path(__file__).resolve().parent.parent
RTOL = 1e-4
KILL_AT = 25  # steps: after the checkpoint at 20

SCRIPT = """
import pickle, sys
import torch
torch.set_num_threads(1)
from paperlib import distributed, store

configs, killed, root, kill_at = pickle.load(open(sys.argv[1], "rb"))


class Killed(Exception):
    pass


def kill(step):
    if step == kill_at:
        raise Killed


with distributed.process_group():
    assert distributed.current().world == 2
    for c in configs:
        store.run(c, root, progress=False)
    try:
        store.run(killed, root, progress=False, step_callback=kill)
    except Killed:
        pass
"""


def smoke(**kw):
    return preset("smoke", dataset="synthetic", device="cpu", **kw)


CONFIGS = {
    "sgd": smoke(algo="sgd"),
    "svag": smoke(algo="svag", l=4.0),
    "svag-bn": smoke(algo="svag", l=2.0, norm="bn"),
    "ngd": smoke(algo="ngd", chunk_size=64),
    "gd": smoke(algo="gd", chunk_size=64),
}
KILLED = smoke(algo="sgd", seed=3)


def torchrun(nproc: int, *args: str, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(nproc), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every run of CONFIGS on 2 ranks, and KILLED stopped on 2 ranks at step KILL_AT."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "job.pkl").write_bytes(pickle.dumps((list(CONFIGS.values()), KILLED,
                                                str(tmp / "runs"), KILL_AT)))
    (tmp / "job.py").write_text(SCRIPT)
    p = torchrun(2, str(tmp / "job.py"), str(tmp / "job.pkl"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp / "runs"


def assert_close(a: pd.DataFrame, b: pd.DataFrame, rtol=RTOL) -> float:
    """Equal steps and NaN pattern; every value within rtol; returns the largest gap."""
    assert list(a["step"]) == list(b["step"])
    worst = 0.0
    for col in a.columns:
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        assert (np.isnan(x) == np.isnan(y)).all(), col
        ok = ~np.isnan(x)
        gap = np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-6)
        worst = max(worst, float(gap.max(initial=0.0)))
        assert (gap <= rtol).all(), (col, gap.max())
    return worst


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_give_the_one_process_history_up_to_reduction_order(two_ranks, tmp_path,
                                                                      name):
    cfg = CONFIGS[name]
    one = store.run(cfg, tmp_path, progress=False)
    two = store.load_result(cfg, two_ranks)
    assert two is not None and two.status == one.status == "complete"
    assert_close(one.history, two.history)
    if name != "ngd":  # every logged window measured G and N on both
        assert (two.history["nsr_count"] == one.history["nsr_count"]).all()
        assert two.history["G"].notna().all()


def test_a_two_rank_run_killed_resumes_on_one_process(two_ranks, tmp_path):
    d = run_dir(KILLED, two_ranks)
    assert store.load_manifest(d)["status"] == "partial"  # rank 0 wrote the checkpoint at 20
    assert torch.load(d / "checkpoint.pt", weights_only=True)["step"] == 20
    steps = []
    resumed = store.run(KILLED, two_ranks, progress=False, step_callback=steps.append)
    assert steps[0] == 21 and resumed.status == "complete"
    fresh = store.run(KILLED, tmp_path, progress=False)
    assert_close(fresh.history, resumed.history)


def test_one_rank_under_torchrun_is_bitwise_the_plain_run(tmp_path):
    args = ["-m", "paperlib", "train", "--preset", "smoke", "--dataset", "synthetic", "--device",
            "cpu", "--algo", "svag", "--svag-l", "2", "--quiet"]
    plain = subprocess.run([sys.executable, *args, "--store", str(tmp_path / "a")], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    p = torchrun(1, *args, "--store", str(tmp_path / "b"))
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = smoke(algo="svag", l=2.0)
    assert (run_dir(cfg, tmp_path / "a" / "runs") / "history.csv").read_bytes() == \
        (run_dir(cfg, tmp_path / "b" / "runs") / "history.csv").read_bytes()


def test_runs_that_ranks_cannot_split_exactly_are_refused_before_anything_is_written(
        tmp_path):
    p = torchrun(2, "-m", "paperlib", "train", "--preset", "smoke", "--dataset", "synthetic",
                 "--device", "cpu", "--norm", "bn", "--store", str(tmp_path), "--quiet")
    assert p.returncode != 0
    assert "SGD on 2 ranks with train-mode BatchNorm" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
