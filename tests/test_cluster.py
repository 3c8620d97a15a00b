"""Sweeps through submitit (paperlib.cluster): local jobs train what the in-process pool trains,
bit for bit; a killed sweep loses nothing and its resubmission trains only the missing runs; a
preempted job is requeued and resumes from the run's checkpoint; a Slurm sweep submits one job
array, does not resubmit runs whose jobs are queued, and plots once the results are in (Slurm's
sbatch / sacct / srun replaced by scripts that answer as Slurm does); bad options are refused
before anything runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paperlib import cluster, cluster_submit, sweeps
from paperlib.config import preset
from paperlib.store import load_manifest, run_dir, run_id

REPO = Path(__file__).resolve().parent.parent


def configs(seeds=(0, 1), **kw):
    base = preset("smoke", dataset="synthetic", device="cpu", **kw)
    return [base.replace(seed=s) for s in seeds]


def local(**kw):
    return cluster.ClusterOptions("local", gpus_per_job=0, **kw)


def histories(configs_, root) -> list[bytes]:
    return [(run_dir(c, root) / "history.csv").read_bytes() for c in configs_]


def test_local_jobs_train_bitwise_the_in_process_runs_then_load_from_the_store(tmp_path,
                                                                                monkeypatch):
    cfgs = configs()
    jobs = sweeps.run_all(cfgs, root=tmp_path / "jobs", executor=local(array_parallelism=2))
    sweeps.run_all(cfgs, root=tmp_path / "pool", workers=1)
    assert [r.status for r in jobs] == ["complete", "complete"]
    assert histories(cfgs, tmp_path / "jobs") == histories(cfgs, tmp_path / "pool")
    assert jobs[0].meta["numerics"]["threads"] == 1  # the job pinned one thread, as the pool
    assert not list((tmp_path / "jobs" / ".jobs").glob("*.json"))  # records of done runs go
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")  # a re-plot only reads the store
    monkeypatch.setenv("PAPERLIB_EXECUTOR", "local")
    again = sweeps.run_all(cfgs, root=tmp_path / "jobs")
    assert [r.history.equals(j.history) for r, j in zip(again, jobs, strict=True)] == [True] * 2


SWEEP = """
import torch
from paperlib import cluster, cluster_submit, sweeps
from paperlib.config import preset
base = preset("smoke", dataset="synthetic", device="cpu", steps=200, checkpoint_every=20)
sweeps.run_all([base.replace(seed=s) for s in (0, 1, 2)], root={root!r},
                    executor=cluster.ClusterOptions("local", gpus_per_job=0,
                                                    array_parallelism=1))
"""


def test_a_killed_local_sweep_loses_nothing_and_resubmission_trains_only_the_missing(tmp_path,
                                                                                     capsys):
    cfgs = configs((0, 1, 2), steps=200, checkpoint_every=20)
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SWEEP.format(root=str(root))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it while its second job is training
        done = [c for c in cfgs if (load_manifest(run_dir(c, root)) or {}).get("status")
                == "complete"]
        if done:
            break
        time.sleep(0.2)
    assert done, "no run finished in time"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, out
    records = [json.loads(p.read_text()) for p in (root / ".jobs").glob("*.json")]
    for rec in records:  # the sweep cancelled the job it had started
        assert cluster_submit.job_state(rec) == "gone", rec
    stored = {run_id(c) for c in cfgs if (load_manifest(run_dir(c, root)) or {}).get("status")
              == "complete"}
    before = {rid: (root / rid / "manifest.json").read_bytes() for rid in stored}
    assert 1 <= len(stored) < 3, out
    capsys.readouterr()
    results = sweeps.run_all(cfgs, root=root, executor=local(array_parallelism=2))
    printed = capsys.readouterr().out
    assert f"3 runs: {len(stored)} stored, {3 - len(stored)} to train" in printed
    assert printed.count("] complete in") == 3 - len(stored)
    assert {rid: (root / rid / "manifest.json").read_bytes() for rid in stored} == before
    assert [r.status for r in results] == ["complete"] * 3


def test_a_preempted_job_is_requeued_and_resumes_from_the_runs_checkpoint(tmp_path):
    import psutil
    import submitit

    (cfg,) = configs((0,), steps=300, checkpoint_every=20)
    root = tmp_path / "runs"
    ex = cluster_submit.make_executor(local(), tmp_path / "submitit")
    from paperlib.cluster_job import RunJob

    job = ex.submit(RunJob(), cfg, str(root), 1)
    deadline = time.time() + 120
    while (load_manifest(run_dir(cfg, root)) or {}).get("status") != "partial":
        assert time.time() < deadline and not job.done(), job.stderr()
        time.sleep(0.05)
    # The signal Slurm sends before preemption or the time limit, to the job's task (the
    # controller's child: the process that runs RunJob).
    usr = submitit.local.local.LocalJobEnvironment._usr_sig()
    psutil.Process(int(job.job_id)).children()[0].send_signal(usr)
    rid, status, _ = job.result()
    assert (rid, status) == (run_id(cfg), "complete")
    log = job.stdout() + (job.stderr() or "")
    assert "Requeued job" in log, log
    assert f"run {rid}: partial: stopped at step" in log and "resumes from its checkpoint" in log
    fresh = sweeps.run_all([cfg], root=tmp_path / "fresh", workers=1)[0]
    assert (run_dir(cfg, root) / "history.csv").read_bytes() == \
        (fresh.path / "history.csv").read_bytes()
    assert isinstance(job, submitit.local.local.LocalJob)


FAKE = {  # what a Slurm cluster's commands answer, enough for submitit
    "sbatch": """#!/bin/bash
n=$(ls "$FAKE_SLURM"/sbatch-*.sh 2>/dev/null | wc -l)
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
echo "Submitted batch job $((4242 + n))"
""",
    "sacct": """#!/bin/bash
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/states" 2>/dev/null
""",
    "srun": "#!/bin/bash\nexec \"$@\"\n",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, spool = tmp_path / "bin", tmp_path / "spool"
    bin_dir.mkdir()
    spool.mkdir()
    for name, text in FAKE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(spool))

    def states(**by_job):
        (spool / "states").write_text("".join(f"{j}|{s}|node1\n" for j, s in by_job.items()))
    return spool, states


def slurm_sweep(cfgs, root, **kw):
    options = cluster.ClusterOptions("slurm", partition="gpu", time_limit=120,
                                     array_parallelism=4, **kw)
    with pytest.raises(cluster.RunsPendingError) as e:
        sweeps.run_all(cfgs, root=root, executor=options)
    return e.value


def test_a_slurm_sweep_submits_one_array_once_and_plots_when_the_jobs_are_done(
        tmp_path, fake_slurm, capsys):
    import submitit

    spool, states = fake_slurm
    cfgs, root = configs((0, 1, 2)), tmp_path / "runs"
    e = slurm_sweep(cfgs, root)
    (script,) = spool.glob("sbatch-*.sh")
    text = script.read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --time=120",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@90"):
        assert line in text
    assert e.submitted == 3 and {j for _, j, _ in e.pending} == {"4242_0", "4242_1", "4242_2"}
    assert "squeue -j 4242" in str(e) and cfgs[0].summary() in str(e)

    states(**{"4242_0": "RUNNING", "4242_1": "PENDING", "4242_2": "PENDING"})
    e = slurm_sweep(cfgs, root)  # queued and running jobs are not submitted again
    assert len(list(spool.glob("sbatch-*.sh"))) == 1
    assert e.submitted == 0 and len(e.pending) == 3

    # The cluster runs jobs 0 and 1 (their pickled RunJob), job 2 fails without a result.
    for k in (0, 1):
        paths = submitit.core.utils.JobPaths(root / ".jobs" / "submitit", f"4242_{k}")
        submitit.core.utils.DelayedSubmission.load(paths.submitted_pickle).result()
    states(**{"4242_0": "COMPLETED", "4242_1": "COMPLETED", "4242_2": "FAILED"})
    capsys.readouterr()
    e = slurm_sweep(cfgs, root)
    printed = capsys.readouterr().out
    assert "3 runs: 2 stored, 1 to train" in printed
    assert "its job 4242_2 ended (FAILED) without a result" in printed
    assert e.submitted == 1 and [j for _, j, _ in e.pending] == ["4243"]  # an array of one
    assert len(list(spool.glob("sbatch-*.sh"))) == 2

    paths = submitit.core.utils.JobPaths(root / ".jobs" / "submitit", "4243")
    submitit.core.utils.DelayedSubmission.load(paths.submitted_pickle).result()
    options = cluster.ClusterOptions("slurm", partition="gpu")
    results = sweeps.run_all(cfgs, root=root, executor=options)  # every result is in
    assert [r.status for r in results] == ["complete"] * 3
    assert not list((root / ".jobs").glob("*.json"))
    local_root = tmp_path / "local"
    sweeps.run_all(cfgs, root=local_root, workers=1)
    assert histories(cfgs, root) == histories(cfgs, local_root)


def test_options_refuse_bad_values_naming_them():
    env = {"PAPERLIB_EXECUTOR": "local", "PAPERLIB_TIME_LIMIT": "2:30:00"}
    assert cluster.from_env(env).time_limit == 150
    assert cluster.from_env({}) is None and cluster.from_env({"PAPERLIB_EXECUTOR": "pool"}) is None
    for env, match in [
        ({"PAPERLIB_EXECUTOR": "kubernetes"}, "executor='kubernetes' is not allowed"),
        ({"PAPERLIB_EXECUTOR": "local", "PAPERLIB_TIME_LIMIT": "soon"}, "time_limit='soon'"),
        ({"PAPERLIB_EXECUTOR": "local", "PAPERLIB_ARRAY_PARALLELISM": "0"},
         "array_parallelism=0 is not allowed"),
        ({"PAPERLIB_EXECUTOR": "local", "PAPERLIB_GPUS_PER_JOB": "two"},
         "PAPERLIB_GPUS_PER_JOB='two'"),
        ({"PAPERLIB_EXECUTOR": "local", "PAPERLIB_PARTITION": "gpu"}, "Slurm options"),
        ({"PAPERLIB_PARTITION": "gpu"}, "PAPERLIB_PARTITION set without"),
        ({"PAPERLIB_EXECUTOR": "local", "PAPERLIB_NPROC_PER_RUN": "2",
          "PAPERLIB_GPUS_PER_JOB": "1"}, "as many GPUs as ranks"),
    ]:
        with pytest.raises(ValueError, match=match):
            cluster.from_env(env)
    for value in ("0", "0:0", "x:10", "1:2:3:4", "-5"):
        with pytest.raises(ValueError, match="time_limit"):
            cluster.parse_time_limit(value)
    # sbatch --time's forms: two numbers are minutes:seconds, seconds round up
    for value, minutes in (("90", 90), ("2:30", 3), ("24:00:00", 1440), ("1-2", 1560),
                           ("1-2:30", 1590), ("1-00:00:00", 1440)):
        assert cluster.parse_time_limit(value) == minutes, value


def test_figures_refuses_bad_cluster_flags_before_anything_runs(tmp_path, capsys):
    from paperlib.__main__ import main

    for args, message in [(["--executor", "local", "--time-limit", "3 days"],
                           "time_limit='3 days'"),
                          (["--executor", "local", "--partition", "gpu"], "Slurm options"),
                          (["--executor", "slurm", "--nproc-per-run", "0"], "nproc_per_run")]:
        assert main(["figures", "--preset", "smoke", "--store", str(tmp_path / "s"),
                     *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err  # one error line
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERLIB_")}
    env["PATH"] = "/usr/bin:/bin"  # no Slurm here
    p = subprocess.run([sys.executable, "-m", "paperlib", "figures", "--preset", "smoke",
                        "--store", str(tmp_path / "s"), "--executor", "slurm"], cwd=REPO,
                       env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "needs Slurm's sbatch and srun" in p.stderr, p.stderr
    assert not (tmp_path / "s").exists()
    assert not any(k.startswith("PAPERLIB_EXEC") for k in os.environ)


CIFAR = os.environ.get("CIFAR10_PATH")


@pytest.mark.skipif(not CIFAR, reason="needs CIFAR-10 (set CIFAR10_PATH)")
def test_make_figures_with_the_local_executor_trains_then_replots_from_the_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERLIB_")}
    env["CIFAR10_PATH"] = str(Path(CIFAR).resolve())
    store, out = tmp_path / "store", tmp_path / "out"
    cmd = [sys.executable, "-m", "paperlib", "figures", "--preset", "smoke", "--only",
           "figA-sampling", "--store", str(store), "--out", str(out)]
    p = subprocess.run([*cmd, "--executor", "local", "--array-parallelism", "2"], cwd=REPO,
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "wall time: not estimated (submitit executor)" in p.stdout
    assert (out / "figures" / "figA-sampling.png").exists()
    p = subprocess.run(cmd, cwd=REPO, env={**env, "PAPERLIB_NO_TRAIN": "1"},
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0 result(s) computed" in p.stdout
