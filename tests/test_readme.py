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
