"""docs/architecture.md stays true to the tree: every source path it names exists, and every
file listed under a folder of its tree drawing is in that folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()

# meshd/x/y.py, tests/..., also brace lists such as meshd/recovery/{crash,corruption}.py
PATH = re.compile(r"\b((?:meshd|tests|docs|bench|protocols)/[\w/.]*?)(\{[\w,\s]+\})?(\.py|\.md|/)"
                  r"(?![\w/{])")


def named_paths() -> set[str]:
    paths = set()
    for m in PATH.finditer(DOC):
        stem, braces, ending = m.group(1), m.group(2), m.group(3)
        if braces:
            for name in re.split(r"[,\s]+", braces.strip("{}")):
                if name:
                    paths.add(f"{stem}{name}{ending}")
        else:
            paths.add(stem + ending)
    return paths


def tree_entries() -> list[tuple[str, str]]:
    """(folder, file) for each file named on the lines under a folder in "The tree"."""
    block = DOC.split("## The tree", 1)[1].split("```")[1]
    entries, folder = [], None
    for line in block.splitlines():
        head = re.match(r"^(meshd/[\w/]*/)\s", line + " ")
        if head:
            folder = head.group(1)
        elif re.match(r"^meshd/", line):
            folder = None  # a top-level module line
        if folder is None:
            continue
        rest = line[len(folder):] if line.startswith(folder) else line
        # File names at the start of an indented entry, "a.py, b.py" lists included.
        listed = re.match(r"^\s+((?:[\w]+\.py(?:,\s*)?)+)", rest)
        if listed:
            entries += [(folder, n) for n in re.findall(r"[\w]+\.py", listed.group(1))]
    return entries


def test_the_doc_names_paths_and_tree_entries():
    """A parser that found nothing would make the checks below pass on any doc."""
    assert {"meshd/supervisor/loop.py", "meshd/store/base.py",
            "meshd/recovery/partition.py"} <= named_paths()
    assert ("meshd/supervisor/", "child.py") in tree_entries()
    assert ("meshd/supervisor/", "alerts.py") in tree_entries()


def test_every_path_the_architecture_names_exists():
    missing = sorted(p for p in named_paths() if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_file_in_the_tree_drawing_exists():
    missing = sorted(f + name for f, name in tree_entries() if not (ROOT / f / name).exists())
    assert not missing, f"the tree in docs/architecture.md lists missing files: {missing}"
