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
