"""The tree's layers, checked on the source: the supervisor process never loads the API or the
worker, the API never reaches into the supervisor or the worker, and only store/ (and the agent
SDK's own local files in client/) touches SQLite."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "meshd"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module `module` imports anywhere in its source (functions and TYPE_CHECKING
    blocks included: a lazy import is still a dependency)."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against this package
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if f"{base}.{alias.name}" in MODULES)
    return frozenset(found)


def reachable(start: str) -> set[str]:
    """The meshd modules `start` loads, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for name in direct_imports(todo.pop()):
            if name in MODULES and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules_of(package: str) -> list[str]:
    return sorted(m for m in MODULES if in_package(m, package))


def test_the_walk_sees_real_imports():
    """A walk that found nothing would pass every rule below."""
    assert "meshd.supervisor.loop" in MODULES and "meshd.api.app" in MODULES
    assert "meshd.recovery.engine" in reachable("meshd.supervisor.loop")
    assert "meshd.api.ws" in reachable("meshd.worker.serve")


@pytest.mark.parametrize("module", modules_of("meshd.supervisor"))
def test_the_supervisor_never_loads_the_api_or_the_worker(module):
    bad = sorted(m for m in reachable(module)
                 if in_package(m, "meshd.api") or in_package(m, "meshd.worker"))
    assert not bad, f"{module} loads {bad}"


@pytest.mark.parametrize("module", modules_of("meshd.api"))
def test_the_api_never_imports_the_supervisor_or_the_worker(module):
    bad = sorted(m for m in direct_imports(module)
                 if in_package(m, "meshd.supervisor") or in_package(m, "meshd.worker"))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_store_and_the_sdk_queue_touch_sqlite(module):
    if in_package(module, "meshd.store") or in_package(module, "meshd.client"):
        return
    assert "sqlite3" not in direct_imports(module), f"{module} imports sqlite3"


PG_DRIVERS = ("psycopg", "psycopg_pool")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_store_talks_to_postgresql(module):
    if in_package(module, "meshd.store"):
        return
    bad = sorted(m for m in direct_imports(module) if m.split(".")[0] in PG_DRIVERS)
    assert not bad, f"{module} imports {bad}"
