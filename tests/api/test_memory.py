"""Collective memory routes: upsert, list, get, delete, history; readonly keys, `%2F` keys."""

from __future__ import annotations

import asyncio

import pytest

from meshd.api import memory as memory_api
from meshd.api.keys import STORAGE
from tests.conftest import call, next_event, no_event, register, ws_connect


@pytest.fixture
def clock(monkeypatch):
    """Pins the DB time memory routes stamp rows with; assign `clock.now` to move it."""
    pinned = type("Clock", (), {"now": "2026-01-01 00:00:00"})()
    monkeypatch.setattr(memory_api, "db_time", lambda: pinned.now)
    return pinned


async def group_with(client, *names: str) -> tuple[str, list[str]]:
    """A new group whose members are new agents with these names."""
    _, body = await call(client, "POST", "/api/groups", {"name": "G", "createdBy": "c"})
    group_id = body["groupId"]
    agents = []
    for name in names:
        agent_id = await register(client, name)
        status, resp = await call(client, "POST", f"/api/groups/{group_id}/members",
                                  {"agentId": agent_id})
        assert status == 200, resp
        agents.append(agent_id)
    return group_id, agents


async def put(client, group_id: str, agent_id: str, key: str, value, **fields) -> dict:
    status, body = await call(client, "POST", f"/api/groups/{group_id}/memory",
                              {"agentId": agent_id, "key": key, "value": value, **fields})
    assert status == 200, body
    return body


async def test_upsert_creates_then_bumps_version_and_announces(client):
    group_id, (a, b) = await group_with(client, "A", "B")
    ws = await ws_connect(client)
    first = await put(client, group_id, a, "plan", {"step": 1})
    assert first == {"success": True, "memoryId": first["memoryId"], "version": 1}
    event = await next_event(ws, "memory_updated")
    assert event == {"type": "memory_updated", "groupId": group_id,
                     "memoryId": first["memoryId"], "key": "plan", "agentId": a}
    second = await put(client, group_id, b, "plan", {"step": 2})
    assert second == {"success": True, "memoryId": first["memoryId"], "version": 2}
    status, row = await call(client, "GET", f"/api/groups/{group_id}/memory/plan")
    assert status == 200
    assert row == {"id": first["memoryId"], "group_id": group_id, "agent_id": b, "key": "plan",
                   "value": {"step": 2}, "memory_type": "shared", "version": 2,
                   "created_at": row["created_at"], "updated_at": row["updated_at"]}
    await ws.close()


async def test_falsy_values_are_values(client):
    group_id, (a,) = await group_with(client, "A")
    for i, value in enumerate((None, 0, "", False, [], {})):
        await put(client, group_id, a, f"k{i}", value)
        _, row = await call(client, "GET", f"/api/groups/{group_id}/memory/k{i}")
        assert row["value"] == value


async def test_upsert_bad_inputs_and_membership(client):
    group_id, (a,) = await group_with(client, "A")
    outsider = await register(client, "Out")
    ws = await ws_connect(client)
    path = f"/api/groups/{group_id}/memory"
    required = (400, {"error": "agentId, key, and value are required"})
    for body in ({}, {"agentId": a, "key": "k"}, {"agentId": a, "value": 1},
                 {"key": "k", "value": 1}, {"agentId": "", "key": "k", "value": 1},
                 {"agentId": a, "key": 0, "value": 1}, []):
        assert await call(client, "POST", path, body) == required, body
    for body in ({"agentId": {"x": 1}, "key": "k", "value": 1},
                 {"agentId": a, "key": ["k"], "value": 1},
                 {"agentId": a, "key": "k", "value": 1, "memoryType": {}}):
        status, resp = await call(client, "POST", path, body)
        assert status == 400 and "must be a string" in resp["error"], body
    assert await call(client, "POST", path, {"agentId": outsider, "key": "k", "value": 1}) == (
        403, {"error": "Agent is not a member of this group"})
    assert await call(client, "POST", "/api/groups/nope/memory",
                      {"agentId": a, "key": "k", "value": 1}) == (
        404, {"error": "Group not found"})
    await no_event(ws, "memory_updated")
    assert await call(client, "GET", path) == (200, [])
    await ws.close()


async def test_memory_type_default_and_kept_on_update(client):
    group_id, (a,) = await group_with(client, "A")
    await put(client, group_id, a, "s", 1)
    await put(client, group_id, a, "p", 1, memoryType="private")
    await put(client, group_id, a, "p", 2)
    await put(client, group_id, a, "n", 1, memoryType=None)
    _, rows = await call(client, "GET", f"/api/groups/{group_id}/memory")
    types = {r["key"]: r["memory_type"] for r in rows}
    assert types == {"s": "shared", "p": "private", "n": "shared"}
    await put(client, group_id, a, "p", 3, memoryType="shared")
    _, row = await call(client, "GET", f"/api/groups/{group_id}/memory/p")
    assert (row["memory_type"], row["version"], row["value"]) == ("shared", 3, 3)


async def test_concurrent_upserts_of_one_key_serialize(client):
    group_id, agents = await group_with(client, "A", "B")
    results = await asyncio.gather(*[
        call(client, "POST", f"/api/groups/{group_id}/memory",
             {"agentId": agents[i % 2], "key": "race", "value": i}) for i in range(10)])
    assert {status for status, _ in results} == {200}
    assert sorted(body["version"] for _, body in results) == list(range(1, 11))
    assert len({body["memoryId"] for _, body in results}) == 1
    _, rows = await call(client, "GET", f"/api/groups/{group_id}/memory")
    assert len(rows) == 1 and rows[0]["version"] == 10
    _, history = await call(client, "GET", f"/api/groups/{group_id}/memory/race/history")
    assert [v["version"] for v in history["versions"]] == list(range(1, 11))


async def test_readonly_keys_only_change_for_their_writer(client):
    group_id, (a, b) = await group_with(client, "A", "B")
    await put(client, group_id, a, "rules", "v1", memoryType="readonly")
    path = f"/api/groups/{group_id}/memory"
    denied = (403, {"error": "Memory key is read-only"})
    assert await call(client, "POST", path, {"agentId": b, "key": "rules", "value": "x"}) == denied
    assert await call(client, "DELETE", f"{path}/rules", {"agentId": b}) == denied
    assert (await put(client, group_id, a, "rules", "v2"))["version"] == 2
    _, row = await call(client, "GET", f"{path}/rules")
    assert (row["value"], row["memory_type"]) == ("v2", "readonly")
    # The writer may make it shared again, after which anyone may write.
    await put(client, group_id, a, "rules", "v3", memoryType="shared")
    assert (await put(client, group_id, b, "rules", "v4"))["version"] == 4
    await put(client, group_id, b, "mine", 1, memoryType="readonly")
    assert await call(client, "DELETE", f"{path}/mine", {"agentId": b}) == (
        200, {"success": True, "message": "Memory deleted successfully"})


async def test_list_filters_order_and_paging(client, clock):
    group_id, (a,) = await group_with(client, "A")
    for key in ("k1", "k2"):
        await put(client, group_id, a, key, key)
    clock.now = "2026-01-01 00:00:01"
    await put(client, group_id, a, "k3", "k3")
    await put(client, group_id, a, "t", 0, memoryType="task")
    clock.now = "2026-01-01 00:00:02"
    await put(client, group_id, a, "k1", "k1")
    base = f"/api/groups/{group_id}/memory"
    status, rows = await call(client, "GET", base)
    assert status == 200
    # updated_at DESC; writes within one second keep insertion order.
    assert [r["key"] for r in rows] == ["k1", "k3", "t", "k2"]
    assert set(rows[0]) == {"id", "group_id", "agent_id", "key", "value", "memory_type",
                            "version", "created_at", "updated_at"}
    _, rows = await call(client, "GET", f"{base}?keys=k2,k1,missing")
    assert [r["key"] for r in rows] == ["k1", "k2"]
    _, rows = await call(client, "GET", f"{base}?keys=k1&keys=k2")
    assert [r["key"] for r in rows] == ["k1"]
    _, rows = await call(client, "GET", f"{base}?memoryType=task")
    assert [(r["key"], r["value"]) for r in rows] == [("t", 0)]
    _, rows = await call(client, "GET", f"{base}?keys=k1,t&memoryType=shared")
    assert [r["key"] for r in rows] == ["k1"]
    _, rows = await call(client, "GET", f"{base}?keys=&memoryType=")
    assert len(rows) == 4
    _, rows = await call(client, "GET", f"{base}?limit=2&offset=1")
    assert [r["key"] for r in rows] == ["k3", "t"]
    assert await call(client, "GET", "/api/groups/nope/memory") == (200, [])
    status, resp = await call(client, "GET", f"{base}?keys=" + ",".join(["k"] * 501))
    assert status == 400 and "500" in resp["error"]
    _, rows = await call(client, "GET", f"{base}?keys=" + ",".join(["k1"] * 500))
    assert [r["key"] for r in rows] == ["k1"]
    status, resp = await call(client, "GET", f"{base}?offset=-1")
    assert status == 400 and "error" in resp


async def test_get_missing_key(client):
    group_id, _ = await group_with(client, "A")
    assert await call(client, "GET", f"/api/groups/{group_id}/memory/none") == (
        404, {"error": "Memory key not found"})


async def test_delete_announces_and_checks_in_order(client):
    group_id, (a, b) = await group_with(client, "A", "B")
    outsider = await register(client, "Out")
    await put(client, group_id, a, "k", 1)
    ws = await ws_connect(client)
    path = f"/api/groups/{group_id}/memory/k"
    assert await call(client, "DELETE", path) == (400, {"error": "agentId is required"})
    assert await call(client, "DELETE", path, {"agentId": ""}) == (
        400, {"error": "agentId is required"})
    assert (await call(client, "DELETE", path, {"agentId": {"x": 1}}))[0] == 400
    assert await call(client, "DELETE", path, {"agentId": outsider}) == (
        403, {"error": "Agent is not a member of this group"})
    assert await call(client, "DELETE", "/api/groups/nope/memory/k", {"agentId": a}) == (
        404, {"error": "Group not found"})
    assert await call(client, "DELETE", f"/api/groups/{group_id}/memory/none",
                      {"agentId": a}) == (404, {"error": "Memory key not found"})
    await no_event(ws, "memory_deleted")
    # Any member may delete a shared key, whoever wrote it.
    assert await call(client, "DELETE", path, {"agentId": b}) == (
        200, {"success": True, "message": "Memory deleted successfully"})
    event = await next_event(ws, "memory_deleted")
    assert event == {"type": "memory_deleted", "groupId": group_id, "key": "k", "agentId": b}
    assert (await call(client, "GET", path))[0] == 404
    # A deleted key starts again at version 1.
    assert (await put(client, group_id, a, "k", 2))["version"] == 1
    await ws.close()


async def test_delete_takes_agent_from_query_or_header(client):
    group_id, (a,) = await group_with(client, "A")
    await put(client, group_id, a, "q", 1)
    await put(client, group_id, a, "h", 1)
    assert (await call(client, "DELETE", f"/api/groups/{group_id}/memory/q?agentId={a}"))[0] \
        == 200
    assert (await call(client, "DELETE", f"/api/groups/{group_id}/memory/h",
                       headers={"X-Agent-Id": a}))[0] == 200
    _, rows = await call(client, "GET", f"/api/groups/{group_id}/memory")
    assert rows == []


async def test_history_lists_every_version(client, clock):
    group_id, (a, b) = await group_with(client, "A", "B")
    await put(client, group_id, a, "k", "one", memoryType="notes")
    clock.now = "2026-01-01 00:01:00"
    await put(client, group_id, b, "k", {"two": 2})
    status, body = await call(client, "GET", f"/api/groups/{group_id}/memory/k/history")
    assert status == 200
    _, row = await call(client, "GET", f"/api/groups/{group_id}/memory/k")
    assert {k: body[k] for k in ("key", "currentVersion", "lastUpdated", "lastUpdatedBy")} == {
        "key": "k", "currentVersion": 2, "lastUpdated": "2026-01-01 00:01:00",
        "lastUpdatedBy": b}
    assert row["created_at"] == "2026-01-01 00:00:00"
    assert body["versions"] == [
        {"version": 1, "value": "one", "memoryType": "notes", "agentId": a, "change": "created",
         "changedAt": "2026-01-01 00:00:00"},
        {"version": 2, "value": {"two": 2}, "memoryType": "notes", "agentId": b,
         "change": "updated", "changedAt": "2026-01-01 00:01:00"},
    ]
    assert await call(client, "GET", f"/api/groups/{group_id}/memory/none/history") == (
        404, {"error": "Memory key not found"})


async def test_history_records_deletes(client):
    group_id, (a,) = await group_with(client, "A")
    await put(client, group_id, a, "k", 1)
    await call(client, "DELETE", f"/api/groups/{group_id}/memory/k", {"agentId": a})
    rows = await client.app[STORAGE].read(lambda db: db.query(
        "SELECT version, value, change FROM memory_history ORDER BY rowid"))
    assert rows == [{"version": 1, "value": "1", "change": "created"},
                    {"version": 1, "value": "1", "change": "deleted"}]
    # A key created again has a history of its own.
    await put(client, group_id, a, "k", 2)
    _, body = await call(client, "GET", f"/api/groups/{group_id}/memory/k/history")
    assert [(v["version"], v["value"], v["change"]) for v in body["versions"]] == [
        (1, 2, "created")]


async def test_history_of_a_key_written_by_node(client):
    """Rows migrated from the Node server have no history rows."""
    group_id, (a, b) = await group_with(client, "A", "B")
    await client.app[STORAGE].write(lambda tx: tx.execute(
        "INSERT INTO collective_memory (id, group_id, agent_id, key, value, memory_type,"
        " version, created_at, updated_at) VALUES ('m1', ?, ?, 'old', '\"v3\"', 'shared', 3,"
        " '2026-01-01 00:00:00', '2026-01-02 00:00:00')", (group_id, a)))
    _, body = await call(client, "GET", f"/api/groups/{group_id}/memory/old/history")
    assert body["versions"] == [{"version": 3, "value": "v3", "memoryType": "shared",
                                 "agentId": a, "change": "updated",
                                 "changedAt": "2026-01-02 00:00:00"}]
    assert (await put(client, group_id, b, "old", "v4"))["version"] == 4
    _, body = await call(client, "GET", f"/api/groups/{group_id}/memory/old/history")
    assert [(v["version"], v["value"], v["agentId"]) for v in body["versions"]] == [
        (3, "v3", a), (4, "v4", b)]


async def test_percent_encoded_keys(client):
    group_id, (a,) = await group_with(client, "A")
    ws = await ws_connect(client)
    await put(client, group_id, a, "a/b", "slash")
    await put(client, group_id, a, "history", "named history")
    await put(client, group_id, a, "sp ace%", "odd")
    base = f"/api/groups/{group_id}/memory"
    status, row = await call(client, "GET", f"{base}/a%2Fb")
    assert (status, row["key"], row["value"]) == (200, "a/b", "slash")
    status, row = await call(client, "GET", f"{base}/history")
    assert (status, row["key"], row["value"]) == (200, "history", "named history")
    status, row = await call(client, "GET", f"{base}/sp%20ace%25")
    assert (status, row["key"]) == (200, "sp ace%")
    status, body = await call(client, "GET", f"{base}/a%2Fb/history")
    assert (status, body["key"], body["currentVersion"]) == (200, "a/b", 1)
    status, body = await call(client, "GET", f"{base}/history/history")
    assert (status, body["key"]) == (200, "history")
    # A raw slash is two segments, as in Express.
    assert (await call(client, "GET", f"{base}/a/b"))[0] == 404
    assert (await call(client, "DELETE", f"{base}/a%2Fb", {"agentId": a}))[0] == 200
    event = await next_event(ws, "memory_deleted")
    assert event["key"] == "a/b"
    assert (await call(client, "GET", f"{base}/a%2Fb"))[0] == 404
    await ws.close()


async def test_memory_events_reach_only_members_that_asked_for_their_own(client):
    group_id, (a,) = await group_with(client, "A")
    outsider = await register(client, "Out")
    mine = await ws_connect(client, f"/ws?agentId={a}&onlyMine=true")
    other = await ws_connect(client, f"/ws?agentId={outsider}&onlyMine=true")
    await put(client, group_id, a, "k", 1)
    assert (await next_event(mine, "memory_updated"))["key"] == "k"
    await no_event(other, "memory_updated")
    await mine.close()
    await other.close()
