"""The training loop, the run store and the CLI, on the library's synthetic data set (seconds)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from paperlib import store
from paperlib.config import RunConfig, preset
from paperlib.equilibrium import eq11_applies, run_equilibrium_stats
from paperlib.files import StaleResultError
from paperlib.history import HISTORY_COLUMNS
from paperlib.train import train


def smoke(**kw) -> RunConfig:
    return preset("smoke", dataset="synthetic", device="cpu", **kw)


def assert_same_history(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True),
                                  check_exact=True)


@pytest.mark.parametrize("algo", ["sgd", "svag", "ngd", "gd"])
def test_each_algorithm_runs_and_records(algo):
    cfg = smoke(algo=algo, l=2 if algo == "svag" else 1)
    res = train(cfg, progress=False)
    h = res.history
    assert res.status == "complete"
    assert tuple(h.columns) == HISTORY_COLUMNS
    assert h["step"].iloc[-1] == cfg.total_steps
    assert h["effective_step"].iloc[-1] == cfg.base_steps
    assert np.isfinite(h[["train_loss", "train_acc", "R", "grad_sq"]].to_numpy()).all()
    assert h["test_acc"].notna().sum() >= 2  # evaluated at eval_every and at the end
    if algo in ("sgd", "svag", "gd"):
        assert (h["G"] > -1).all() and h["N"].notna().all()
    if algo == "gd":
        assert (h["N"] == 0).all()
        np.testing.assert_allclose(h["G"], h["grad_sq"], rtol=1e-10)
    if algo == "ngd":
        assert h["G"].isna().all()  # NGD's gradient carries noise; G is not separable for free


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_svag_l1_is_sgd_bitwise(norm):
    """Including the G/N measurement (BN: the extra independent batch)."""
    a = train(smoke(algo="sgd", norm=norm), progress=False)
    b = train(smoke(algo="svag", l=1, norm=norm), progress=False)
    assert_same_history(a.history, b.history)
    assert b.history["G"].notna().any()
    for k, v in a.state["model"].items():
        assert torch.equal(v, b.state["model"][k])


def test_svag_runs_l_times_the_steps_with_stretched_schedule():
    cfg = smoke(algo="svag", l=4)
    h = train(cfg, progress=False).history
    assert cfg.total_steps == 4 * cfg.base_steps
    decay = cfg.milestones[0]
    before = h[h["effective_step"] <= decay]["lr"]
    after = h[h["effective_step"] > decay + 1]["lr"]
    assert np.allclose(before, cfg.lr / 4) and np.allclose(after, cfg.lr / 4 * cfg.gamma)


def _step_gradient(cfg, k=3):
    from paperlib.train import build, gradient

    return gradient(build(cfg, torch.device("cpu")), k)


def test_svag_fused_pass_matches_two_passes():
    """GN nets: the fused 2B pass with per-example weights is the same gradient as two passes
    (compared per step: trajectories of a max-pool net amplify float rounding over many steps)."""
    cfg = smoke(algo="svag", l=4)
    fused = _step_gradient(cfg.replace(nsr_every=2), k=3)  # 3 % 2 != 0: fused pass
    split = _step_gradient(cfg.replace(nsr_every=1), k=3)  # measuring step: two passes
    assert fused.G is None and split.G is not None
    assert (fused.grad - split.grad).norm() <= 1e-5 * split.grad.norm()  # float32 rounding
    torch.testing.assert_close(fused.loss_sum, split.loss_sum, rtol=1e-6, atol=0)


def test_sgd_half_batch_measurement_does_not_change_the_update():
    cfg = smoke()
    plain = _step_gradient(cfg.replace(nsr_every=2), k=3)
    halves = _step_gradient(cfg.replace(nsr_every=1), k=3)
    assert (plain.grad - halves.grad).norm() <= 1e-5 * plain.grad.norm()
    h = train(cfg, progress=False).history
    assert h["nsr_count"].sum() == cfg.total_steps


def test_bn_extra_batch_leaves_the_trajectory_unchanged():
    cfg = smoke(norm="bn")
    every = train(cfg.replace(nsr_extra_every=1), progress=False)
    rarely = train(cfg.replace(nsr_extra_every=10**6), progress=False)
    for col in ("train_loss", "R", "test_acc", "grad_sq"):
        np.testing.assert_array_equal(every.history[col], rarely.history[col])
    for k, v in every.state["model"].items():  # BN running statistics included
        assert torch.equal(v, rarely.state["model"][k])
    assert every.history["nsr_count"].sum() == cfg.total_steps


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = train(smoke(), progress=False).history
    b = train(smoke(), progress=False).history
    c = train(smoke(seed=1), progress=False).history
    assert_same_history(a, b)
    assert not np.array_equal(a["R"], c["R"])


class Killed(Exception):
    pass


@pytest.mark.parametrize("algo", ["sgd", "ngd"])
def test_killed_run_resumes_bitwise(tmp_path, algo):
    cfg = smoke(algo=algo, augment=True)
    kill_at = cfg.checkpoint_every + 5

    def kill(step):
        if step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        store.run(cfg, tmp_path / "a", progress=False, step_callback=kill)
    manifest = json.loads((store.run_dir(cfg, tmp_path / "a") / "manifest.json").read_text())
    assert manifest["status"] == "partial" and manifest["step"] == cfg.checkpoint_every
    steps_after_resume = []
    resumed = store.run(cfg, tmp_path / "a", progress=False,
                        step_callback=steps_after_resume.append)
    assert steps_after_resume[0] == cfg.checkpoint_every + 1  # resumed, not restarted
    fresh = store.run(cfg, tmp_path / "b", progress=False)
    assert_same_history(resumed.history, fresh.history)


def test_store_returns_cached_result_without_training(tmp_path):
    cfg = smoke()
    first = store.run(cfg, tmp_path, progress=False)
    calls = []
    again = store.run(cfg, tmp_path, progress=False, step_callback=calls.append)
    assert calls == []
    assert_same_history(first.history, again.history)
    assert again.meta["status"] == "complete" and again.meta["wall_s"] > 0


def test_truncated_history_is_detected_and_recomputed(tmp_path):
    cfg = smoke()
    first = store.run(cfg, tmp_path, progress=False)
    path = first.path / "history.csv"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert store.load_result(cfg, tmp_path) is None
    with pytest.raises(StaleResultError, match="regenerate"):
        store.run(cfg, tmp_path, allow_train=False)
    again = store.run(cfg, tmp_path, progress=False)
    assert_same_history(first.history, again.history)


def test_corrupt_checkpoint_is_not_used(tmp_path):
    cfg = smoke()

    def kill(step):
        if step == cfg.checkpoint_every + 1:
            raise Killed

    with pytest.raises(Killed):
        store.run(cfg, tmp_path, progress=False, step_callback=kill)
    ckpt = store.run_dir(cfg, tmp_path) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    steps = []
    res = store.run(cfg, tmp_path, progress=False, step_callback=steps.append)
    assert steps[0] == 1  # restarted from scratch
    assert_same_history(res.history, train(cfg, progress=False).history)


def test_diverged_run_is_recorded_as_diverged(tmp_path):
    cfg = smoke(norm="none", lr=1e12, wd=0.0)
    res = store.run(cfg, tmp_path, progress=False)
    assert res.status == "diverged"
    assert 1 <= res.diverged_step <= cfg.total_steps
    assert store.load_result(cfg, tmp_path).status == "diverged"  # kept in the store


def test_run_id_ignores_device_and_tracks_everything_else():
    assert store.run_id(smoke()) == store.run_id(smoke().replace(device="auto"))
    assert store.run_id(smoke()) != store.run_id(smoke(seed=1))


def test_config_round_trip_and_summary():
    cfg = smoke(algo="svag", l=4, milestones=(10.0, 20.0))
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert "l=4" in cfg.summary() and "actual steps" in cfg.summary()
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        preset("smoke", bogus=1)


def test_equilibrium_identity_on_a_short_run():
    """Eq. (11) uses the recorded R and E|g|²; its two sides must be finite and comparable."""
    cfg = smoke(steps=200, milestones=(200.0,), log_every=10, eval_every=200)
    history = train(cfg, progress=False).history
    stats = run_equilibrium_stats(history, cfg)
    assert stats["rows"] == 10 and math.isfinite(stats["eq11_rel_err"])
    # where eq. (11) does not apply, its columns are NaN and the window means stay
    for other in (cfg.replace(norm="none"), cfg.replace(arch="resnet8"),
                  cfg.replace(schedule="cosine", milestones=()),
                  cfg.replace(schedule="triangle", milestones=()),
                  cfg.replace(wd_milestones=(100.0,), wd_gamma=0.5)):
        assert not eq11_applies(other), other.summary()
        s = run_equilibrium_stats(history, other)
        assert math.isnan(s["eq11_rel_err"]) and math.isnan(s["eq11_lhs"])
        assert math.isfinite(s["R"]) and math.isfinite(s["grad_sq"])
    assert eq11_applies(cfg.replace(wd_milestones=(200.0,), wd_gamma=0.5))
    assert eq11_applies(cfg.replace(schedule="constant", milestones=()))


def test_eval_from_skips_early_evaluations_and_keeps_the_last():
    cfg = smoke(steps=40, log_every=5, eval_every=5, eval_from=0.75)
    h = train(cfg, progress=False).history
    evaluated = h.loc[h["test_acc"].notna(), "step"].tolist()
    assert evaluated == [30, 35, 40]  # from 0.75 × 40 on, and always at the end


def test_eval_from_out_of_range_is_refused():
    with pytest.raises(ValueError, match="eval_from=1.5"):
        smoke(eval_from=1.5)
