"""The README's runnable code blocks, extracted and run as a newcomer would run them.

Every ```sh block that calls curl runs with bash (the quick start, with `meshd` on PATH as
after `make run`), and every ```python block runs with this interpreter, each against a real
meshd with the default key in a directory laid out as `make run` lays it out (./data,
./backups). Only the port changes. Synopses are fenced as ```text and are not run; the two
`make` commands are what this suite itself is run by.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess, clean_env

pytestmark = pytest.mark.process

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def runnable_shell_blocks() -> list[str]:
    return [body for body in blocks("sh") if not body.lstrip().startswith("make ")]


def test_readme_has_the_blocks_this_test_runs():
    # A README edit that drops or re-fences an example must not silently empty this test.
    assert any("curl" in body for body in runnable_shell_blocks())
    assert blocks("python")
    for body in runnable_shell_blocks():
        assert "curl" in body or "meshd" in body, f"unexpected sh block:\n{body}"


@pytest.fixture
def readme_meshd(meshd_proc) -> MeshdProcess:
    proc = meshd_proc(key=None).start(("--access-log", "false"))
    proc.wait_healthy()
    return proc


def run_block(proc: MeshdProcess, argv: list[str], code: str) -> subprocess.CompletedProcess:
    code = code.replace("localhost:4000", f"localhost:{proc.port}")
    env = clean_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    return subprocess.run([*argv, code], cwd=proc.root, env=env, capture_output=True,
                          text=True, timeout=60)


def test_quick_start_shell_blocks_run_as_written(readme_meshd):
    for body in runnable_shell_blocks():
        done = run_block(readme_meshd, ["bash", "-euo", "pipefail", "-c"], body)
        assert done.returncode == 0, f"block failed ({done.returncode}):\n{body}\n{done.stderr}"
        if "/api/agents/register" in body:
            assert '"agentId"' in done.stdout, done.stdout
            assert "DuckBot" in done.stdout
        if "meshd status" in body:
            assert "read-write" in done.stdout, done.stdout


def test_python_blocks_run_as_written(readme_meshd):
    for body in blocks("python"):
        done = run_block(readme_meshd, [sys.executable, "-c"], body)
        assert done.returncode == 0, f"block failed ({done.returncode}):\n{body}\n{done.stderr}"
        if "agent.send(" in body:
            assert "hello" in done.stdout, done.stdout
