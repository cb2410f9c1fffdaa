"""The four catastrophe protocols, each triggered for real against a running `meshd run`.

For every protocol: the recorded transitions in order (run file, `meshd protocol status`, and
the `protocol_runs` / `protocol_steps` rows once meshd has stopped), the `catastrophe_alert`
frames a real WebSocket client received, and the final state of the `catastrophe_events` row.
Also: a Database Corruption run resumed after a kill -9 of the supervisor, operator control
(CLI and admin API), and the operator alert hooks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sqlite3
import time
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshd.recovery.protocols import PROTOCOLS
from tests.process.harness import (
    API_KEY,
    MeshdProcess,
    WriteLoad,
    api,
    async_poll,
    free_port,
    meshd_cli,
)
from tests.process.harness import register_agent as register

pytestmark = pytest.mark.process

# No scheduled backup or quick_check gets in the way of a test.
QUIET = ("--access-log", "false", "--backup-interval", "1h", "--quick-check-interval", "1h")


def states(protocol: str) -> list[str]:
    return list(PROTOCOLS[protocol].states)


# -- the daemon from outside: CLI, run files, rows -------------------------------------------

async def cli_json(proc: MeshdProcess, *args: str) -> Any:
    done = await asyncio.to_thread(meshd_cli, proc, *args, "--json")
    assert done.returncode == 0, f"meshd {' '.join(args)} exited {done.returncode}: " \
                                 f"{done.stderr}"
    return json.loads(done.stdout)


def run_files(proc: MeshdProcess) -> list[dict[str, Any]]:
    """The protocol runs the supervisor persisted under data/protocols/, oldest first."""
    runs = []
    for path in (proc.data_dir / "protocols").glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            runs.append(json.loads(path.read_bytes()))
    return sorted(runs, key=lambda r: r["started_at"])


async def wait_run(proc: MeshdProcess, *, protocol: str | None = None,
                   run_id: str | None = None, timeout: float = 20,
                   until: str = "finished") -> dict[str, Any]:
    """Poll the run files for the run (by id, or the only run of `protocol`) until it has
    finished (any outcome but running), or until it is in state `until`."""
    def find() -> dict[str, Any] | None:
        for run in run_files(proc):
            if (run_id and run["id"] != run_id) or (protocol and run["protocol"] != protocol):
                continue
            if (until == "finished" and run["outcome"] != "running") or run["state"] == until:
                return run
        return None

    return await async_poll(find, timeout, f"run {run_id or protocol} {until}", interval=0.05)


def assert_walked(run: dict[str, Any], protocol: str) -> None:
    """Each state of the spec in order, one ok step each, ending completed in its done state."""
    spec = states(protocol)
    steps = run["steps"]
    assert run["protocol"] == protocol, run
    assert [s["state"] for s in steps] == spec[:-1], steps
    assert [s["next_state"] for s in steps] == spec[1:], steps
    assert all(s["outcome"] == "ok" and s["finished_at"] for s in steps), steps
    assert run["state"] == spec[-1] and run["outcome"] == "completed", run


def assert_resolved(event: dict[str, Any], event_type: str, protocol: str) -> None:
    assert event["event_type"] == event_type, event
    assert event["recovery_protocol"] == protocol, event
    assert event["status"] == "resolved", event
    assert event["resolved_at"], event


async def get_event(proc: MeshdProcess, event_id: str) -> dict[str, Any] | None:
    """GET /api/catastrophe/{id}; None while it is not there (or the API does not answer)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            status, body = await api(session, proc, "GET", f"/api/catastrophe/{event_id}")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    return body if status == 200 else None


async def wait_event(proc: MeshdProcess, event_id: str, status: str = "resolved",
                     timeout: float = 15) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        event = await get_event(proc, event_id)
        return event if event and event["status"] == status else None

    return await async_poll(check, timeout, f"event {event_id} {status} in the API", 0.1)


def stop(proc: MeshdProcess) -> None:
    proc.signal(signal.SIGTERM)
    code = proc.wait_exit(20)
    assert code == 0, f"exit code {code}:\n{proc.log_tail()}"


def stored(proc: MeshdProcess, event_id: str
           ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The catastrophe_events row, its protocol_runs row and protocol_steps, read from the
    database file of the stopped daemon."""
    conn = sqlite3.connect(f"file:{proc.database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        event = conn.execute("SELECT * FROM catastrophe_events WHERE id = ?",
                             (event_id,)).fetchone()
        assert event is not None, f"no catastrophe_events row {event_id}"
        run = conn.execute("SELECT * FROM protocol_runs WHERE event_id = ?",
                           (event_id,)).fetchone()
        assert run is not None, f"no protocol_runs row for event {event_id}"
        steps = conn.execute("SELECT * FROM protocol_steps WHERE run_id = ? ORDER BY seq",
                             (run["id"],)).fetchall()
        return dict(event), dict(run), [dict(s) for s in steps]
    finally:
        conn.close()


async def check_recorded(proc: MeshdProcess, run: dict[str, Any], event_type: str
                         ) -> dict[str, Any]:
    """(a) and (c) through every view: the run file, `meshd protocol status RUN`, the API's
    event, and, after a clean stop, the database rows. Stops meshd; returns the event row."""
    protocol = run["protocol"]
    assert_walked(run, protocol)
    assert_walked(await cli_json(proc, "protocol", "status", run["id"]), protocol)
    event = await wait_event(proc, run["event_id"])  # flushed to the database, with the run
    assert_resolved(event, event_type, protocol)
    await asyncio.to_thread(stop, proc)
    row, run_row, steps = stored(proc, run["event_id"])
    assert_resolved(row, event_type, protocol)
    assert run_row["id"] == run["id"] and run_row["outcome"] == "completed", run_row
    assert run_row["state"] == states(protocol)[-1], run_row
    assert_walked({**run_row, "steps": steps}, protocol)
    return row


# -- a WebSocket client that stays connected -------------------------------------------------

class Listener:
    """A real WebSocket client on /ws that reconnects at once whenever its connection drops
    (a worker killed or restarted) and keeps every frame it got, in order."""

    def __init__(self, proc: MeshdProcess) -> None:
        self.url = proc.url.replace("http", "ws", 1) + "/ws"
        self.frames: list[dict[str, Any]] = []
        self.connections = 0
        self._task: asyncio.Task | None = None

    def start(self) -> Listener:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.ws_connect(self.url) as ws:
                        async for msg in ws:
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                continue
                            frame = msg.json()
                            if frame.get("type") == "connected":
                                self.connections += 1
                            self.frames.append(frame)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                    pass  # the worker is gone, or the supervisor answers 503 meanwhile
                await asyncio.sleep(0.02)

    async def wait_connected(self, count: int = 1, timeout: float = 10) -> None:
        await async_poll(lambda: self.connections >= count, timeout,
                         f"WebSocket connection #{count}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def alerts(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "catastrophe_alert"]

    def run_states(self, run_id: str) -> list[str]:
        """The run states of the run's transition alerts, in the order they arrived."""
        return [f["run"]["state"] for f in self.alerts()
                if (f.get("run") or {}).get("id") == run_id]

    async def wait_state(self, run_id: str, state: str, timeout: float = 10) -> list[str]:
        return await async_poll(lambda: state in self.run_states(run_id) and
                                self.run_states(run_id), timeout,
                                f"a catastrophe_alert of run {run_id} in state {state}")


def assert_in_order(got: list[str], expected: list[str]) -> None:
    """`got` lists some of `expected`, each once, in the same order."""
    assert len(got) == len(set(got)), got
    assert [s for s in expected if s in got] == got, (got, expected)


# -- agents ----------------------------------------------------------------------------------

class Heartbeats:
    """POST /api/agents/{id}/heartbeat for each agent every 300 ms, except paused ones."""

    def __init__(self, proc: MeshdProcess, agents: list[str]) -> None:
        self.proc = proc
        self.agents = agents
        self.paused: set[str] = set()
        self.failures: list[tuple[str, Any]] = []
        self.sent = 0
        self._task: asyncio.Task | None = None

    def start(self) -> Heartbeats:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                for agent in self.agents:
                    if agent in self.paused:
                        continue
                    try:
                        status, body = await api(session, self.proc, "POST",
                                                 f"/api/agents/{agent}/heartbeat", {})
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        self.failures.append((agent, exc))
                        continue
                    if status == 200:
                        self.sent += 1
                    else:
                        self.failures.append((agent, (status, body)))
                await asyncio.sleep(0.3)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- 1. Server Crash Recovery ----------------------------------------------------------------

CRASH = "server_crash_recovery"


async def kill_worker(proc: MeshdProcess) -> int:
    status = await asyncio.to_thread(proc.wait_serving)
    os.kill(status["worker_pid"], signal.SIGKILL)
    return status["worker_pid"]


async def test_server_crash_recovery_after_kill_9_of_the_worker(meshd_proc):
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    try:
        await listener.wait_connected()
        killed = await kill_worker(proc)
        run = await wait_run(proc, protocol=CRASH)
        await asyncio.to_thread(proc.wait_serving, killed)
        got = await listener.wait_state(run["id"], "recovered")
    finally:
        await listener.close()

    assert listener.connections >= 2  # it was connected to the restarted worker
    assert got == states(CRASH)[1:], got  # every transition, in order, over the WebSocket
    assert all(f["catastrophe"]["id"] == run["event_id"] for f in listener.alerts()
               if f.get("run")), listener.alerts()
    steps = {s["state"]: s["detail"] for s in run["steps"]}
    assert f"worker pid {killed} was killed by SIGKILL" in run["reason"], run["reason"]
    assert steps["announced"] == "quick_check ok", steps
    assert steps["database_checked"] == (
        "no breaking, api, schema or emergency update before the crash"), steps
    row = await check_recorded(proc, run, "server_down")
    assert row["severity"] == "major", row
    assert f"worker pid {killed}" in row["description"], row


async def test_a_crash_right_after_an_api_update_names_it_possibly_related(meshd_proc):
    """An `api` update before the crash is named; a later `feature` update, though newer, is
    not (it could not have broken the server)."""
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    try:
        await listener.wait_connected()
        async with aiohttp.ClientSession() as session:
            status, body = await api(session, proc, "POST", "/api/updates", {
                "version": "1.7.3", "updateType": "api", "title": "new router"})
            assert status == 200, body
            update_id = body["updateId"]
            status, feature = await api(session, proc, "POST", "/api/updates", {
                "version": "1.7.4", "updateType": "feature", "title": "new colours"})
        assert status == 200, feature
        await kill_worker(proc)
        run = await wait_run(proc, protocol=CRASH)
        await listener.wait_state(run["id"], "recovered")

        def suspect_alert() -> dict[str, Any] | None:
            return next((f for f in listener.alerts()
                         if (f["catastrophe"].get("suspectUpdate") or {}).get("id")
                         == update_id), None)

        alert = await async_poll(suspect_alert, 5, "an alert naming the suspect update")
    finally:
        await listener.close()

    assert alert["catastrophe"]["suspectUpdate"]["version"] == "1.7.3", alert
    assert alert["catastrophe"]["id"] == run["event_id"], alert
    assert f"possibly related update {update_id}" in alert["catastrophe"]["description"], alert
    assert feature["updateId"] not in alert["catastrophe"]["description"], alert
    assert run["context"]["suspect_update"]["id"] == update_id, run["context"]
    review = next(s for s in run["steps"] if s["state"] == "database_checked")
    assert f"update {update_id} (1.7.3) named possibly related" in review["detail"], review
    row = await check_recorded(proc, run, "server_down")
    assert f"possibly related update {update_id} (api, version 1.7.3" in row["description"], row


# -- 2. Database Corruption (an operator run on a healthy database) --------------------------

CORRUPTION = "database_corruption"
# Transitions made while no worker serves reach the alert hooks at once and the WebSocket once
# a worker is back, queued in order (each with its row in the events log).
WITHOUT_WORKER = {"stopped", "restored", "verified"}


async def agent_names(proc: MeshdProcess) -> set[str]:
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/api/agents")
    assert status == 200, body
    return {agent["name"] for agent in body}


async def test_database_corruption_run_by_the_operator_restores_and_loses_nothing(meshd_proc):
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    load = WriteLoad(proc, prefix=f"dc-{uuid.uuid4().hex[:6]}")
    try:
        async with load.running(writers=4):
            await listener.wait_connected()
            await async_poll(lambda: len(load.acked) >= 200, 20,
                             f"200 acknowledged writes (failures: {load.failures[:3]})")
            started = await cli_json(proc, "protocol", "run", CORRUPTION, "--reason", "drill")
            assert started["protocol"] == CORRUPTION and started["outcome"] == "running", started
            run = await wait_run(proc, run_id=started["id"], timeout=30)
            acked = len(load.acked)
            await async_poll(lambda: len(load.acked) >= acked + 50, 15,
                             "writes acknowledged again after the run")
            got = await listener.wait_state(run["id"], "done")
    finally:
        await listener.close()

    missing = set(load.acked) - await agent_names(proc)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"
    odd = [f for f in load.failures if isinstance(f[2], int) and f[2] != 503]
    assert not odd, f"failures other than 503 or a dropped connection: {odd[:5]}"
    assert got == states(CORRUPTION)[1:], got  # every transition, in order, once
    assert set(got) >= WITHOUT_WORKER
    assert run["reason"] == "drill", run
    restore = run["context"]["restore"]
    assert restore["replayed"] > 0, restore
    row = await check_recorded(proc, run, "db_corruption")
    assert row["severity"] == "critical", row
    assert "database_corruption completed" in row["resolution_notes"], row


# -- 3. Network Partition (server side) ------------------------------------------------------

PARTITION = "network_partition"
AWAY = re.compile(r"(?P<agent>[0-9a-f-]{36}) away (?P<away>\d+) s, synced (?P<synced>\d+) "
                  r"queued messages")


async def test_network_partition_opens_and_resolves_while_meshd_keeps_serving(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--heartbeat-timeout", "2s",
                               "--offline-check-interval", "200ms",
                               "--partition-window", "10s"))
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    async with aiohttp.ClientSession() as session:
        gone_a, gone_b, stays = [await register(session, proc, f"part-{n}")
                                 for n in ("a", "b", "c")]
    beats = Heartbeats(proc, [gone_a, gone_b, stays]).start()
    try:
        await listener.wait_connected()
        # Detection is suspended for one heartbeat_timeout after the worker started.
        async def worker_up_long_enough() -> bool:
            status = await asyncio.to_thread(proc.status)  # a CLI subprocess: off the loop
            return (status["worker_uptime_s"] or 0) > 2.5

        await async_poll(worker_up_long_enough, 10,
                         "the worker up for more than heartbeat_timeout")
        beats.paused |= {gone_a, gone_b}

        async def partition_event() -> dict[str, Any] | None:
            async with aiohttp.ClientSession() as session:
                status, rows = await api(session, proc, "GET", "/api/catastrophe")
            assert status == 200, rows
            return next((e for e in rows if e["event_type"] == "network_partition"
                         and e["affectedAgents"]), None)

        opened = await async_poll(partition_event, 15, "a network_partition event", 0.1)
        assert sorted(opened["affectedAgents"]) == sorted([gone_a, gone_b]), opened
        assert opened["status"] == "recovering", opened
        run = await wait_run(proc, protocol=PARTITION, until="recorded")
        assert run["event_id"] == opened["id"], run
        assert sorted(run["context"]["agents"]) == sorted([gone_a, gone_b]), run["context"]

        # Back: one of them delivers what it queued, then both heartbeat again.
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                status, body = await api(session, proc, "POST", "/api/messages", {
                    "from": gone_a, "to": stays, "content": f"queued {n}",
                    "clientId": f"q-{uuid.uuid4()}"})
                assert status == 200, body
        beats.paused.clear()
        run = await wait_run(proc, run_id=run["id"])
        got = await listener.wait_state(run["id"], "resolved")
    finally:
        await beats.close()
        await listener.close()

    assert not beats.failures, beats.failures[:5]  # meshd kept serving throughout
    assert got == states(PARTITION)[1:], got
    row = await check_recorded(proc, run, "network_partition")
    assert sorted(json.loads(row["affected_agents"])) == sorted([gone_a, gone_b]), row
    away = {m["agent"]: m for m in AWAY.finditer(row["description"])}
    assert set(away) == {gone_a, gone_b}, row["description"]
    assert int(away[gone_a]["synced"]) == 3 and int(away[gone_b]["synced"]) == 0, away
    assert all(int(m["away"]) >= 2 for m in away.values()), row["description"]
    summary = {s["agentId"]: s for s in run["context"]["summary"]}
    assert summary[gone_a]["syncedMessages"] == 3, summary


# -- 4. Breaking API Update ------------------------------------------------------------------

BREAKING = "breaking_api_update"


async def test_breaking_update_refuses_old_agents_until_they_upgrade(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--update-grace", "1s", "--heartbeat-timeout", "30s",
                               "--offline-check-interval", "500ms"))
    await asyncio.to_thread(proc.wait_healthy)
    listener = Listener(proc).start()
    async with aiohttp.ClientSession() as session:
        old, other = [await register(session, proc, f"brk-{n}") for n in ("old", "other")]
        ws = await session.ws_connect(proc.url.replace("http", "ws", 1) + f"/ws?agentId={old}")
        agent_frames: list[dict[str, Any]] = []

        async def read_agent_socket() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    agent_frames.append(msg.json())

        reader = asyncio.create_task(read_agent_socket())
        try:
            await listener.wait_connected()
            await async_poll(lambda: any(f["type"] == "connected" for f in agent_frames), 5,
                             "the old agent's WebSocket")
            status, body = await api(session, proc, "POST", "/api/updates", {
                "version": "2.0.0", "updateType": "breaking", "title": "v2 protocol",
                "breakingChange": True, "requiredVersion": "2.0.0",
                "announcement": "upgrade!"})
            assert status == 200, body
            update_id = body["updateId"]
            send = {"from": old, "to": other, "content": "hello"}

            async def refused() -> tuple[int, Any, dict] | None:
                async with session.post(proc.url + "/api/messages", json=send,
                                        headers=proc.headers) as resp:
                    body = json.loads(await resp.text())
                    return (resp.status, body, dict(resp.headers)) if resp.status != 200 \
                        else None

            code, problem, headers = await async_poll(refused, 10, "426 once the grace is over",
                                                      0.1)
            assert code == 426, (code, problem)
            assert headers.get("Upgrade") == "agent-mesh/2.0.0", headers
            assert problem["requiredVersion"] == "2.0.0", problem
            assert "agentVersion" in problem and problem["agentVersion"] is None, problem
            assert problem["upgradeInstructions"] == "upgrade!", problem
            assert problem["updateId"] == update_id, problem
            assert old in problem["error"] and "2.0.0" in problem["error"], problem
            async with session.post(proc.url + "/api/messages", json=send,
                                    headers={**proc.headers, "X-Agent-Version": "1.9.9"}
                                    ) as resp:
                assert resp.status == 426
                assert json.loads(await resp.text())["agentVersion"] == "1.9.9"

            # Its WebSocket is closed with 4426, after the upgrade_required frame.
            await asyncio.wait_for(reader, 10)
            assert ws.close_code == 4426, ws.close_code
            upgrade = [f for f in agent_frames if f["type"] == "upgrade_required"]
            assert upgrade and upgrade[0]["requiredVersion"] == "2.0.0", agent_frames

            # Registration, heartbeats and reads are never refused.
            status, _ = await api(session, proc, "POST", f"/api/agents/{old}/heartbeat", {})
            assert status == 200
            run = await wait_run(proc, protocol=BREAKING, until="enforcing")
            assert run["outcome"] == "running", run

            for agent in (old, other):
                status, body = await api(session, proc, "POST",
                                         f"/api/updates/{update_id}/acknowledge",
                                         {"agentId": agent, "status": "completed",
                                          "agentVersion": "2.0.0"})
                assert status == 200, body
            run = await wait_run(proc, run_id=run["id"])
            got = await listener.wait_state(run["id"], "completed")
            status, body = await api(session, proc, "POST", "/api/messages", send)
            assert status == 200, body  # the upgraded agent may send again
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close()
            await listener.close()

    assert got == states(BREAKING)[1:], got
    assert run["context"]["update_id"] == update_id, run["context"]
    row = await check_recorded(proc, run, "breaking_update")
    assert "requires 2.0.0" in row["description"], row
    conn = sqlite3.connect(f"file:{proc.database}?mode=ro", uri=True)
    try:
        (completed,) = conn.execute("SELECT completed_at FROM system_updates WHERE id = ?",
                                    (update_id,)).fetchone()
    finally:
        conn.close()
    assert completed, "the update was not marked complete"


# -- 5. Resume after a kill -9 of the supervisor ---------------------------------------------

BIG_FILE = 8 << 20  # decoded bytes per upload: the database ends up ~30 MB


async def test_a_database_corruption_run_resumes_after_kill_9_of_the_supervisor(meshd_proc):
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        owner = await register(session, proc, "uploader")
        uploaded = []
        for n in range(3):
            data = base64.b64encode(os.urandom(BIG_FILE)).decode()
            status, body = await api(session, proc, "POST", "/api/files/upload", {
                "agentId": owner, "filename": f"big-{n}.bin", "fileData": data})
            assert status == 200, body
            uploaded.append(body["fileId"])
        names = [f"rs-{n}" for n in range(50)]
        for name in names:
            await register(session, proc, name)

    started = await cli_json(proc, "protocol", "run", CORRUPTION, "--reason", "resume drill")
    run_file = proc.data_dir / "protocols" / f"{started['id']}.json"

    def mid_restore() -> str | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            state = json.loads(run_file.read_bytes())["state"]
            if state in ("stopped", "restored") or state not in ("detected", "recorded"):
                return state
        return None

    seen = await async_poll(mid_restore, 20, "the run in the middle of its restore", 0.002)
    proc.signal(signal.SIGKILL)  # the supervisor only; no worker runs while it restores
    await asyncio.to_thread(proc.wait_exit, 10)
    at_kill = json.loads(run_file.read_bytes())
    assert seen in ("stopped", "restored"), f"too late: the run was at {seen}"
    assert at_kill["outcome"] == "running", at_kill
    resume_state = at_kill["state"]
    done_before = [s["state"] for s in at_kill["steps"] if s["outcome"] == "ok"]

    proc.start(QUIET)
    resumed = await asyncio.to_thread(proc.wait_log_event, "protocol.resumed", 15)
    assert resumed["run_id"] == started["id"] and resumed["state"] == resume_state, resumed
    run = await wait_run(proc, run_id=started["id"], timeout=30)
    await asyncio.to_thread(proc.wait_healthy, 15)

    # Continued from its last completed step: nothing before it ran twice.
    assert run["outcome"] == "completed" and run["state"] == "done", run
    ok = [s["state"] for s in run["steps"] if s["outcome"] == "ok"]
    assert ok == states(CORRUPTION)[:-1], run["steps"]
    assert ok[:len(done_before)] == done_before, (done_before, run["steps"])
    unfinished = [s for s in run["steps"] if s["outcome"] != "ok"]
    assert all(s["state"] == resume_state and s["outcome"] == "aborted"
               and s["finished_at"] and s["detail"].startswith("interrupted")
               for s in unfinished), unfinished

    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/readyz")
        assert (status, body["mode"]) == (200, "read-write"), body
        status, body = await api(session, proc, "POST", "/api/agents/register",
                                 {"name": "after-resume"})
        assert status == 200, body
        status, files = await api(session, proc, "GET", f"/api/files?agentId={owner}")
        assert status == 200, files
    assert set(uploaded) <= {f["id"] for f in files}, files
    assert set(names) | {"uploader", "after-resume"} <= await agent_names(proc)
    row = await check_recorded(proc, run, "db_corruption")
    assert row["description"] == "resume drill", row


# -- 6. Operator control ---------------------------------------------------------------------

ADMIN_KEY = "k2"


async def test_operator_lists_dry_runs_aborts_and_uses_the_admin_api(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--admin-key", ADMIN_KEY))
    await asyncio.to_thread(proc.wait_healthy)

    listed = await cli_json(proc, "protocol", "list")
    assert list(listed) == list(PROTOCOLS), listed
    for name, entry in listed.items():
        assert entry["states"] == states(name), entry
        assert entry["eventType"] == PROTOCOLS[name].event_type, entry

    dry = await cli_json(proc, "protocol", "run", PARTITION, "--dry-run")
    assert dry["dry_run"] is True, dry
    assert [s["state"] for s in dry["steps"]] == states(PARTITION)[:-1], dry
    assert [s["next"] for s in dry["steps"]] == states(PARTITION)[1:], dry
    assert not run_files(proc), "a dry run left a run file"
    assert await cli_json(proc, "protocol", "status") == [], "a dry run left a run"
    async with aiohttp.ClientSession() as session:
        status, rows = await api(session, proc, "GET", "/api/catastrophe")
        assert (status, rows) == (200, []), rows

        # A partition run started by hand for an agent that never comes back, then aborted.
        lost = await register(session, proc, "never-back")
        started = await cli_json(proc, "protocol", "run", PARTITION, "--agents", lost,
                                 "--reason", "by hand")
        run = await wait_run(proc, run_id=started["id"], until="recorded")
        aborted = await cli_json(proc, "protocol", "abort", run["id"])
        assert aborted["outcome"] == "aborted" and aborted["state"] == "recorded", aborted
        run = await wait_run(proc, run_id=run["id"])
        assert run["outcome"] == "aborted" and run["reason"] == "aborted: operator", run
        status_now = await cli_json(proc, "protocol", "status", run["id"])
        assert status_now["outcome"] == "aborted", status_now
        # An aborted run leaves no event `recovering` with no run behind it: active again,
        # with the reason; its interrupted step is `aborted`, the rest `skipped`.
        async def reopened() -> dict[str, Any] | None:
            event = await get_event(proc, run["event_id"])
            return event if event and "aborted: operator" in (event["description"] or "") \
                else None

        event = await async_poll(reopened, 15, "the event reopened with the reason", 0.1)
        assert event["status"] == "active" and event["resolved_at"] is None and event["affectedAgents"] == [lost], event
        assert "aborted: operator" in event["description"], event
        assert event["title"].startswith("Drill: "), event  # started by hand: a drill
        [stored_run] = event["protocolRuns"]
        assert [(s["state"], s["outcome"]) for s in stored_run["steps"]] == [
            ("detected", "ok"), ("recorded", "aborted"), ("agents_back", "skipped"),
            ("synced", "skipped")], stored_run

        # The admin API needs the operator key; the agents' key is not enough.
        url = proc.url + "/api/admin/protocols"
        async with session.get(url, headers={**proc.headers, "X-Admin-Key": ADMIN_KEY}) as r:
            assert r.status == 200, await r.text()
            assert list((await r.json())["protocols"]) == list(PROTOCOLS)
        for headers in (proc.headers, {**proc.headers, "X-Admin-Key": API_KEY}):
            async with session.get(url, headers=headers) as r:
                assert r.status == 403, (headers, r.status, await r.text())
        async with session.get(url + "/runs",
                               headers={**proc.headers, "X-Admin-Key": ADMIN_KEY}) as r:
            assert r.status == 200, await r.text()
            assert [x["outcome"] for x in await r.json() if x["id"] == run["id"]] == ["aborted"]

    await asyncio.to_thread(stop, proc)
    row, run_row, _steps = stored(proc, run["event_id"])
    assert row["status"] != "resolved" and row["resolved_at"] is None, row
    assert run_row["outcome"] == "aborted", run_row


# -- 7. Alerts -------------------------------------------------------------------------------

def json_values(text: str) -> list[dict[str, Any]]:
    """Every JSON value in `text`, whether or not newlines separate them."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


async def webhook(received: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


def alert_states(payloads: list[dict[str, Any]], run_id: str) -> list[str]:
    return [p["run"]["state"] for p in payloads if (p.get("run") or {}).get("id") == run_id]


async def test_alert_command_and_webhook_receive_every_transition(meshd_proc, tmp_path):
    received: list[dict[str, Any]] = []
    runner, url = await webhook(received)
    alerts_file = tmp_path / "alerts.jsonl"
    try:
        proc = meshd_proc().start((*QUIET, "--alert-command", f"cat >> {alerts_file}",
                                   "--alert-webhook", url))
        await asyncio.to_thread(proc.wait_healthy)
        await kill_worker(proc)
        run = await wait_run(proc, protocol=CRASH)
        assert_walked(run, CRASH)
        expected = states(CRASH)[1:]

        def from_file() -> list[dict[str, Any]]:
            return json_values(alerts_file.read_text()) if alerts_file.exists() else []

        await async_poll(lambda: sorted(alert_states(from_file(), run["id"]))
                         == sorted(expected), 10, "every transition in the alert file")
        await async_poll(lambda: sorted(alert_states(received, run["id"])) == sorted(expected),
                         10, "every transition at the webhook")
    finally:
        await runner.cleanup()

    for payloads in (from_file(), received):
        transitions = [p for p in payloads if (p.get("run") or {}).get("id") == run["id"]]
        assert all(p["type"] == "catastrophe_alert" for p in transitions), transitions
        assert all(p["catastrophe"]["id"] == run["event_id"] for p in transitions), transitions
        final = next(p for p in transitions if p["run"]["state"] == "recovered")
        assert final["run"]["outcome"] == "completed", final
        assert final["catastrophe"]["status"] == "resolved", final


SLOW_HOOK = 8  # seconds


async def test_failing_alert_hooks_never_delay_recovery(meshd_proc):
    unreachable = f"http://127.0.0.1:{free_port()}/hook"
    proc = meshd_proc().start((*QUIET, "--alert-command", f"sleep {SLOW_HOOK}; exit 3",
                               "--alert-webhook", unreachable, "--alert-timeout", "20s"))
    await asyncio.to_thread(proc.wait_healthy)
    killed = await kill_worker(proc)
    kill_at = time.monotonic()
    run = await wait_run(proc, protocol=CRASH, timeout=60)
    took = time.monotonic() - kill_at
    assert_walked(run, CRASH)
    # Each transition's hook takes SLOW_HOOK s and then fails: waiting for even one of them
    # would make the run take longer than that. (It takes ~1 s: the worker's restart.)
    assert took < SLOW_HOOK - 2, f"the crash run took {took:.1f} s behind slow alert hooks"
    await asyncio.to_thread(proc.wait_serving, killed)

    def failures() -> tuple[list, list] | None:
        events = proc.log_events()
        command = [e for e in events if e["event"] == "alert.command_failed"]
        hook = [e for e in events if e["event"] == "alert.webhook_failed"]
        return (command, hook) if len(command) >= 5 and len(hook) >= 5 else None

    command, hook = await async_poll(failures, SLOW_HOOK + 10, "every failed alert logged")
    assert all(e["code"] == 3 for e in command), command
    assert all("error" in e for e in hook), hook
    row = await check_recorded(proc, run, "server_down")
    assert row["status"] == "resolved"
