"""`make bench` machinery (``benchmarks/``) and the accelerator options of RunConfig.

No timing assertions here: speed is measured by `python -m benchmarks` (as ratios) and recorded in
BENCHMARKS.md. These tests only check that a tiny benchmark produces every row with a finite
value and a verdict for every target (not how many rows each group has), and that channels_last /
tf32 / compile / bf16 validate and run on the CPU.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks import figures, run
from benchmarks.harness import Row, median_interval, overhead_row, table
from paperlib.__main__ import main as cli
from paperlib.config import preset
from paperlib.docs import update_section
from paperlib.make_figures import record_timing
from paperlib.train import train


@pytest.mark.slow
def test_quick_bench_yields_every_row_with_finite_values(tmp_path):
    md, js = tmp_path / "BENCH.md", tmp_path / "bench.json"
    every = ",".join(run.GROUPS)  # the epoch rows too (by default only on the GPU profile)
    argv = ["--quick", "--device", "cpu", "--only", every, "--out", str(md), "--json", str(js)]
    assert run.main(argv) == 0  # 1 when a group raised (a FAILED row)
    result = json.loads(js.read_text())
    rows = [Row(**r) for r in result["rows"]]
    assert {r.group for r in rows} == set(run.GROUPS)  # every group produced rows
    for r in rows:
        if r.group != "figures":  # reads figures/timings.json, which may not exist yet
            assert r.value is not None and math.isfinite(r.value), r
        assert (r.verdict() == "") == (not r.target), r  # every target has a verdict
        assert r.verdict() != "inconclusive" or r.ok is None, r
    assert {"date", "cpu", "cores", "torch", "device"} <= result["meta"].keys()
    text = md.read_text()
    assert text.count("<!-- bench:cpu-quick start -->") == 1
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == len(rows) + 2  # header, rule, one line per row
    update_section(md, "cpu-quick", "replaced")  # the section is replaced, not appended
    assert md.read_text().count("bench:cpu-quick start") == 1 and "replaced" in md.read_text()


def test_median_interval_uses_binomial_order_statistics():
    # n = 15: P(Bin(15, 1/2) <= 3) = 576/2^15 = 0.0176 <= 0.025 < P(<= 4) = 0.0592, so the
    # interval is the 4th smallest and the 4th largest value
    assert median_interval(list(range(15))) == (3, 11)
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (-math.inf, math.inf)  # n < 6
    assert median_interval(list(range(6))) == (0, 5)  # 2/64 = 0.031 > 0.025: j = 1
    rng = np.random.default_rng(0)  # coverage of the true median 0 by the 95 % interval
    hits = [lo <= 0 <= hi for lo, hi in (median_interval(list(rng.standard_cauchy(40)))
                                          for _ in range(2000))]
    assert 0.94 <= np.mean(hits) <= 0.99


@pytest.mark.parametrize("shift, verdict, shown", [(1.00, True, "yes"), (1.05, False, "**no**"),
                                                   (1.02, None, "inconclusive")])
def test_overhead_rows_hold_only_when_the_whole_interval_meets_the_target(shift, verdict, shown):
    rng = np.random.default_rng(1)
    base = list(1 + 0.01 * rng.standard_normal(60))
    times = {"off": base, "on": [shift * t * (1 + 0.005 * rng.standard_normal()) for t in base]}
    row = overhead_row("monitor", "overhead", "net", times, "on", "off", 2.0)
    assert row.ok is verdict
    assert f"| {shown} |" in table([row]) and row.verdict() in shown
    assert "| n/a (--quick) |" in table([row], quick=True)  # --quick measures nothing
    assert "95 % interval" in row.note and "60 paired repeats" in row.note


def test_unknown_group_is_refused(capsys):
    assert run.main(["--quick", "--device", "cpu", "--only", "svag,item3"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_figure_timings_are_read_when_present(tmp_path):
    missing = figures.rows(tmp_path / "timings.json")
    assert len(missing) == 1 and missing[0].value is None
    assert "not measured yet" in table(missing)
    # written as paperlib.make_figures.execute_all writes it; a re-plot keeps the training time
    path = tmp_path / "timings.json"
    record_timing("fig1", "cpu", 600.0, computed=5, path=path)
    record_timing("fig1", "cpu", 12.5, computed=0, path=path)
    record_timing("fig4", "cpu", 30.0, computed=0, path=path)
    rows = figures.rows(path)
    assert [r.value for r in rows] == [600.0, 30.0, 630.0]
    assert "re-plot 12 s" in rows[0].note and "re-plot from the store" in rows[1].note
    # train_s follows the set of results, not a rerun of some of them (a recomputed run's new
    # wall time used to rewrite the file, which a test of the CLI caught under load)
    record_timing("fig3", "cpu", 100.0, computed=4, path=path, train_s=200.0)
    before = path.read_bytes()
    record_timing("fig3", "cpu", 50.0, computed=1, stored=3, path=path, train_s=201.4)
    assert path.read_bytes() == before
    record_timing("fig3", "cpu", 60.0, computed=4, stored=4, path=path, train_s=400.0)  # a seed
    assert json.loads(path.read_text())["cpu"]["fig3"]["train_s"] == 400


def smoke(**kw):
    return preset("smoke", dataset="synthetic", device="cpu", **kw)


@pytest.mark.parametrize("kw", [
    dict(algo="sgd", nsr_every=2), dict(algo="sgd", norm="bn", nsr_extra_every=2),
    dict(algo="sgd", norm="bn", sampler="replacement", nsr_extra_every=2),
    dict(algo="svag", l=4, nsr_every=2), dict(algo="svag", l=4, norm="bn"),
    dict(algo="ngd", chunk_size=100), dict(algo="gd", chunk_size=100),
], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_bench_step_forms_the_gradient_of_paperlibs_loop(kw):
    """The bench times a loop written with the public API only; on every update rule it must
    form bitwise the gradient (and G/N on measuring steps) of ``paperlib.train``'s loop body."""
    import torch

    from benchmarks.harness import PROFILES, Bench
    from paperlib import train as T
    from paperlib.data import load_dataset

    cfg = smoke(augment=True, **kw)
    raw = load_dataset("synthetic")
    ours = Bench(PROFILES["cpu"], torch.device("cpu"), raw, 1, True).build(cfg)
    loop = T.build(cfg, torch.device("cpu"), data=raw)
    for k in range(1, 5):  # measuring and non-measuring steps
        a, b = ours.gradient(k), T.gradient(loop, k)
        assert torch.equal(a.grad, b.grad) and torch.equal(a.loss_sum, b.loss_sum)
        assert a.count == b.count and (a.G is None) == (b.G is None)
        if a.G is not None:
            assert torch.equal(a.G, b.G) and torch.equal(a.N, b.N)


@pytest.mark.parametrize("name", ["channels_last", "tf32", "compile", "bf16"])
@pytest.mark.parametrize("bad", [1, "yes", None])
def test_accelerator_options_must_be_bools(name, bad):
    with pytest.raises(ValueError, match=f"{name}="):
        smoke(**{name: bad})


def test_accelerator_option_flags_on_the_cli(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--preset", "smoke", "--channels-last", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_cpu_defaults_and_tf32_leave_training_unchanged():
    """TF32 only exists on CUDA: on the CPU tf32=False must give the bitwise same run."""
    a = train(smoke(), progress=False).history
    b = train(smoke(tf32=False), progress=False).history
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_channels_last_and_bf16_smoke_runs_on_cpu(norm):
    ref = train(smoke(norm=norm), progress=False).history
    cl = train(smoke(norm=norm, channels_last=True), progress=False)
    assert cl.status == "complete"
    # Same arithmetic in another memory layout: equal up to float summation order.
    np.testing.assert_allclose(cl.history["R"], ref["R"], rtol=1e-4)
    bf = train(smoke(norm=norm, bf16=True, channels_last=True), progress=False)
    assert bf.status == "complete"
    assert np.isfinite(bf.history[["train_loss", "R", "grad_sq"]].to_numpy()).all()


@pytest.mark.slow
def test_gpu_step_breakdown_dry_run(tmp_path):
    """scripts/gpu_step_breakdown.py (BENCHMARKS.md's GPU breakdown) still runs against the
    bench machinery: its CPU dry run writes every measurement as a finite number."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(run.__file__).resolve().parent.parent / "scripts" / "gpu_step_breakdown.py"
    out = tmp_path / "breakdown.json"
    subprocess.run([sys.executable, str(script), "--device", "cpu", "--steps", "1", "--sizes",
                    "2", "--no-compile", "--json", str(out)], check=True, capture_output=True)
    res = json.loads(out.read_text())
    keys = [f"{norm}_B2_{what}" for norm in ("gn", "bn")
            for what in ("step_ms_nsr_on", "step_ms_nsr_off", "model_ms_eager")]
    assert all(math.isfinite(res[k]) and res[k] > 0 for k in ["launch_us", *keys])
