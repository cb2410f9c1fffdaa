"""The worker's once-per-mesh jobs follow the lease its supervisor grants
(meshd/worker/leadership.py): no round while the worker does not lead, rounds as soon as it
does, and partition detection started afresh, one heartbeat_timeout after leading begins.
Real SQLite storage and the real app; the supervisor side is the one recording client below."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from meshd import config
from meshd.api.app import make_app
from meshd.clock import db_time_ago
from meshd.store import health as health_store
from meshd.worker import jobs
from meshd.worker.leadership import Lease
from meshd.worker.serve import open_storage
from meshd.worker.supervisor_client import SupervisorClient
from tests.conftest import AUTH, call, register
from tests.support import async_poll


class RecordingSupervisor(SupervisorClient):
    """What the worker asks of its supervisor, kept instead of sent (no supervisor here)."""

    def __init__(self, settings) -> None:
        super().__init__(settings, supervised=False)
        self.started: list[tuple[str, dict[str, Any]]] = []

    def start_protocol(self, name: str, reason: str, context: dict[str, Any]) -> None:
        self.started.append((name, context))


def _set_last_seen(tx, agent_id: str, when: str) -> None:
    tx.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (when, agent_id))


def settings_for(tmp_path: Path):
    return config.load(
        {"data_dir": str(tmp_path / "data"), "backup_dir": str(tmp_path / "backups"),
         "api_key": "k" * 20, "access_log": "false", "log_format": "json",
         "heartbeat_timeout": "1s", "offline_check_interval": "50ms",
         "sweep_interval": "50ms", "partition_min_agents": "2", "partition_share": "0.5",
         "partition_window": "60s"}, environ={})


async def started_app(aiohttp_client, settings):
    storage = open_storage(settings)
    await storage.start()
    client = await aiohttp_client(make_app(settings, storage),
                                  headers={**AUTH, "X-API-Key": settings.api_key})
    return storage, client


async def test_the_sweep_and_offline_detection_wait_for_the_lease(aiohttp_client, tmp_path):
    settings = settings_for(tmp_path)
    storage, client = await started_app(aiohttp_client, settings)
    lease = Lease(always=False)
    tasks = jobs.start(settings, storage, None, lease)
    try:
        agent = await register(client, "Quiet")
        await storage.write_internal(_set_last_seen, agent, db_time_ago(3600))
        status, body = await call(client, "POST", "/api/messages",
                                  {"from": agent, "to": agent, "content": "x", "timeoutMs": 1})
        assert status == 200, body
        message = body["messageId"]
        # Past the start's grace (1 s) and many rounds of both jobs: none ran.
        await asyncio.sleep(1.5)
        assert await storage.read(health_store.get, agent) is None
        status, rows = await call(client, "GET", f"/api/messages/{agent}")
        assert [m["status"] for m in rows if m["id"] == message] == ["pending"]

        lease.grant(time.monotonic() + 60)
        await async_poll(lambda: storage.read(health_store.get, agent), 10,
                         "the agent marked offline once the worker leads")

        async def timed_out() -> bool:
            _status, rows = await call(client, "GET", f"/api/messages/{agent}")
            return [m["status"] for m in rows if m["id"] == message] == ["timeout"]

        await async_poll(timed_out, 10, "the message timed out once the worker leads")
    finally:
        await jobs.stop(tasks)
        await storage.close()


async def test_a_new_leader_starts_partition_detection_afresh(aiohttp_client, tmp_path):
    settings = settings_for(tmp_path)
    storage, client = await started_app(aiohttp_client, settings)
    supervisor = RecordingSupervisor(settings)
    lease = Lease(always=False)
    tasks = jobs.start(settings, storage, supervisor, lease)

    async def went_silent_together(names: list[str]) -> list[str]:
        """Agents that heartbeat (evidence) and then fell silent 5 s ago."""
        ids = [await register(client, n) for n in names]
        for agent in ids:
            status, _ = await call(client, "POST", f"/api/agents/{agent}/heartbeat")
            assert status == 200
            await storage.write_internal(_set_last_seen, agent, db_time_ago(5))
        return ids

    async def offline(ids: list[str]) -> bool:
        rows = [await storage.read(health_store.get, a) for a in ids]
        return all(r is not None and r["status"] == "offline" for r in rows)

    try:
        await asyncio.sleep(1.2)  # past the start's grace, not leading
        first = await went_silent_together(["a1", "a2", "a3"])
        lease.grant(time.monotonic() + 60)
        gained = lease.gained_at
        # Marked offline at once by the new leader, but not taken for a partition: they may
        # be the agents of a node that just died, reconnecting elsewhere.
        await async_poll(lambda: offline(first), 10, "the first agents marked offline")
        assert supervisor.started == []
        # One heartbeat_timeout after leading began, agents going silent together are.
        await async_poll(lambda: time.monotonic() > gained + 1.1, 5, "the grace to pass")
        second = await went_silent_together(["b1", "b2", "b3"])
        await async_poll(lambda: supervisor.started, 10, "a partition detected")
        name, context = supervisor.started[0]
        assert name == "network_partition" and sorted(context["agents"]) == sorted(second)
    finally:
        await jobs.stop(tasks)
        await storage.close()


async def test_the_internal_lease_route_takes_a_lease_and_refuses_bad_ones(aiohttp_client, tmp_path):
    """POST /internal/leader (the supervisor's private socket): a JSON 400 for anything but a
    boolean `leader` and, when leading, a numeric `until_monotonic`; the lease unchanged."""
    from meshd.worker.internal import make_internal_app

    settings = settings_for(tmp_path)
    storage = open_storage(settings)
    await storage.start()
    try:
        lease = Lease(always=False)
        internal = await aiohttp_client(make_internal_app(make_app(settings, storage), lease))
        bad = [{}, {"leader": "yes"}, {"leader": 1}, {"leader": True},
               {"leader": True, "until_monotonic": "soon"},
               {"leader": True, "until_monotonic": True}]
        for body in bad:
            resp = await internal.post("/internal/leader", json=body)
            assert resp.status == 400, body
            assert "error" in await resp.json()
            assert not lease.leads()
        resp = await internal.post("/internal/leader", data=b"{not json")
        assert resp.status == 400 and not lease.leads()
        resp = await internal.post("/internal/leader",
                                   json={"leader": True, "until_monotonic": time.monotonic() + 60})
        assert resp.status == 200 and (await resp.json()) == {"leader": True}
        resp = await internal.post("/internal/leader", json={"leader": False})
        assert (await resp.json()) == {"leader": False} and not lease.leads()
    finally:
        await storage.close()
