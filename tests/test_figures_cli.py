"""`make figures`, `python -m paperlib figures` and papermill as a user runs them (smoke preset,
real CIFAR-10): outputs of other presets and stores never replace committed files, an
interrupted execution replaces nothing and stops its workers, a re-plot is byte-stable, a
recomputed result is reported and counted, and the README's commands run as written."""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from paperlib import store
from paperlib.figures import sampling

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CIFAR = os.environ.get("CIFAR10_PATH")
BUILD = REPO / "build" / "smoke"
pytestmark = [pytest.mark.notebook,  # the figures CLI executes the figure notebooks
              pytest.mark.skipif(not CIFAR, reason="needs CIFAR-10 (set CIFAR10_PATH)")]


def committed_files() -> dict[str, str]:
    """sha256 of every tracked file a figure execution could write."""
    names = subprocess.run(["git", "ls-files", "figures", "notebooks", "README.md", "data"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return {n: hashlib.sha256((REPO / n).read_bytes()).hexdigest() for n in names}


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERLIB_")}
    return {**env, "CIFAR10_PATH": str(Path(CIFAR).resolve()), **extra}


def figures(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paperlib", "figures", *args], cwd=REPO,
                          capture_output=True, text=True, env=env or environment())


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after ``heading``."""
    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def at_smoke(argv: list[str]) -> list[str]:
    """A README command at the smoke preset (PRESET replaced, or added)."""
    if argv[0] == "make":
        argv = [a for a in argv if not a.startswith("PRESET=")]
        return [*argv, "PRESET=smoke"]
    if "PRESET" in argv:
        i = argv.index("PRESET")
        return [*argv[:i + 1], "smoke", *argv[i + 2:]]
    return [*argv, "-p", "PRESET", "smoke"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The README's "retrain into an empty store" command, at smoke and for one figure, with a
    CIFAR10= path relative to where make runs."""
    line = next(c for c in readme_block("## Reproducing a result") if "STORE=" in c)
    store_dir = tmp_path_factory.mktemp("fresh") / "store"
    argv = [f"STORE={store_dir}" if a.startswith("STORE=") else
            f"CIFAR10={os.path.relpath(CIFAR, REPO)}" if a.startswith("CIFAR10=") else a
            for a in shlex.split(line)]
    before = committed_files()
    r = subprocess.run([*at_smoke(argv), "ONLY=fig4"], cwd=REPO, capture_output=True,
                       text=True, env=environment(CIFAR10_PATH=""))
    return {"store": store_dir, "run": r, "before": before}


def test_a_fresh_store_trains_everything_and_leaves_committed_files_alone(fresh):
    r = fresh["run"]
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "32 runs: 0 stored, 32 to train" in out
    assert "estimated wall time on this machine" in out and "[32/32] complete" in out
    assert "32 result(s) computed, 0 loaded from the store" in out
    assert len(list((fresh["store"] / "runs").iterdir())) == 32
    for name in ("notebooks/fig4_svag.ipynb", "figures/fig4.png", "figures/fig4.claims.csv"):
        assert (BUILD / name).is_file(), name
    assert committed_files() == fresh["before"]
    timings = json.loads((BUILD / "figures" / "timings.json").read_text())["smoke"]["fig4"]
    assert timings["results_computed"] == 32 and timings["wall_s_with_training"] > 0


def test_a_recomputed_result_is_reported_and_counted(fresh):
    """A truncated history.csv used to be retrained silently and reported as "0 computed"."""
    victim = next(iter(sorted((fresh["store"] / "runs").iterdir())))
    text = (victim / "history.csv").read_text()
    (victim / "history.csv").write_text(text[: len(text) // 2])
    timings = (BUILD / "figures" / "timings.json").read_bytes()
    r = figures("--preset", "smoke", "--only", "fig4", "--store", str(fresh["store"]))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "32 runs: 31 stored, 1 to train, of which 1 recomputed" in out
    assert f"recomputing {victim.name}" in out
    assert "history.csv does not match the checksum in its manifest" in out
    assert "1 result(s) computed, 31 loaded from the store" in out
    assert "not recorded as a from-scratch time" in out
    assert (BUILD / "figures" / "timings.json").read_bytes() == timings


def test_stored_figures_replot_in_parallel_and_the_others_train_after(fresh):
    """fig4's runs are in the fresh store, figA-sampling's are not: fig4 is re-plotted in the
    parallel pass (training forbidden), figA-sampling stops there and trains afterwards."""
    r = figures("--preset", "smoke", "--only", "fig4,figA-sampling", "--store",
                str(fresh["store"]))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "=== fig4: " in out and "re-plotted from 32 stored result(s) ===" in out
    assert "=== figA-sampling: results not in the store; it runs after the re-plots ===" in out
    assert re.search(r"=== figA-sampling: \d+ s; \d+ result\(s\) computed, 0 loaded", out)
    assert re.search(r"2 figure\(s\) in \d+ s: 1 re-plotted from the store \(\d at a time\), "
                     r"1 one at a time \([1-9]\d* result\(s\) computed\)", out)
    assert out.index("results not in the store") < out.index("computed, 0 loaded")


def test_the_committed_figure_replots_byte_for_byte():
    """`make figures` at cpu from the committed store: nothing to train, nothing changes."""
    before = committed_files()
    r = subprocess.run(["make", "figures", "ONLY=fig4"], cwd=REPO, capture_output=True,
                       text=True, env=environment())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "0 result(s) computed" in r.stdout
    assert committed_files() == before
    nb = json.loads((REPO / "notebooks" / "fig4_svag.ipynb").read_text())
    assert "start_time" not in nb["metadata"]["papermill"]  # no timestamps to change
    assert not any("execution" in c["metadata"] for c in nb["cells"])


def _descendants_once(proc: subprocess.Popen, count: int, timeout: float = 120) -> list:
    """Wait until ``proc`` has ``count`` descendant processes; return them."""
    parent = psutil.Process(proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = parent.children(recursive=True)
        if len(kids) >= count:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {count} descendant processes within {timeout} s")


def _gone(processes: list, timeout: float = 30) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


def test_sigterm_stops_the_figure_its_workers_and_replaces_nothing(tmp_path):
    """`kill -TERM` of `python -m paperlib figures` used to leave its workers training."""
    out = tmp_path / "out"
    marker = out / "notebooks" / "sampling.ipynb"
    marker.parent.mkdir(parents=True)
    marker.write_text("a notebook that must survive an interrupted execution")
    proc = subprocess.Popen([sys.executable, "-m", "paperlib", "figures", "--only",
                             "figA-sampling", "--store", str(tmp_path / "store"), "--out",
                             str(out)], cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    kids = _descendants_once(proc, 3)  # the kernel and its two training workers
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "was not replaced" in output
    assert _gone(kids), [p.pid for p in kids if p.is_running()]
    assert marker.read_text() == "a notebook that must survive an interrupted execution"
    configs = sampling.configs("cpu")
    assert all(store.load_result(c, tmp_path / "store" / "runs") is None for c in configs)


def test_sigterm_during_the_parallel_replots_stops_them_and_their_kernels(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "paperlib", "figures", "--only",
                             "fig4,figA-sampling", "--out", str(out)], cwd=REPO,
                            env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    kids = _descendants_once(proc, 4)  # two re-plot workers and their kernels
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output[-3000:]
    assert _gone(kids), [p.pid for p in kids if p.is_running()]


def test_sigterm_to_a_sweep_in_a_script_stops_its_workers(tmp_path):
    code = ("from paperlib import sweeps\nfrom paperlib.figures import sampling\n"
            "configs = sampling.configs('cpu')[:2]\n"
            f"sweeps.run_all(configs, root={str(tmp_path)!r}, workers=2)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kids = _descendants_once(proc, 2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "KeyboardInterrupt" in output, output[-2000:]
    assert _gone(kids)


def test_long_work_stops_before_the_notebook_trains(tmp_path):
    r = figures("--preset", "smoke", "--only", "fig4", "--store", str(tmp_path / "store"),
                env=environment(PAPERLIB_LONG_HOURS="1e-9"))
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TooLongError:") and "ALLOW_LONG=1" in last
    assert not (tmp_path / "store" / "runs").exists()


def test_readme_notebook_commands_run_as_written_at_smoke(fresh, tmp_path):
    """From a directory outside the repository (papermill used to write ../figures there);
    the runs come from (and go to) the module's store, not the committed one."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    (cwd / "notebooks").symlink_to(REPO / "notebooks")
    (cwd / ".venv").symlink_to(REPO / ".venv")
    env = environment(PAPERLIB_STORE=str(fresh["store"]))
    before = committed_files()
    commands = readme_block("## Rerunning a notebook with other parameters")
    assert len(commands) == 4
    for line in commands:
        argv = at_smoke(shlex.split(line))
        where = REPO if argv[0] == "make" else cwd
        if argv[0] == "make":
            argv.append(f"STORE={fresh['store']}")
        r = subprocess.run(argv, cwd=where, capture_output=True, text=True, env=env)
        assert r.returncode == 0, (line, (r.stdout + r.stderr)[-3000:])
        if "papermill" in line:
            fig_id = argv[argv.index("FIG_ID") + 1] if "FIG_ID" in argv else "fig4"
            assert (cwd / "out.ipynb").is_file()
            assert (BUILD / "figures" / f"{fig_id}.png").is_file()
    assert not (tmp_path / "figures").exists()
    assert committed_files() == before
    r = subprocess.run([".venv/bin/papermill", "notebooks/fig4_svag.ipynb", "bad.ipynb", "-p",
                        "PRESET", "smoke", "-p", "SEEDS", "[0, -1]"], cwd=cwd,
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "notebook parameter SEEDS='[0, -1]' is not allowed" in r.stdout + r.stderr


def test_readme_cli_commands_run_as_written(tmp_path):
    lines = readme_block("Train one run")
    assert lines and all(line.startswith(".venv/bin/python -m paperlib ") for line in lines)
    env = environment(PAPERLIB_STORE=str(tmp_path / "store"))
    for line in lines:
        r = subprocess.run(shlex.split(line), cwd=REPO, capture_output=True, text=True, env=env)
        assert r.returncode == 0, (line, r.stderr[-2000:])
        if " train " in line:
            assert r.stdout.startswith("estimated") and "complete:" in r.stdout
        else:
            assert "critical batch size B* = B·C²(1 + N/G)" in r.stdout
