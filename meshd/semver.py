"""Semantic version comparison (MAJOR.MINOR.PATCH[-pre][+build]), as agents report versions.

A few lines instead of a dependency: numeric parts compare as numbers, a pre-release sorts
before its release, build metadata is ignored, missing parts count as 0.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+\S*)?\s*$")


def parse(text: str) -> tuple[tuple[int, int, int], tuple] | None:
    m = _VERSION.match(str(text))
    if not m:
        return None
    core = tuple(int(x or 0) for x in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        return core, (1,)  # a release sorts after any pre-release of it
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return core, (0, parts)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1; an unparseable version sorts below every valid one."""
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return (pa is not None) - (pb is not None)
    return (pa > pb) - (pa < pb)


def is_valid(text: str) -> bool:
    return parse(text) is not None
