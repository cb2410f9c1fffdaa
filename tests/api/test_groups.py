"""Agent group routes: create, list, get, membership, an agent's groups, group broadcast."""

from __future__ import annotations

import asyncio

import pytest

from meshd.api import groups as groups_api
from meshd.api.keys import STORAGE
from tests.conftest import call, next_event, no_event, register, ws_connect


@pytest.fixture
def clock(monkeypatch):
    """Pins the DB time group routes stamp rows with; assign `clock.now` to move it."""
    pinned = type("Clock", (), {"now": "2026-01-01 00:00:00"})()
    monkeypatch.setattr(groups_api, "db_time", lambda: pinned.now)
    return pinned


async def create_group(client, name: str = "G", created_by: str = "creator", **fields) -> str:
    status, body = await call(client, "POST", "/api/groups",
                              {"name": name, "createdBy": created_by, **fields})
    assert status == 200, body
    return body["groupId"]


async def add(client, group_id: str, agent_id: str, **fields) -> None:
    status, body = await call(client, "POST", f"/api/groups/{group_id}/members",
                              {"agentId": agent_id, **fields})
    assert status == 200, body


async def test_create_group_announces_it(client):
    ws = await ws_connect(client)
    status, body = await call(client, "POST", "/api/groups",
                              {"name": "Ops", "createdBy": "a1", "metadata": {"tier": 1}})
    assert status == 200
    assert body == {"success": True, "groupId": body["groupId"],
                    "message": "Agent group created successfully"}
    event = await next_event(ws, "group_created")
    # Absent keys (description) are left out; sent values are echoed as sent.
    assert event["group"] == {"id": body["groupId"], "name": "Ops", "createdBy": "a1",
                              "metadata": {"tier": 1}}
    status, group = await call(client, "GET", f"/api/groups/{body['groupId']}")
    assert status == 200
    assert group == {"id": body["groupId"], "name": "Ops", "description": None,
                     "metadata": {"tier": 1}, "created_by": "a1",
                     "created_at": group["created_at"], "members": []}
    await ws.close()


async def test_create_group_keeps_explicit_null_in_event_and_defaults_metadata(client):
    ws = await ws_connect(client)
    group_id = await create_group(client, "N", description=None, metadata=0)
    event = await next_event(ws, "group_created")
    assert event["group"] == {"id": group_id, "name": "N", "createdBy": "creator",
                              "description": None, "metadata": 0}
    _, group = await call(client, "GET", f"/api/groups/{group_id}")
    assert group["metadata"] == {} and group["description"] is None
    # [] is truthy in JavaScript, so it is stored as sent.
    list_group = await create_group(client, "L", metadata=[])
    _, group = await call(client, "GET", f"/api/groups/{list_group}")
    assert group["metadata"] == []
    # Duplicate names are allowed.
    assert await create_group(client, "N") != group_id
    await ws.close()


async def test_create_group_bad_inputs(client):
    for body in ({}, {"name": "x"}, {"createdBy": "y"}, {"name": "", "createdBy": "y"},
                 {"name": "x", "createdBy": 0}, []):
        status, resp = await call(client, "POST", "/api/groups", body)
        assert (status, resp) == (400, {"error": "name and createdBy are required"}), body
    for body in ({"name": {"a": 1}, "createdBy": "y"}, {"name": "x", "createdBy": ["y"]},
                 {"name": "x", "createdBy": "y", "description": {}}):
        status, resp = await call(client, "POST", "/api/groups", body)
        assert status == 400 and "must be a string" in resp["error"], body
    assert (await call(client, "GET", "/api/groups"))[1] == []


async def test_list_groups_with_member_count_order_and_paging(client, clock):
    a = await register(client, "A")
    first = await create_group(client, "first", metadata={"k": "v"})
    clock.now = "2026-01-01 00:00:01"
    second = await create_group(client, "second")
    third = await create_group(client, "third")
    await add(client, first, a)
    status, rows = await call(client, "GET", "/api/groups")
    assert status == 200
    # created_at DESC; groups created within one second keep insertion order.
    assert [r["id"] for r in rows] == [second, third, first]
    assert set(rows[0]) == {"id", "name", "description", "metadata", "created_by",
                            "created_at", "member_count"}
    assert rows[2]["member_count"] == 1 and rows[0]["member_count"] == 0
    assert rows[2]["metadata"] == {"k": "v"}
    _, page = await call(client, "GET", "/api/groups?limit=1&offset=1")
    assert [r["id"] for r in page] == [third]
    status, resp = await call(client, "GET", "/api/groups?limit=x")
    assert status == 400 and "error" in resp


async def test_get_group_members_and_not_found(client, clock):
    a = await register(client, "A", endpoint="http://a", capabilities=["c"])
    b = await register(client, "B")
    group_id = await create_group(client)
    clock.now = "2026-01-01 00:00:09"
    await add(client, group_id, b, role="lead")
    clock.now = "2026-01-01 00:00:03"
    await add(client, group_id, a)
    status, group = await call(client, "GET", f"/api/groups/{group_id}")
    assert status == 200 and "member_count" not in group
    # joined_at ascending.
    assert [m["agent_id"] for m in group["members"]] == [a, b]
    member = group["members"][0]
    assert member == {"group_id": group_id, "agent_id": a, "role": "member",
                      "joined_at": member["joined_at"], "name": "A", "endpoint": "http://a",
                      "capabilities": ["c"], "last_seen": member["last_seen"]}
    assert member["joined_at"] == "2026-01-01 00:00:03"
    assert group["members"][1]["role"] == "lead"
    assert await call(client, "GET", "/api/groups/nope") == (404, {"error": "Group not found"})


async def test_add_member_announces_and_checks_in_order(client):
    a = await register(client, "A")
    group_id = await create_group(client)
    ws = await ws_connect(client)
    status, body = await call(client, "POST", f"/api/groups/{group_id}/members",
                              {"agentId": a, "role": None})
    assert (status, body) == (200, {"success": True,
                                    "message": "Agent added to group successfully"})
    event = await next_event(ws, "group_member_added")
    assert event == {"type": "group_member_added", "groupId": group_id, "agentId": a,
                     "role": "member"}
    path = f"/api/groups/{group_id}/members"
    assert await call(client, "POST", path, {}) == (400, {"error": "agentId is required"})
    assert await call(client, "POST", path, {"agentId": ""}) == (
        400, {"error": "agentId is required"})
    assert (await call(client, "POST", path, {"agentId": {"x": 1}}))[0] == 400
    assert (await call(client, "POST", path, {"agentId": a, "role": ["x"]}))[0] == 400
    assert await call(client, "POST", "/api/groups/nope/members", {"agentId": a}) == (
        404, {"error": "Group not found"})
    assert await call(client, "POST", path, {"agentId": "ghost"}) == (
        404, {"error": "Agent not found"})
    assert await call(client, "POST", path, {"agentId": a}) == (
        409, {"error": "Agent is already a member of this group"})
    await no_event(ws, "group_member_added")
    await ws.close()


async def test_any_role_string_is_kept(client):
    a = await register(client, "A")
    group_id = await create_group(client)
    await add(client, group_id, a, role="weird-role")
    _, agents = await call(client, "GET", f"/api/groups/{group_id}/agents")
    assert agents[0]["role"] == "weird-role"


async def test_remove_member_announces_and_404s(client):
    a = await register(client, "A")
    group_id = await create_group(client)
    await add(client, group_id, a)
    ws = await ws_connect(client, f"/ws?agentId={a}&onlyMine=true")
    status, body = await call(client, "DELETE", f"/api/groups/{group_id}/members/{a}")
    assert (status, body) == (200, {"success": True,
                                    "message": "Agent removed from group successfully"})
    # The removed agent is still told about its removal.
    event = await next_event(ws, "group_member_removed")
    assert event == {"type": "group_member_removed", "groupId": group_id, "agentId": a}
    assert await call(client, "DELETE", f"/api/groups/{group_id}/members/{a}") == (
        404, {"error": "Group member not found"})
    assert await call(client, "DELETE", f"/api/groups/nope/members/{a}") == (
        404, {"error": "Group member not found"})
    await no_event(ws, "group_member_removed")
    await ws.close()


async def test_group_events_reach_only_members_that_asked_for_their_own(client):
    a = await register(client, "A")
    outsider = await register(client, "Out")
    group_id = await create_group(client)
    mine = await ws_connect(client, f"/ws?agentId={a}&onlyMine=true")
    other = await ws_connect(client, f"/ws?agentId={outsider}&onlyMine=true")
    await add(client, group_id, a)
    assert (await next_event(mine, "group_member_added"))["agentId"] == a
    await no_event(other, "group_member_added")
    await mine.close()
    await other.close()


async def test_agent_groups(client, clock):
    a = await register(client, "A")
    g1 = await create_group(client, "one", metadata={"x": 1})
    g2 = await create_group(client, "two")
    clock.now = "2026-01-01 00:00:05"
    g3 = await create_group(client, "three")
    await create_group(client, "four")
    for group_id in (g2, g3, g1):
        await add(client, group_id, a, role="lead" if group_id == g2 else None)
    status, rows = await call(client, "GET", f"/api/agents/{a}/groups")
    assert status == 200
    assert [r["id"] for r in rows] == [g3, g1, g2]
    assert set(rows[0]) == {"id", "name", "description", "metadata", "created_by",
                            "created_at", "role"}
    assert rows[1]["metadata"] == {"x": 1} and rows[2]["role"] == "lead"
    assert rows[0]["role"] == "member"
    _, page = await call(client, "GET", f"/api/agents/{a}/groups?limit=1&offset=1")
    assert [r["id"] for r in page] == [g1]
    assert await call(client, "GET", "/api/agents/ghost/groups") == (200, [])


async def test_group_agents_by_name(client):
    group_id = await create_group(client)
    for name in ("zed", "Alpha", "mike"):
        await add(client, group_id, await register(client, name, capabilities=[name]))
    status, rows = await call(client, "GET", f"/api/groups/{group_id}/agents")
    assert status == 200
    assert [r["name"] for r in rows] == ["Alpha", "mike", "zed"]
    assert set(rows[0]) == {"id", "name", "endpoint", "capabilities", "last_seen",
                            "created_at", "role"}
    assert rows[0]["capabilities"] == ["Alpha"]
    _, page = await call(client, "GET", f"/api/groups/{group_id}/agents?limit=2")
    assert [r["name"] for r in page] == ["Alpha", "mike"]
    assert await call(client, "GET", "/api/groups/nope/agents") == (200, [])


async def test_group_broadcast_delivers_to_members_but_sender(client):
    a = await register(client, "A")
    b = await register(client, "B")
    c = await register(client, "C")
    group_id = await create_group(client)
    for agent in (a, b, c):
        await add(client, group_id, agent)
    ws = await ws_connect(client)
    status, body = await call(client, "POST", f"/api/groups/{group_id}/broadcast",
                              {"from": a, "content": "hello", "messageType": "alert"})
    assert status == 200
    assert body["success"] is True and body["recipientCount"] == 2
    assert len(set(body["messageIds"])) == 2
    event = await next_event(ws, "group_broadcast")
    assert event == {"type": "group_broadcast", "groupId": group_id, "from": a,
                     "content": "hello", "recipientCount": 2}
    rows = await _messages(client)
    assert {(r["to_agent"], r["status"], r["message_type"], r["read"]) for r in rows} == {
        (b, "delivered", "alert", 0), (c, "delivered", "alert", 0)}
    assert {r["id"] for r in rows} == set(body["messageIds"])
    await ws.close()


async def _messages(client) -> list[dict]:
    """The message rows as stored (no route lists every message)."""
    return await client.app[STORAGE].read(
        lambda db: db.query("SELECT * FROM messages ORDER BY rowid"))


async def test_group_broadcast_sender_need_not_be_member_and_type_defaults(client):
    a = await register(client, "A")
    group_id = await create_group(client)
    await add(client, group_id, a)
    ws = await ws_connect(client)
    for content in (42, {"a": 1}):
        status, body = await call(client, "POST", f"/api/groups/{group_id}/broadcast",
                                  {"from": "outsider", "content": content})
        assert status == 200 and body["recipientCount"] == 1
        # The event carries the content as sent; the row holds its text.
        assert (await next_event(ws, "group_broadcast"))["content"] == content
    rows = await _messages(client)
    assert [(r["from_agent"], r["to_agent"], r["content"], r["message_type"]) for r in rows] == [
        ("outsider", a, "42", "direct"), ("outsider", a, '{"a":1}', "direct")]
    await ws.close()


async def test_group_broadcast_without_recipients_or_input(client):
    a = await register(client, "A")
    empty = await create_group(client, "empty")
    solo = await create_group(client, "solo")
    await add(client, solo, a)
    ws = await ws_connect(client)
    for group_id in (empty, solo, "nope"):
        assert await call(client, "POST", f"/api/groups/{group_id}/broadcast",
                          {"from": a, "content": "x"}) == (
            404, {"error": "No agents found in group"})
    for body in ({}, {"from": a}, {"content": "x"}, {"from": a, "content": ""}):
        assert await call(client, "POST", f"/api/groups/{solo}/broadcast", body) == (
            400, {"error": "from and content are required"}), body
    for body in ({"from": {"id": a}, "content": "x"},
                 {"from": a, "content": "x", "messageType": []}):
        status, resp = await call(client, "POST", f"/api/groups/{solo}/broadcast", body)
        assert status == 400 and "must be a string" in resp["error"], body
    await no_event(ws, "group_broadcast")
    assert await _messages(client) == []
    await ws.close()


async def test_concurrent_member_adds_of_one_agent_yield_one_membership(client):
    a = await register(client, "A")
    group_id = await create_group(client)
    results = await asyncio.gather(*[
        call(client, "POST", f"/api/groups/{group_id}/members", {"agentId": a})
        for _ in range(10)])
    assert sorted(status for status, _ in results) == [200] + [409] * 9
    _, group = await call(client, "GET", f"/api/groups/{group_id}")
    assert len(group["members"]) == 1
