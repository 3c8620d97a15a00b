"""Equilibrium statistics on plain history tables (a user's own CSV log): the constant-LR phase
is found wherever it sits, degenerate logs are refused, standard errors use block means."""

import math

import numpy as np
import pandas as pd
import pytest

from paperlib.__main__ import main
from paperlib.equilibrium import constant_lr_phase, equilibrium_stats


def _log(lr, seed=0, G=1.0, N=4.0, rho=0.0):
    """One row per step: G, N noisy around (G, N), AR(1) with coefficient rho."""
    rng = np.random.default_rng(seed)
    n = len(lr)
    e = np.zeros((n, 2))
    for i in range(1, n):
        e[i] = rho * e[i - 1] + rng.normal(size=2)
    return pd.DataFrame({"step": np.arange(1, n + 1), "lr": lr, "G": G + 0.5 * e[:, 0],
                         "N": N + 2.0 * e[:, 1]})


def test_constant_phase_after_a_warmup_and_before_a_decay():
    lr = np.concatenate([np.linspace(0.002, 0.1, 51)[:-1], np.full(250, 0.1), np.full(100, 0.01)])
    h = _log(lr)
    assert constant_lr_phase(h) == (50.0, 300.0)
    s = equilibrium_stats(h, min_rows=2)
    assert (s["window_start"], s["window_end"]) == (175.0, 300.0)
    assert s["rows"] == 125
    # a phase that opens the run, as paperlib's step schedules: unchanged (0, first decay]
    h0 = _log(np.concatenate([np.full(300, 0.1), np.full(100, 0.01)]))
    assert constant_lr_phase(h0) == (0.0, 300.0)
    assert equilibrium_stats(h0)["window_start"] == 150.0


def test_degenerate_logs_are_refused():
    with pytest.raises(ValueError, match="at least 2 needed"):
        equilibrium_stats(_log([0.1, 0.1]), min_rows=2)
    dup = pd.concat([_log(np.full(50, 0.1)), _log(np.full(50, 0.1))])
    with pytest.raises(ValueError, match="do not increase strictly"):
        equilibrium_stats(dup)
    nan_lr = _log(np.full(50, 0.1))
    nan_lr.loc[10, "lr"] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        equilibrium_stats(nan_lr)


def test_rows_without_g_do_not_mix_into_the_means():
    h = _log(np.full(200, 0.1), G=1.0, N=4.0)
    h.loc[h.index[100:190], "G"] = float("nan")  # G logged on some rows only
    h.loc[h.index[100:190], "N"] = 1e6  # these N must not count
    s = equilibrium_stats(h, min_rows=2)
    assert s["rows_G_N"] == 10 and s["N"] < 100


def test_block_standard_errors_see_autocorrelation():
    """Strongly autocorrelated per-step rows: the block-means SE covers the true spread of the
    window mean across independent runs, a per-row SE would be ~4x too small."""
    lr = np.full(4000, 0.1)
    means, ses = [], []
    for seed in range(40):
        s = equilibrium_stats(_log(lr, seed=seed, rho=0.9), min_rows=2)
        means.append(s["G"])
        ses.append(s["G_se"])
    spread = float(np.std(means, ddof=1))
    assert 0.6 < float(np.median(ses)) / spread < 1.6
    naive = 0.5 / math.sqrt(1 - 0.81) / math.sqrt(2000)  # per-row SE of the AR(1) rows
    assert spread > 3 * naive


def test_predict_lsr_on_a_csv_log_with_warmup_and_an_explicit_window(tmp_path, capsys):
    lr = np.concatenate([np.linspace(0.002, 0.1, 51)[:-1], np.full(250, 0.1), np.full(100, 0.01)])
    path = tmp_path / "log.csv"
    _log(lr).to_csv(path, index=False)
    assert main(["predict-lsr", str(path), "--batch-size", "32"]) == 0
    assert "(175, 300], 125 rows" in capsys.readouterr().out
    assert main(["predict-lsr", str(path), "--batch-size", "32", "--window", "60", "100"]) == 0
    assert "(60, 100], 40 rows" in capsys.readouterr().out
    assert main(["predict-lsr", str(path), "--batch-size", "32", "--window", "100", "60"]) == 2
    tiny = tmp_path / "tiny.csv"
    _log([0.1, 0.1]).to_csv(tiny, index=False)
    assert main(["predict-lsr", str(tiny), "--batch-size", "32"]) == 2
    assert "at least 2 needed" in capsys.readouterr().err
