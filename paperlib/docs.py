"""Generated sections of the project's markdown files (README, BENCHMARKS.md): the text between
``<!-- <prefix>:<section> start -->`` and ``<!-- <prefix>:<section> end -->`` is replaced, so a
table there is always the one the code produces."""

from __future__ import annotations

from pathlib import Path


def markers(section: str, prefix: str = "bench") -> tuple[str, str]:
    return f"<!-- {prefix}:{section} start -->", f"<!-- {prefix}:{section} end -->"


def read_section(path: Path, section: str, prefix: str = "bench") -> str | None:
    """The text between the markers, or None when the file or the markers are missing."""
    start, end = markers(section, prefix)
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text:
        return None
    return text[text.index(start) + len(start):text.index(end)].strip("\n")


def update_section(path: Path, section: str, text: str, prefix: str = "bench") -> None:
    """Replace (or append) the block between the section's markers."""
    start, end = markers(section, prefix)
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    if new != old:  # an unchanged table leaves the file (and its timestamp) alone
        path.write_text(new)
