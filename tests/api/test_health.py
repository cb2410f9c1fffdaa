"""Health routes: heartbeat and health posts, agent health, dashboard, offline detection."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshd import config
from meshd.api.app import make_app
from meshd.clock import db_time, db_time_ago
from meshd.store import agents as agents_store
from meshd.store import health as health_store
from meshd.worker import jobs
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, AUTH, call, next_event, no_event, register, ws_connect

METRICS = {"uptimeSeconds": 3600, "cpuUsage": 45.5, "memoryUsage": 67.25,
           "customMetrics": {"queue": 3}}


def _set_last_seen(tx, agent_id: str, when: str) -> None:
    tx.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (when, agent_id))


async def age(storage, agent_id: str, seconds: float = 3600) -> None:
    await storage.write_internal(_set_last_seen, agent_id, db_time_ago(seconds))


async def health(client, agent_id: str) -> dict:
    status, body = await call(client, "GET", f"/api/agents/{agent_id}/health")
    assert status == 200, body
    return body


async def test_post_health_stores_and_broadcasts(client, storage):
    agent_id = await register(client, "A")
    await age(storage, agent_id)
    ws = await ws_connect(client)
    status, body = await call(client, "POST", f"/api/agents/{agent_id}/health",
                              {"status": "degraded", **METRICS})
    assert (status, body) == (200, {"success": True, "message": "Health status updated"})
    event = await next_event(ws, "agent_health_change")
    assert event == {"type": "agent_health_change", "agentId": agent_id, "status": "degraded",
                     "metrics": METRICS}
    row = await health(client, agent_id)
    assert row == {"agentId": agent_id, "status": "degraded",
                   "lastHeartbeat": row["lastHeartbeat"], "uptimeSeconds": 3600,
                   "cpuUsage": 45.5, "memoryUsage": 67.25, "customMetrics": {"queue": 3},
                   "lastUpdated": row["lastUpdated"]}
    assert len(row["lastHeartbeat"]) == 19 and row["lastUpdated"] == row["lastHeartbeat"]
    # A health post refreshes last_seen (the Node server did not, RB-16).
    _, agent = await call(client, "GET", f"/api/agents/{agent_id}")
    assert agent["last_seen"] >= row["lastHeartbeat"]
    # Every post broadcasts, even with no change; absent metrics are left out.
    assert (await call(client, "POST", f"/api/agents/{agent_id}/health", {}))[0] == 200
    event = await next_event(ws, "agent_health_change")
    assert event == {"type": "agent_health_change", "agentId": agent_id, "status": "degraded",
                     "metrics": {}}
    await ws.close()


async def test_first_health_post_defaults_to_healthy(client):
    agent_id = await register(client, "A")
    ws = await ws_connect(client)
    assert (await call(client, "POST", f"/api/agents/{agent_id}/health", {"cpuUsage": 12}))[0] == 200
    event = await next_event(ws, "agent_health_change")
    assert (event["status"], event["metrics"]) == ("healthy", {"cpuUsage": 12})
    row = await health(client, agent_id)
    assert (row["status"], row["cpuUsage"], row["uptimeSeconds"], row["customMetrics"]) == (
        "healthy", 12, None, {})
    await ws.close()


async def test_zero_is_stored_and_absent_fields_keep_stored_values(client):
    agent_id = await register(client, "A")
    path = f"/api/agents/{agent_id}/health"
    await call(client, "POST", path, {"status": "unhealthy", **METRICS})
    await call(client, "POST", path, {"cpuUsage": 0, "uptimeSeconds": 0})
    row = await health(client, agent_id)
    assert (row["status"], row["cpuUsage"], row["uptimeSeconds"]) == ("unhealthy", 0, 0)
    assert (row["memoryUsage"], row["customMetrics"]) == (67.25, {"queue": 3})
    # Explicit null clears a metric; a null customMetrics is an empty object.
    await call(client, "POST", path, {"memoryUsage": None, "customMetrics": None})
    row = await health(client, agent_id)
    assert (row["memoryUsage"], row["customMetrics"], row["cpuUsage"]) == (None, {}, 0)


async def test_health_bad_inputs(client):
    agent_id = await register(client, "A")
    for route in ("health", "heartbeat"):
        path = f"/api/agents/{agent_id}/{route}"
        for body, field in (({"status": "on-fire"}, "status"), ({"status": 1}, "status"),
                            ({"cpuUsage": "abc"}, "cpuUsage"), ({"uptimeSeconds": True},
                                                                "uptimeSeconds"),
                            ({"memoryUsage": [1]}, "memoryUsage"),
                            ({"customMetrics": [1]}, "customMetrics"),
                            ({"customMetrics": "x"}, "customMetrics")):
            status, resp = await call(client, "POST", path, body)
            assert status == 400 and field in resp["error"], (route, body, resp)
        status, resp = await call(client, "POST", path, data=b"{bad",
                                  headers={"Content-Type": "application/json"})
        assert status == 400
        assert await call(client, "POST", f"/api/agents/nope/{route}", {"cpuUsage": 1}) == (
            404, {"error": "Agent not found"})
    # Nothing was written by the refused posts.
    assert await call(client, "GET", f"/api/agents/{agent_id}/health") == (
        404, {"error": "Health status not found"})


async def test_get_health_not_found(client):
    agent_id = await register(client, "A")
    assert await call(client, "GET", f"/api/agents/{agent_id}/health") == (
        404, {"error": "Health status not found"})
    assert await call(client, "GET", "/api/agents/nope/health") == (
        404, {"error": "Health status not found"})


async def test_heartbeat_refreshes_last_seen_and_keeps_metrics(client, storage):
    agent_id = await register(client, "A")
    await age(storage, agent_id)
    old_seen = (await call(client, "GET", f"/api/agents/{agent_id}"))[1]["last_seen"]
    path = f"/api/agents/{agent_id}/heartbeat"
    assert await call(client, "POST", path) == (200, {"success": True})
    assert (await call(client, "GET", f"/api/agents/{agent_id}"))[1]["last_seen"] > old_seen
    # A bare heartbeat creates no health row.
    assert (await call(client, "GET", f"/api/agents/{agent_id}/health"))[0] == 404
    assert await call(client, "POST", path, {"status": "degraded", **METRICS}) == (
        200, {"success": True})
    first = await health(client, agent_id)
    assert (first["status"], first["cpuUsage"], first["customMetrics"]) == (
        "degraded", 45.5, {"queue": 3})
    assert await call(client, "POST", path, {}) == (200, {"success": True})
    assert await call(client, "POST", path, {"cpuUsage": 0}) == (200, {"success": True})
    row = await health(client, agent_id)
    assert (row["status"], row["cpuUsage"], row["uptimeSeconds"], row["memoryUsage"],
            row["customMetrics"]) == ("degraded", 0, 3600, 67.25, {"queue": 3})
    assert await call(client, "POST", "/api/agents/nope/heartbeat") == (
        404, {"error": "Agent not found"})


async def test_heartbeat_broadcasts_only_on_status_change(client, storage):
    agent_id = await register(client, "A")
    path = f"/api/agents/{agent_id}/heartbeat"
    ws = await ws_connect(client)
    await call(client, "POST", path)
    await no_event(ws, "agent_health_change")
    # The first report is a change (from no status to healthy).
    await call(client, "POST", path, {"cpuUsage": 10})
    event = await next_event(ws, "agent_health_change")
    assert (event["agentId"], event["status"], event["metrics"]) == (
        agent_id, "healthy", {"cpuUsage": 10})
    await call(client, "POST", path, {"cpuUsage": 11})
    await call(client, "POST", path, {"status": "healthy"})
    await call(client, "POST", path)
    await no_event(ws, "agent_health_change")
    await call(client, "POST", path, {"status": "degraded", "memoryUsage": 5})
    event = await next_event(ws, "agent_health_change")
    assert (event["status"], event["metrics"]) == ("degraded", {"memoryUsage": 5})
    # An agent marked offline comes back healthy on its next heartbeat, and that is announced.
    await call(client, "POST", f"/api/agents/{agent_id}/health", {"status": "offline"})
    await next_event(ws, "agent_health_change")
    await call(client, "POST", path)
    event = await next_event(ws, "agent_health_change")
    assert (event["status"], event["metrics"]) == ("healthy", {})
    assert (await health(client, agent_id))["status"] == "healthy"
    await ws.close()


async def test_dashboard_counts_effective_statuses(client, storage):
    healthy = await register(client, "Healthy", endpoint="http://h:1")
    degraded = await register(client, "Degraded")
    unhealthy = await register(client, "Unhealthy")
    unknown = await register(client, "Unknown")
    silent = await register(client, "Silent")
    silent_unknown = await register(client, "SilentUnknown")
    said_offline = await register(client, "SaidOffline")
    for agent_id, status in ((healthy, "healthy"), (degraded, "degraded"),
                             (unhealthy, "unhealthy"), (silent, "healthy"),
                             (said_offline, "offline")):
        await call(client, "POST", f"/api/agents/{agent_id}/health",
                   {"status": status, "cpuUsage": 45, "uptimeSeconds": 60})
    await age(storage, silent, 3600)
    await age(storage, silent_unknown, 7200)
    critical_old = {"eventType": "db_corruption", "severity": "critical", "title": "old"}
    await call(client, "POST", "/api/catastrophe", critical_old)
    _, resolved = await call(client, "POST", "/api/catastrophe", {**critical_old,
                                                                  "title": "done"})
    await call(client, "POST", f"/api/catastrophe/{resolved['eventId']}/resolve", {})
    _, newest = await call(client, "POST", "/api/catastrophe", {
        "eventType": "api_crash", "severity": "minor", "title": "newest",
        "affectedAgents": [healthy]})

    status, body = await call(client, "GET", "/api/health/dashboard")
    assert status == 200
    assert list(body) == ["totalAgents", "healthy", "degraded", "unhealthy", "offline",
                          "unknown", "criticalEvents", "lastCatastrophe", "agentList"]
    assert {k: body[k] for k in list(body)[:7]} == {
        "totalAgents": 7, "healthy": 1, "degraded": 1, "unhealthy": 1, "offline": 3,
        "unknown": 1, "criticalEvents": 1}
    last = body["lastCatastrophe"]
    assert last["id"] == newest["eventId"] and last["title"] == "newest"
    assert last["affected_agents"] == f'["{healthy}"]' and last["affectedAgents"] == [healthy]
    assert last["event_type"] == "api_crash" and last["status"] == "active"

    agents = body["agentList"]
    assert len(agents) == 7
    assert [a["agentId"] for a in agents[-2:]] == [silent, silent_unknown]
    seen = [a["lastSeen"] for a in agents]
    assert seen == sorted(seen, reverse=True)
    by_id = {a["agentId"]: a for a in agents}
    assert by_id[healthy] == {
        "agentId": healthy, "name": "Healthy", "endpoint": "http://h:1", "status": "healthy",
        "uptimeSeconds": 60, "cpuUsage": 45, "memoryUsage": None,
        "lastSeen": by_id[healthy]["lastSeen"], "lastUpdated": by_id[healthy]["lastUpdated"]}
    assert {a["agentId"]: a["status"] for a in agents} == {
        healthy: "healthy", degraded: "degraded", unhealthy: "unhealthy", unknown: "unknown",
        silent: "offline", silent_unknown: "offline", said_offline: "offline"}
    assert by_id[unknown]["lastUpdated"] is None and by_id[unknown]["cpuUsage"] is None

    # Paging applies to agentList only.
    status, page = await call(client, "GET", "/api/health/dashboard?limit=2&offset=5")
    assert status == 200 and [a["agentId"] for a in page["agentList"]] == [
        silent, silent_unknown]
    assert page["totalAgents"] == 7 and page["offline"] == 3
    assert (await call(client, "GET", "/api/health/dashboard?offset=-1"))[0] == 400


async def test_dashboard_when_empty(client):
    status, body = await call(client, "GET", "/api/health/dashboard")
    assert status == 200
    assert body == {"totalAgents": 0, "healthy": 0, "degraded": 0, "unhealthy": 0,
                    "offline": 0, "unknown": 0, "criticalEvents": 0, "lastCatastrophe": None,
                    "agentList": []}


async def test_mark_offline_returns_each_agent_once(client, storage):
    reported = await register(client, "Reported")
    never = await register(client, "Never")
    fresh = await register(client, "Fresh")
    await call(client, "POST", f"/api/agents/{reported}/health", {"cpuUsage": 5})
    await age(storage, reported)
    await age(storage, never)
    cutoff = db_time_ago(60)
    rows = await storage.write(health_store.mark_offline, cutoff, db_time())
    assert [r["agent_id"] for r in rows] == [reported, never]
    assert all(len(r["last_seen"]) == 19 for r in rows)
    assert await storage.write(health_store.mark_offline, cutoff, db_time()) == []
    assert (await health(client, reported))["cpuUsage"] == 5
    assert (await health(client, never))["status"] == "offline"
    assert (await call(client, "GET", f"/api/agents/{fresh}/health"))[0] == 404


async def test_offline_job_announces_once(aiohttp_client, tmp_path: Path):
    settings = config.load(
        {"data_dir": str(tmp_path / "data"), "backup_dir": str(tmp_path / "backups"),
         "api_key": API_KEY, "access_log": "false", "log_format": "json",
         "heartbeat_timeout": "1s", "offline_check_interval": "100ms"},
        environ={},
    )
    storage = open_storage(settings)
    await storage.start()
    app = make_app(settings, storage)
    client = await aiohttp_client(app, headers=AUTH)
    tasks = jobs.start(settings, storage)
    try:
        agent_id = await register(client, "Quiet")
        ws = await ws_connect(client)  # before ageing, so the one event cannot be missed
        await age(storage, agent_id, 60)
        event = await next_event(ws, "agent_health_change", timeout=10)
        assert event == {"type": "agent_health_change", "agentId": agent_id,
                         "status": "offline", "metrics": {}}
        assert (await health(client, agent_id))["status"] == "offline"
        # Later rounds (every 100 ms) find it already offline and announce nothing.
        await no_event(ws, "agent_health_change", wait=0.6)
        # A heartbeat brings it back, announced as a change.
        await call(client, "POST", f"/api/agents/{agent_id}/heartbeat")
        event = await next_event(ws, "agent_health_change")
        assert (event["agentId"], event["status"]) == (agent_id, "healthy")
        # While read-only, no round runs.
        storage.set_read_only("test")
        await age(storage, agent_id, 60)
        await no_event(ws, "agent_health_change", wait=0.5)
        storage.set_read_only(None)
        event = await next_event(ws, "agent_health_change", timeout=10)
        assert (event["agentId"], event["status"]) == (agent_id, "offline")
        await ws.close()
    finally:
        await jobs.stop(tasks)
        await storage.close()


async def test_offline_job_waits_one_timeout_after_start(tmp_path: Path):
    """Right after a start nobody is reported offline: agents could not reach a server that
    was down, so they get one heartbeat_timeout to check in."""
    settings = config.load(
        {"data_dir": str(tmp_path / "data"), "heartbeat_timeout": "2s",
         "offline_check_interval": "50ms", "log_format": "json"}, environ={})
    storage = open_storage(settings)
    await storage.start()
    agent_id, _ = await storage.write(agents_store.register, "Old", None, None,
                                      db_time_ago(3600))
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = jobs.start(settings, storage)
    try:
        deadline = started + 10
        while await storage.read(health_store.get, agent_id) is None:
            assert loop.time() < deadline, "the agent was never marked offline"
            await asyncio.sleep(0.05)
        assert loop.time() - started >= 2
    finally:
        await jobs.stop(tasks)
        await storage.close()
