"""Fixtures for process tests: meshd daemons in short temp dirs, always killed afterwards."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.process.harness import MeshdProcess, short_tmp_dir


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets a fixture's teardown know whether the test failed (item.rep_call.failed).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def meshd_proc(request) -> Iterator[Callable[..., MeshdProcess]]:
    """A factory of unstarted `MeshdProcess`es, each in its own short temp dir.

    Every process tree it made is SIGKILLed at teardown; on failure each run's log tail is
    printed (pytest shows it under "Captured stderr teardown")."""
    made: list[MeshdProcess] = []

    def make(**kwargs) -> MeshdProcess:
        proc = MeshdProcess(root=short_tmp_dir(), **kwargs)
        made.append(proc)
        return proc

    yield make

    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    for proc in made:
        proc.kill_tree()
        if failed:
            for run in range(len(proc.logs)):
                sys.stderr.write(f"--- meshd {proc.root} run {run + 1} (last 60 lines) ---\n"
                                 f"{proc.log_tail(60, run)}\n")
        shutil.rmtree(proc.root, ignore_errors=True)
