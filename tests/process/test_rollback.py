"""The seed's roll-back, end to end against a real meshd: SDK agents on 2.0.0 after a breaking
update that requires it, one agent left on 1.0.0 (so the update is still enforced); the worker
is killed (kill -9); Server Crash Recovery withdraws the
update's enforcement, publishes an emergency update with `rollbackTo` 1.0.0, and resolves once
the agents, restarted on 1.0.0, report that version in their heartbeats."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from meshd.client import Backoff, MeshClient
from tests.process.harness import API_KEY, MeshdProcess, api, async_poll, meshd_cli
from tests.process.test_protocols import Listener, kill_worker, wait_run

pytestmark = pytest.mark.process

TIMINGS = ("--access-log", "false", "--backup-interval", "1h", "--quick-check-interval", "1h",
           "--update-grace", "1s", "--heartbeat-timeout", "30s", "--adoption-window", "5s",
           "--offline-check-interval", "300ms", "--crash-update-window", "5m")


def agent(proc: MeshdProcess, tag: str, version: str) -> MeshClient:
    return MeshClient(proc.url, API_KEY, f"rollback-{tag}", state_dir=proc.root / f"state-{tag}",
                      version=version, heartbeat_interval=0.3,
                      backoff=Backoff(base=0.1, cap=1.0), request_timeout=5.0)


async def send_as(session: aiohttp.ClientSession, proc: MeshdProcess, sender: str, to: str,
                  version: str) -> int:
    async with session.post(proc.url + "/api/messages",
                            json={"from": sender, "to": to, "content": "hi"},
                            headers={**proc.headers, "X-Agent-Version": version}) as resp:
        return resp.status


async def test_a_crash_after_a_breaking_update_rolls_agents_back(meshd_proc):
    proc = meshd_proc().start(TIMINGS)
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    session = aiohttp.ClientSession()
    try:
        await listener.wait_connected()
        status, stable = await api(session, proc, "POST", "/api/updates", {
            "version": "1.0.0", "updateType": "feature", "title": "stable"})
        assert status == 200, stable
        new = [agent(proc, tag, "2.0.0") for tag in ("a", "b")]
        behind = agent(proc, "c", "1.0.0")  # never adopts: the update stays enforced
        for client in (*new, behind):
            await client.start()
        ids = [behind.agent_id, new[0].agent_id]
        status, breaking = await api(session, proc, "POST", "/api/updates", {
            "version": "2.0.0", "updateType": "api", "title": "new wire format",
            "breakingChange": True, "requiredVersion": "2.0.0"})
        assert status == 200, breaking

        async def refused() -> bool:  # enforcement is on: an agent on 1.0.0 gets 426
            return await send_as(session, proc, ids[0], ids[1], "1.0.0") == 426

        await async_poll(refused, 15, "426 for an agent below 2.0.0")

        await kill_worker(proc)
        run = await wait_run(proc, protocol="server_crash_recovery", until="rolled_back",
                             timeout=30)

        def rollback_frame() -> dict[str, Any] | None:
            return next((f for f in listener.frames if f.get("type") == "system_update"
                         and f["update"].get("rollbackTo")), None)

        frame = await async_poll(rollback_frame, 15, "the roll-back update on the WebSocket")
        update = frame["update"]
        assert (update["rollbackTo"], update["version"], update["updateType"],
                update["breakingChange"]) == ("1.0.0", "1.0.0", "emergency", False), update

        async def withdrawn() -> bool:  # enforcement withdrawn: 1.0.0 is served again
            return await send_as(session, proc, ids[0], ids[1], "1.0.0") == 200

        await async_poll(withdrawn, 15, "no 426 once enforcement is withdrawn")

        # The agents go back to 1.0.0 (restarted with the same state: the same ids).
        for client in new:
            await client.close()
        old = [agent(proc, tag, "1.0.0") for tag in ("a", "b")]
        for client in old:
            await client.start()
        assert [c.agent_id for c in old] == [c.agent_id for c in new]
        run = await wait_run(proc, run_id=run["id"], timeout=30)
        for client in (*old, behind):
            await client.close()
    finally:
        await session.close()
        await listener.close()

    assert run["outcome"] == "completed", run
    steps = {s["state"]: s for s in run["steps"]}
    assert [s["outcome"] for s in run["steps"]] == ["ok"] * len(run["steps"]), run["steps"]
    review = steps["database_checked"]["detail"]
    assert f"update {breaking['updateId']} (2.0.0) named possibly related" in review, review
    assert "breaking: roll-back to 1.0.0" in review, review
    assert steps["updates_reviewed"]["detail"].startswith(
        f"enforcement of {breaking['updateId']} withdrawn; emergency update"), steps
    assert steps["rolled_back"]["detail"] == "3 active agents report 1.0.0", steps
    async def resolved() -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as session:
            status, event = await api(session, proc, "GET",
                                      f"/api/catastrophe/{run['event_id']}")
        assert status == 200, event
        return event if event["status"] == "resolved" else None

    event = await async_poll(resolved, 10, "the event resolved in the database")
    async with aiohttp.ClientSession() as session:
        assert "roll-back adopted: 3 active agents report 1.0.0" in event["description"], event
        status, row = await api(session, proc, "GET",
                                f"/api/updates/{update['id']}")
        assert status == 200 and row["update_type"] == "emergency", row
        # A roll-back update never triggers one: no second breaking run, no second roll-back.
        status, rows = await api(session, proc, "GET", "/api/updates")
        assert sorted(r["version"] for r in rows) == ["1.0.0", "1.0.0", "2.0.0"], rows
    assert stable["updateId"] != update["id"]


async def test_an_operator_rolls_back_by_hand(meshd_proc):
    """`meshd protocol run server_crash_recovery --rollback-to 1.0.0`: real, not a drill; with
    no agent active the wait ends at adoption_max_wait and the event says so."""
    from tests.process.test_protocols import cli_json

    proc = meshd_proc().start((*TIMINGS, "--adoption-max-wait", "2s"))
    await asyncio.to_thread(proc.wait_healthy)
    async with aiohttp.ClientSession() as session:
        status, breaking = await api(session, proc, "POST", "/api/updates", {
            "version": "3.0.0", "updateType": "api", "title": "v3",
            "breakingChange": True, "requiredVersion": "3.0.0"})
        assert status == 200, breaking
    done = await asyncio.to_thread(
        meshd_cli, proc,
        "protocol", "run", "server_crash_recovery", "--rollback-to", "not-a-version", "--json")
    assert done.returncode != 0 and "semantic version" in done.stderr, done.stderr
    started = await cli_json(proc, "protocol", "run", "server_crash_recovery",
                             "--rollback-to", "2.5.0")
    assert started["drill"] is False, started
    run = await wait_run(proc, run_id=started["id"], timeout=30)
    assert run["outcome"] == "completed", run
    steps = {s["state"]: s["detail"] for s in run["steps"]}
    assert steps["database_checked"] == (
        f"operator roll-back of update {breaking['updateId']} (3.0.0) to 2.5.0"), steps
    assert steps["rolled_back"] == ("deadline adoption_max_wait (2 s) passed: not every "
                                    "active agent reports 2.5.0"), steps

    async def rollback_row() -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as session:
            status, rows = await api(session, proc, "GET", "/api/updates")
        assert status == 200, rows
        return next((r for r in rows if r["update_type"] == "emergency"), None)

    row = await async_poll(rollback_row, 10, "the roll-back update stored")
    assert row["version"] == "2.5.0" and not row["breaking_change"], row
