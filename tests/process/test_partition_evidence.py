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

from tests.process.harness import MeshdProcess, api, async_poll, clean_env, register_agents
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
        cut = await register_agents(session, proc, ("beating-a", "beating-b"))
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


async def test_a_partition_run_ends_at_partition_max_wait_listing_the_lost_agent(meshd_proc):
    """Two of three heartbeating agents cut off; one comes back, one never does: the run
    resolves after partition_max_wait with the other listed as lost, its health offline."""
    from tests.process.test_protocols import Heartbeats, register, wait_run

    proc = meshd_proc().start((*SHORT[:-1], "6s"))
    await asyncio.to_thread(proc.wait_healthy)
    async with aiohttp.ClientSession() as session:
        back, lost, stays = [await register(session, proc, f"max-wait-{n}")
                             for n in ("back", "lost", "stays")]
    beats = Heartbeats(proc, [back, lost, stays]).start()
    try:
        async def worker_up_long_enough() -> bool:
            status = await asyncio.to_thread(proc.status)
            return (status["worker_uptime_s"] or 0) > 1.5 * TIMEOUT

        await async_poll(worker_up_long_enough, 10, "the worker up past heartbeat_timeout")
        beats.paused |= {back, lost}
        run = await wait_run(proc, protocol="network_partition", until="recorded")
        assert sorted(run["context"]["agents"]) == sorted([back, lost]), run["context"]
        beats.paused.discard(back)
        run = await wait_run(proc, run_id=run["id"], timeout=30)
    finally:
        await beats.close()

    assert run["outcome"] == "completed" and run["state"] == "resolved", run
    assert [s["outcome"] for s in run["steps"]] == ["ok"] * 4, run["steps"]
    wait_step = run["steps"][1]
    assert wait_step["detail"].startswith("deadline partition_max_wait (6 s) passed"), wait_step
    assert run["context"]["lost"] == [lost], run["context"]
    assert list(run["context"]["returned"]) == [back], run["context"]

    async def resolved() -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as session:
            status, event = await api(session, proc, "GET", f"/api/catastrophe/{run['event_id']}")
        assert status == 200, event
        return event if event["status"] == "resolved" else None

    event = await async_poll(resolved, 10, "the event resolved in the database")
    assert f"lost after 6 s (health offline): {lost}" in event["description"], event
    assert f"{back} away" in event["description"], event
    [stored] = event["protocolRuns"]
    assert [s["outcome"] for s in stored["steps"]] == ["ok"] * 4, stored
    async with aiohttp.ClientSession() as session:
        status, health = await api(session, proc, "GET", f"/api/agents/{lost}/health")
    assert status == 200 and health["status"] == "offline", health
    assert await events(proc, "?status=open") == []


async def test_a_crash_drill_states_only_true_facts(meshd_proc):
    """`meshd protocol run server_crash_recovery` with nothing crashed: a drill, and said so."""
    from tests.process.test_protocols import Listener, cli_json, wait_run

    proc = meshd_proc().start(SHORT)
    await asyncio.to_thread(proc.wait_healthy)
    async with aiohttp.ClientSession() as session:  # a feature update: never "possibly related"
        status, body = await api(session, proc, "POST", "/api/updates", {
            "version": "1.2.0", "updateType": "feature", "title": "colours"})
        assert status == 200, body
    listener = Listener(proc).start()
    try:
        await listener.wait_connected()
        started = await cli_json(proc, "protocol", "run", "server_crash_recovery")
        assert started["drill"] is True, started
        run = await wait_run(proc, run_id=started["id"])
        await listener.wait_state(run["id"], "recovered")
    finally:
        await listener.close()

    assert run["outcome"] == "completed", run
    details = {s["state"]: s["detail"] for s in run["steps"]}
    assert details["restarted"] == "agents told: this is a drill; nothing crashed", details
    assert details["database_checked"] == "drill: no crash, no update reviewed", details
    assert (await asyncio.to_thread(proc.status))["restarts"] == 0
    alerts = [f for f in listener.alerts() if f.get("run", {}).get("id") == run["id"]]
    assert alerts and all(f["run"].get("drill") is True for f in alerts), alerts
    assert all(f["catastrophe"]["title"].startswith("Drill: ") for f in alerts), alerts
    assert not [f for f in listener.alerts() if "suspectUpdate" in f["catastrophe"]]
    assert not [f for f in listener.alerts() if "time(s)" in str(f)], listener.alerts()
