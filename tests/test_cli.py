"""The command line as a user meets it (``python -m paperlib``): every bad input stops with one
``error:`` line naming the value and what is allowed, exit status 2, before anything is written;
equal configs name one run; predict-lsr needs a constant-LR equilibrium; long work asks first.
Runs use the synthetic data set at the smoke preset (seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paperlib import store
from paperlib.__main__ import build_parser, main
from paperlib.config import RunConfig, _field_kinds, preset
from paperlib.history import read_history
from paperlib.predict import predict

REPO = Path(__file__).resolve().parent.parent


def train_argv(store_dir: Path, *args: str) -> list[str]:
    return ["train", "--preset", "smoke", "--dataset", "synthetic", "--device", "cpu",
            "--store", str(store_dir), "--quiet", *args]


def refused(capsys, store_dir: Path, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    for text in expected:
        assert text in err, err
    assert not store_dir.exists(), "nothing may be written before the error"
    return err


BAD = [
    (["--l", "0.5", "--algo", "svag"], "l=0.5"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--batch-size", "300"], "batch_size=300"),
    (["--lr", "0"], "lr=0"),
    (["--lr", "-1"], "lr=-1"),
    (["--arch", "alexnet"], "arch='alexnet'"),
    (["--norm", "ln"], "norm='ln'"),
    (["--dataset", "mnist"], "dataset='mnist'"),
    (["--sampler", "stratified"], "sampler='stratified'"),
    (["--preset", "huge"], "preset='huge'"),
    (["--algo", "ngd", "--norm", "bn"], "norm='bn'"),
    (["--algo", "adam"], "algo='adam'"),
]


@pytest.mark.parametrize("args,expected", BAD)
def test_bad_values_are_refused_before_any_work(tmp_path, capsys, args, expected):
    argv = train_argv(tmp_path / "s", *args)
    if "--dataset" in args:
        argv.remove("synthetic")
        argv.remove("--dataset")
    refused(capsys, tmp_path / "s", argv, expected, "allowed")


NUMBERS = sorted(name for name, (kind, _) in _field_kinds().items() if kind in (float, tuple))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", NUMBERS)
def test_every_number_must_be_finite(tmp_path, capsys, name, value):
    """`--lr inf` used to train a "diverged" run; `--algo svag --l inf` ended in an
    OverflowError traceback."""
    extra = ["--algo", "svag"] if name == "l" else []
    flag = "--" + name.replace("_", "-")
    refused(capsys, tmp_path / "s", train_argv(tmp_path / "s", *extra, f"{flag}={value}"),
            f"{name}=", "not allowed", "finite")


@pytest.mark.parametrize("name", ["lr", "wd"])
def test_numbers_beyond_float32_are_refused(tmp_path, capsys, name):
    """`--lr 1e308` passed validation and crashed in torch's SGD with an overflow traceback."""
    refused(capsys, tmp_path / "s", train_argv(tmp_path / "s", f"--{name}=1e308"),
            f"{name}=1e+308", "not allowed", "finite float32")


IGNORED = [
    (["--algo", "sgd", "--l", "4"], "l=4.0"),
    (["--schedule", "cosine", "--milestones", "10"], "milestones=(10.0,)"),
    (["--schedule", "constant", "--gamma", "0.5"], "gamma=0.5"),
    (["--final-lr-factor", "0.1"], "final_lr_factor=0.1"),
    (["--wd-gamma", "0.5"], "wd_gamma=0.5"),
    (["--algo", "gd", "--sampler", "iid"], "sampler='iid'"),
    (["--algo", "ngd", "--nsr-every", "2"], "nsr_every=2"),
    (["--chunk-size", "10"], "chunk_size=10"),
    (["--nsr-extra-every", "2"], "nsr_extra_every=2"),
    (["--subset", "none", "--data-seed", "3"], "data_seed=3"),
    (["--steps", "10", "--epochs", "5"], "epochs=5.0"),
]


@pytest.mark.parametrize("args,expected", IGNORED)
def test_settings_the_run_would_ignore_are_refused(tmp_path, capsys, args, expected):
    """`--algo sgd --l 4` used to be stored as its own run with SGD's history."""
    refused(capsys, tmp_path / "s", train_argv(tmp_path / "s", *args), expected, "ignored")


def test_the_library_refuses_to_store_ignored_settings_too(tmp_path):
    config = preset("smoke", dataset="synthetic", device="cpu", algo="sgd", l=4)
    with pytest.raises(ValueError, match="l=4.0 is not allowed here: it would be ignored"):
        store.run(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    # a length in epochs replaces the preset's length in steps (not both)
    assert preset("cpu", epochs=2.0).steps is None


UNTRAINABLE = [
    (["--resolution", "1", "--width", "0.5"], "GroupNorm"),  # one value per group: 0/0
    (["--norm", "bn", "--batch-size", "1", "--resolution", "1"], "BatchNorm"),
    (["--width", "0.3"], "does not build"),  # fractional channels
    (["--subset", "5"], "subset=5"),  # fewer examples than classes
]


@pytest.mark.parametrize("args,expected", UNTRAINABLE)
def test_configs_that_cannot_train_are_refused(tmp_path, capsys, args, expected):
    """These used to be stored as runs that "diverged at step 1" even at lr = 1e-12."""
    refused(capsys, tmp_path / "s", train_argv(tmp_path / "s", *args, "--lr", "1e-12"),
            expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_refused_before_anything_is_written(tmp_path, capsys):
    argv = train_argv(tmp_path / "s", "--device", "cuda")
    argv.remove("cpu")
    argv.remove("--device")
    refused(capsys, tmp_path / "s", argv, "device='cuda'")


PARSE = [
    (["--lr", "abc"], "argument --lr: expected a number, got 'abc'"),
    (["--batch-size", "1.5"], "argument --batch-size: expected an integer, got '1.5'"),
    (["--subset", "all"], "argument --subset: expected an integer or none, got 'all'"),
    (["--augment", "maybe"], "argument --augment: expected true or false, got 'maybe'"),
    (["--milestones", "a,b"], "argument --milestones: expected comma-separated numbers"),
]


@pytest.mark.parametrize("args,expected", PARSE)
def test_parse_errors_name_the_flag_and_the_expected_type(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        main(train_argv(tmp_path / "s", *args))
    assert e.value.code == 2
    assert expected in capsys.readouterr().err


def test_train_and_figures_default_to_the_same_preset():
    parser = build_parser()
    train = parser.parse_args(["train"])
    figures = parser.parse_args(["figures"])
    assert train.preset == figures.preset == "cpu"


def test_equal_configs_name_one_run(tmp_path, capsys):
    """l=2 (int, from Python) and --l 2 (float, from the CLI) are one config and one run."""
    from_python = preset("smoke", dataset="synthetic", device="cpu", algo="svag", l=2, lr=1,
                         width=2)
    stored = store.run(from_python, tmp_path / "s" / "runs", progress=False)
    assert main(train_argv(tmp_path / "s", "--algo", "svag", "--l", "2", "--lr", "1",
                           "--width", "2")) == 0
    out = capsys.readouterr().out
    assert f"complete: {stored.path}" in out and "estimated" not in out  # loaded, not trained
    assert [p.name for p in (tmp_path / "s" / "runs").iterdir()] == [stored.path.name]


def test_committed_run_ids_are_unchanged_by_type_normalization():
    """Every committed folder is named by run_id of its config.json, also when the floats of
    that config are given as ints (l=2 vs 2.0)."""
    folders = sorted((REPO / "data" / "runs").iterdir())
    assert folders
    floats = [n for n, (kind, _) in _field_kinds().items() if kind is float]
    for d in folders:
        config = RunConfig.from_dict(json.loads((d / "config.json").read_text()))
        assert store.run_id(config) == d.name
        as_ints = {n: int(getattr(config, n)) for n in floats
                   if getattr(config, n) is not None and float(getattr(config, n)).is_integer()}
        assert store.run_id(config.replace(**as_ints)) == d.name


def test_long_work_stops_before_training_unless_allowed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PAPERLIB_LONG_HOURS", "1e-9")
    refused(capsys, tmp_path / "s", train_argv(tmp_path / "s"), "--allow-long",
            "nothing was trained")
    assert main(train_argv(tmp_path / "s", "--allow-long")) == 0
    assert "complete" in capsys.readouterr().out


def test_the_paper_preset_on_a_cpu_asks_before_weeks_of_work(tmp_path, capsys):
    err = refused(capsys, tmp_path / "s", ["train", "--preset", "paper", "--device", "cpu",
                                           "--store", str(tmp_path / "s")], "--allow-long")
    hours = float(err.split("estimated at ")[1].split(" h ")[0])
    assert hours > 3  # a PreResNet-32 for 300 epochs of CIFAR-10 on a CPU


def test_manifest_records_what_decides_the_numerics(tmp_path, capsys):
    assert main(train_argv(tmp_path / "s")) == 0
    (run_dir,) = (tmp_path / "s" / "runs").iterdir()
    numerics = json.loads((run_dir / "manifest.json").read_text())["numerics"]
    assert numerics["torch"] == torch.__version__
    assert numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert numerics["threads"] == torch.get_num_threads()
    assert numerics["device"] == "cpu" and numerics["device_name"]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.slow
@pytest.mark.parametrize("umask,file_mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_users_umask(tmp_path, umask, file_mode):
    """Store files and claims CSVs used to be created 0600 whatever the umask."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "paperlib", *train_argv(tmp_path / "s")],
                   check=True, env=env, umask=umask, capture_output=True)
    written = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"config.json", "history.csv", "manifest.json",
                                        "checkpoint.pt"}
    assert all(_mode(p) == file_mode for p in written), {p.name: oct(_mode(p)) for p in written}
    code = ("import pandas as pd; from paperlib.claims import save_claims; "
            f"save_claims(pd.DataFrame({{'a': [1]}}), 'x', {str(tmp_path / 'figs')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, umask=umask)
    assert _mode(tmp_path / "figs" / "x.claims.csv") == file_mode


# --- predict-lsr -----------------------------------------------------------------------------

def _trained(tmp_path, capsys, *args) -> Path:
    assert main(train_argv(tmp_path / "s", *args)) == 0
    capsys.readouterr()
    (run_dir,) = (tmp_path / "s" / "runs").iterdir()
    return run_dir


def test_predict_lsr_refuses_a_run_without_an_equilibrium(tmp_path, capsys):
    """A 40-step run used to give a B* from "a window of 2 rows" without a word."""
    run_dir = _trained(tmp_path, capsys)
    assert main(["predict-lsr", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no constant-LR equilibrium window" in err and "2/(ηλ)" in err


def test_predict_lsr_says_a_run_diverged_and_when(tmp_path, capsys):
    run_dir = _trained(tmp_path, capsys, "--norm", "none", "--lr", "1e12")
    step = json.loads((run_dir / "manifest.json").read_text())["diverged_step"]
    assert main(["predict-lsr", str(run_dir)]) == 2
    assert f"diverged at step {step}" in capsys.readouterr().err


def test_predict_lsr_from_an_equilibrium_and_its_warnings(tmp_path, capsys):
    run_dir = _trained(tmp_path, capsys, "--wd", "0.05", "--steps", "200", "--milestones",
                       "200", "--log-every", "10", "--eval-every", "200")
    assert main(["predict-lsr", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "equilibrium window: effective steps (100, 200]" in out
    assert "critical batch size B* = B·C²(1 + N/G)" in out
    # the same prediction from the run's history as a plain CSV log (one's own training)
    b_star = [line for line in out.splitlines() if "B* =" in line]
    csv = run_dir / "history.csv"
    assert main(["predict-lsr", str(csv)]) == 2  # a CSV log needs --batch-size
    assert main(["predict-lsr", str(csv), "--batch-size", "16"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if "B* =" in line] == b_star
    # the same run with R drifting 20 % over the window is flagged, not silently used
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    history = read_history(run_dir / "history.csv")
    steps = history["effective_step"]
    history["R"] = history["R"].mean() * (1 + 0.2 * (steps - 100).clip(lower=0) / 100)
    lines = predict(config, history)
    assert any(line.startswith("warning: the window is not an equilibrium: R changed by +")
               for line in lines), lines
    assert main(["predict-lsr", str(tmp_path)]) == 2  # not a run folder


def test_predict_lsr_refuses_runs_without_constant_lr_or_weight_decay(tmp_path, capsys):
    for args, expected in ((["--schedule", "cosine"], "never stays constant"),
                           (["--wd", "0"], "no weight decay")):
        run_dir = _trained(tmp_path / expected.replace(" ", "-"), capsys, *args)
        assert main(["predict-lsr", str(run_dir)]) == 2
        assert expected in capsys.readouterr().err


def test_other_presets_keep_their_runs_out_of_the_committed_store(monkeypatch):
    """Smoke or paper runs used to land next to the committed ones in data/runs."""
    from paperlib import parameters, paths

    monkeypatch.delenv("PAPERLIB_STORE", raising=False)
    assert paths.runs_root("cpu") == paths.runs_root() == REPO / "data" / "runs"
    for name in ("smoke", "paper"):
        assert paths.runs_root(name) == REPO / "build" / name / "store" / "runs"
        checked = parameters.check({"PRESET": name, "RUNS_DIR": "", "FIG_DIR": ""})
        assert checked["RUNS_DIR"] == str(paths.runs_root(name))
        assert checked["FIG_DIR"] == str(REPO / "build" / name / "figures")
