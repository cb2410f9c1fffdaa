"""Partition detection from evidence, against a real meshd with short timings.

The README quick start registers agents with curl that never heartbeat. Kept running for ten
heartbeat timeouts, meshd marks them offline (their health says so) but opens no event: agents
that never were online cannot be cut off together. Then two agents that do heartbeat stop at
once, in the same daemon: that is a partition, so the detector is shown to be working.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.process.harness import MeshdProcess, api, async_poll, clean_env
from tests.process.test_readme_blocks import runnable_shell_blocks

pytestmark = pytest.mark.process

DEFAULT_KEY = "openclaw-mesh-default-key"
TIMEOUT = 1.0  # heartbeat_timeout, seconds
SHORT = ("--access-log", "false", "--backup-interval", "1h", "--quick-check-interval", "1h",
         "--heartbeat-timeout", f"{TIMEOUT:g}s", "--offline-check-interval", "200ms",
         "--partition-window", "5s", "--partition-max-wait", "30s")


def quick_start(proc: MeshdProcess, name: str) -> None:
    """The README's curl block, as written (only the port and the agent's name change)."""
    block = next(b for b in runnable_shell_blocks() if "/api/agents/register" in b)
    code = block.replace("localhost:4000", f"localhost:{proc.port}").replace("DuckBot", name)
    env = clean_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=proc.root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"agentId"' in done.stdout, done.stdout


async def events(proc: MeshdProcess, query: str = "") -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        status, rows = await api(session, proc, "GET", f"/api/catastrophe{query}")
    assert status == 200, rows
    return rows


async def test_agents_that_never_heartbeat_open_no_event_but_heartbeating_ones_do(meshd_proc):
    proc = meshd_proc(key=None).start(SHORT)  # the default key, as the quick start uses
    await asyncio.to_thread(proc.wait_healthy)
    proc.key = DEFAULT_KEY  # for this test's own requests
    for n in range(3):
        await asyncio.to_thread(quick_start, proc, f"DuckBot-{n}")

    async with aiohttp.ClientSession() as session:
        status, agents = await api(session, proc, "GET", "/api/agents")
        assert status == 200 and len(agents) == 3, agents
        quiet = [a["id"] for a in agents]
        ten_timeouts = time.monotonic() + 10 * TIMEOUT

        async def all_offline() -> bool:
            status, body = await api(session, proc, "GET", "/api/health/dashboard")
            assert status == 200, body
            return body["offline"] == 3

        # The detector did run: it marked them offline, together, within one check.
        await async_poll(all_offline, 10, "the three quiet agents marked offline")
        await asyncio.sleep(max(0.0, ten_timeouts - time.monotonic()))  # pacing: 10 timeouts
        assert await events(proc) == [], "agents that never heartbeat opened an event"
        assert not [e for e in proc.log_events() if e.get("event") == "partition.detected"]

        # The control: two agents that heartbeat, then both stop, are a partition.
        cut = []
        for name in ("beating-a", "beating-b"):
            status, body = await api(session, proc, "POST", "/api/agents/register",
                                     {"name": name})
            assert status == 200, body
            cut.append(body["agentId"])
        for _ in range(3):
            for agent_id in cut:
                status, body = await api(session, proc, "POST",
                                         f"/api/agents/{agent_id}/heartbeat")
                assert status == 200, body
            await asyncio.sleep(0.3)  # pacing: a heartbeat every 300 ms

    async def partition() -> dict[str, Any] | None:
        return next((e for e in await events(proc, "?status=open")
                     if e["event_type"] == "network_partition" and e["affectedAgents"]),
                    None)

    opened = await async_poll(partition, 15, "a network_partition event")
    assert sorted(opened["affectedAgents"]) == sorted(cut), (opened, quiet)
    assert not opened["title"].startswith("Drill"), opened  # detected, not a drill
    assert [e["event_type"] for e in await events(proc)] == ["network_partition"]
