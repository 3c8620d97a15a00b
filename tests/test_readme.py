"""The README's Python snippet (load CIFAR-10, build every model) runs as written."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(not os.environ.get("CIFAR10_PATH"), reason="needs CIFAR10_PATH")
def test_readme_snippet_runs(capsys):
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(50000, 3, 32, 32)" in out.replace("torch.Size([", "(").replace("])", ")")
    errors = {line.split()[0] + " " + line.split()[1]: float(line.split()[2])
              for line in out.splitlines()[1:]}
    assert all(v <= 1e-5 for k, v in errors.items() if not k.startswith("resnet"))
    assert errors["resnet32 bn"] > 1e-3


def test_readme_figure_and_claims_tables_are_the_generated_ones():
    """`make figures` writes both tables into the README; a stale copy fails here."""
    from paperlib.docs import read_section
    from paperlib.notebooks import claims_markdown, figure_table

    assert read_section(README, "table", prefix="figures") == figure_table()
    assert read_section(README, "claims", prefix="figures") == claims_markdown()


def _run_section(prefix: str, count: int) -> str:
    """Run the ``count`` Python blocks of the README section ``<prefix>:examples`` in order, in
    one namespace, on one torch thread; return what they printed."""
    import io
    from contextlib import redirect_stdout

    import torch

    from paperlib.docs import read_section

    section = read_section(README, "examples", prefix=prefix)
    assert section is not None, f"README lost its {prefix}:examples markers"
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == count
    assert "paperlib._" not in section  # public names only
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        namespace: dict = {}
        with redirect_stdout(out):
            for i, block in enumerate(blocks):
                exec(compile(block, f"README.md ({prefix} block {i + 1})", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


def test_readme_own_training_loop_examples_run():
    """Every Python block of "Use it in your own training loop" runs as written, in order, on a
    model and DataLoader paperlib does not define, and prints what the text says it does."""
    import math

    lines = _run_section("api", 4).splitlines()
    nsr = re.search(r"N/G = ([\d.]+) ± ([\d.]+); LSR fails beyond B\* ≈ (\d+)", lines[0])
    assert nsr, lines
    n_over_g, se, b_star = float(nsr[1]), float(nsr[2]), int(nsr[3])
    assert n_over_g > 0 and 0 < se < n_over_g
    assert abs(b_star - 32 * 2 * (1 + n_over_g)) < 1  # B·C²(1 + N/G), N/G printed to 0.005
    accs = [float(re.search(r"train accuracy ([\d.]+)%", line)[1]) for line in lines[1:3]]
    assert lines[1].startswith("SVAG l=1") and lines[2].startswith("SVAG l=4")
    assert all(a > 50 for a in accs)  # 4 classes: chance is 25 %
    assert abs(accs[0] - accs[1]) < 10  # small G/N: l = 1 and l = 4 end close
    ngd = re.search(r"NGD: train loss ([\d.]+), accuracy ([\d.]+)%", lines[3])
    assert ngd and math.isfinite(float(ngd[1])) and float(ngd[2]) > 50


def test_readme_monitor_examples_run(tmp_path, monkeypatch):
    """Every Python block of the NoiseMonitor section runs as written, in order (plain loop with
    accumulation, Lightning, Hugging Face), and what it prints and logs is consistent."""
    import io
    import math
    from contextlib import redirect_stdout

    import pandas as pd

    from paperlib.__main__ import main

    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # the blocks write noise-log/, noise-lightning/, hf-out/
    text = _run_section("monitor", 3)
    m = re.search(r"G/N = ([\d.]+) ± ([\d.]+); B\* = (\d+) ± (\d+), B_simple = (\d+); "
                  r"constant LR: True", text)
    assert m, text
    g_over_n, se, b_star = float(m[1]), float(m[2]), int(m[3])
    assert 0 < se < g_over_n
    assert abs(b_star - 64 * 2 * (1 + 1 / g_over_n)) <= 0.01 * b_star  # G/N printed to 3 digits
    log = pd.read_csv(tmp_path / "noise-log" / "noise.csv")
    assert len(log) == 160 and (log["sources"] == 4).all() and log["N"].gt(0).all()
    for name in ("Lightning", "Hugging Face"):
        m = re.search(rf"{name}: (\d+) steps, B\* = (\d+)", text)
        assert m and int(m[1]) == 3 * 16 and 64 < int(m[2]) < 1e6, (name, text)
    assert len(pd.read_csv(tmp_path / "noise-lightning" / "noise.csv")) == 48
    assert len(pd.read_csv(tmp_path / "hf-out" / "noise" / "noise.csv")) == 48
    # attach() puts the callback ahead of the console printer: its 3 training logs (every 16
    # of the 48 steps) carry noise/*
    printed = [line for line in text.splitlines() if line.startswith("{'loss'")]
    assert len(printed) == 3 and all("'noise/B_star'" in line for line in printed), text
    with redirect_stdout(io.StringIO()) as cli:
        assert main(["predict-lsr", "noise-log/noise.csv", "--batch-size", "64"]) == 0
    assert math.isfinite(float(cli.getvalue().split("B* = B·C²(1 + N/G) = ")[1].split()[0]))
def test_docs_cite_only_what_is_in_the_repository():
    """The README, notebooks, code and tests used to send readers to files outside the
    repository; what a reader needs from them is said in the repository's own words."""
    import subprocess

    outside = ("CPU-" + "PROBE", "FIGURES" + ".md", "shared/" + "paper")
    files = subprocess.run(["git", "ls-files"], cwd=README.parent, capture_output=True,
                           text=True, check=True).stdout.split()
    texts = [f for f in files if f.endswith((".md", ".py", ".ipynb", ".sh", ".toml", ".yml"))
             or f == "Makefile"]
    cited = [(f, name) for f in texts for name in outside
             if name in (README.parent / f).read_text(errors="replace")]
    assert not cited
