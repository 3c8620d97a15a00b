"""Sweeps and figure modules: the executor is pluggable, stored results are reused, under test
(PAPERLIB_NO_TRAIN) a missing result fails fast naming the run instead of training; the figure
modules build the paper's configs and compute their claims from the tidy frame alone."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from paperlib import sweeps
from paperlib.config import preset
from paperlib.figures import common, fig1, fig3, fig4
from paperlib.files import StaleResultError
from paperlib.store import load_result


def configs():
    base = preset("smoke", dataset="synthetic", device="cpu")
    return [base.replace(seed=s) for s in (0, 1)]


def test_run_all_with_a_pluggable_executor_then_from_the_store(tmp_path, monkeypatch):
    with ThreadPoolExecutor(2) as pool:
        first = sweeps.run_all(configs(), root=tmp_path, executor=pool)
    assert [r.status for r in first] == ["complete", "complete"]
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")  # now only the store may answer
    again = sweeps.run_all(configs(), root=tmp_path)
    df = sweeps.tidy(again)
    assert set(df["seed"]) == {0, 1} and len(df) == sum(len(r.history) for r in first)
    final = sweeps.final_test_acc(df)
    assert np.isfinite(final["final_test_acc"]).all()


def test_missing_results_fail_fast_under_test(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")
    with pytest.raises(StaleResultError, match="make figures") as e:
        sweeps.run_all(configs(), root=tmp_path)
    assert "seed 1" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing trained or written


def test_a_complete_result_loads_without_its_gitignored_checkpoint(tmp_path):
    (r,) = sweeps.run_all(configs()[:1], root=tmp_path, workers=1)
    (r.path / "checkpoint.pt").unlink()
    assert load_result(r.config, tmp_path) is not None


def test_figure_configs_follow_the_paper_at_paper_preset():
    lsr = fig3.configs("paper")
    assert [c.batch_size for c in lsr][:3] == [2, 4, 8]
    assert all(abs(c.lr - 0.8 * c.batch_size / 128) < 1e-12 for c in lsr)
    assert all(c.arch == "preresnet32" and c.epochs == 300 for c in lsr)
    svag = fig4.configs("paper", ls=(1, 32))
    assert {(c.batch_size, c.lr) for c in svag} == {(128, 0.8), (1024, 6.4)}
    assert max(c.total_steps for c in svag) == 32 * max(c.base_steps for c in svag)
    with pytest.raises(ValueError, match="preset='huge'"):
        fig1.configs("huge")


def test_none_keeps_the_preset_value_and_zero_is_a_value():
    """None means "the preset's"; 0 and 0.0 are values (momentum=0, eval_from=0.0)."""
    base = fig4.configs("cpu", seeds=(0,))[0]
    assert fig4.configs("cpu", seeds=(0,), width=None, norm=None)[0] == base
    zero = fig4.configs("cpu", seeds=(0,), eval_from=0.0, momentum=0.0)[0]
    assert zero.eval_from == 0.0 and zero.momentum == 0.0


def test_eq11_is_claimed_only_for_scale_invariant_nets(tmp_path):
    """Eq. (11) rests on ⟨x, ∇L⟩ = 0: a ResNet control or an unnormalized net gets no row."""
    base = preset("smoke", dataset="synthetic", device="cpu")
    for cfg, rows in ((base, 1), (base.replace(arch="resnet8", norm="bn"), 0),
                      (base.replace(norm="none"), 0)):
        results = sweeps.run_all([cfg], root=tmp_path, workers=1)
        claims = common.eq11_claims(sweeps.tidy(results))
        assert len(claims) == rows, cfg.summary()


def test_gd_runs_are_shared_across_batch_sizes():
    main = fig1.configs("cpu", gap_batch_sizes=())
    small = fig1.configs("cpu", batch_size=8, gap_batch_sizes=())
    gd = {c for c in main if c.algo == "gd"}
    assert gd and gd == {c for c in small if c.algo == "gd"}
    assert {c.batch_size for c in small if c.algo != "gd"} == {8}


def _lsr_sweep(tmp_path, diverge) -> tuple:
    """The smoke Fig 3 sweep on synthetic data, with η = 1e6 injected at the batch sizes in
    ``diverge`` (the failure an LSR sweep exists to show)."""
    configs = [c.replace(lr=1e6) if c.batch_size in diverge else c
               for c in fig3.configs("smoke", dataset="synthetic", device="cpu")]
    results = sweeps.run_all(configs, root=tmp_path, workers=1)
    assert {r.config.batch_size for r in results if r.status == "diverged"} == set(diverge)
    return sweeps.tidy(results), results


def test_a_diverged_lsr_run_counts_as_a_failure_and_is_drawn(tmp_path):
    from paperlib import plots

    df, results = _lsr_sweep(tmp_path, diverge={64})
    per_b, info = fig3.summary(df)
    assert info["diverged_B"] == [64]
    assert info["observed_failure_B"] is not None and info["observed_failure_B"] <= 64
    assert per_b.set_index("batch_size").loc[64, "diverged"] == 1
    fig = plots.fig3(per_b, info)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "diverged" in labels and any(lab.startswith("LSR failed") for lab in labels)
    claims = fig3.claims(df)
    assert all(c.verdict in ("PASS", "FAIL", "INCONCLUSIVE") for c in claims)


def test_an_lsr_sweep_where_every_run_diverged_is_summarized(tmp_path):
    from paperlib import plots

    df, results = _lsr_sweep(tmp_path, diverge={8, 16, 32, 64})
    per_b, info = fig3.summary(df)
    assert info["observed_failure_B"] == 8 and per_b["test_error"].isna().all()
    plots.fig3(per_b, info)
    verdicts = [c.verdict for c in fig3.claims(df)]
    # no G/N, no prediction: nothing was tested, so nothing passes or fails
    assert verdicts and set(verdicts) == {"INCONCLUSIVE"}


def test_cadence_logs_once_per_epoch_and_keeps_the_ratio_or_the_interval():
    # cpu Fig 4 preset: log every 25, evaluate every 125 steps, n = 2000
    base = preset("cpu", log_every=25, eval_every=125)
    assert common.cadence(base, 16, keep="ratio") == {"log_every": 25, "eval_every": 125}
    assert common.cadence(base, 16, keep="interval") == {"log_every": 25, "eval_every": 125}
    # B = 128: 15 steps per epoch, so a log every 15 steps; then 5 logs per evaluation (the
    # preset's ratio) or 8 (≈ the preset's 125 steps)
    assert common.cadence(base, 128, keep="ratio") == {"log_every": 15, "eval_every": 75}
    assert common.cadence(base, 128, keep="interval") == {"log_every": 15, "eval_every": 120}
    assert common.cadence(base, 4000, keep="ratio")["log_every"] == 1  # B > n: still ≥ 1
    with pytest.raises(ValueError, match="keep"):
        common.cadence(base, 16, keep="both")
