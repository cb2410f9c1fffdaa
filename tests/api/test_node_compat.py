"""The Node repository's client checks (API-CONTRACT.md §10) against meshd with its default
settings (agent_auth optional, ws_auth off): test-api.js's 25 checks, twice on one database,
sending the shared key both as X-API-Key and as `Authorization: Bearer` as that script does;
tools.js's routes; websocket-client.js's anonymous socket. Agent tokens change none of it."""

from __future__ import annotations

import pytest

from tests.conftest import API_KEY, call, next_event

NODE_HEADERS = {"X-API-Key": API_KEY, "Authorization": f"Bearer {API_KEY}",
                "Content-Type": "application/json"}


@pytest.fixture
async def node(aiohttp_client, app):
    return await aiohttp_client(app, headers=NODE_HEADERS)


async def ok(client, method: str, path: str, body=None) -> object:
    status, reply = await call(client, method, path, body)
    assert status == 200, (method, path, reply)
    return reply


async def run_test_api(client) -> int:
    """test-api.js, check by check; the number of checks that passed."""
    passed = 0

    def check(condition: bool, what: str) -> None:
        nonlocal passed
        assert condition, what
        passed += 1

    health = await ok(client, "GET", "/health")
    check(health["status"] == "ok", "health")
    first = await ok(client, "POST", "/api/agents/register",
                     {"name": "test-agent-1", "endpoint": "http://localhost:9001",
                      "capabilities": ["test"]})
    check(bool(first["agentId"]), "register agent 1")
    again = await ok(client, "POST", "/api/agents/register",
                     {"name": "test-agent-1", "endpoint": "http://localhost:9001",
                      "capabilities": ["test"]})
    check(again["agentId"] == first["agentId"] and bool(again["existed"]),
          "identity persistence")
    second = await ok(client, "POST", "/api/agents/register",
                      {"name": "test-agent-2", "endpoint": "http://localhost:9002"})
    check(bool(second["agentId"]), "register agent 2")
    a, b = first["agentId"], second["agentId"]

    group = await ok(client, "POST", "/api/groups",
                     {"name": "Test Group", "description": "d", "createdBy": a,
                      "metadata": {"purpose": "testing"}})
    check(bool(group["success"]) and bool(group["groupId"]), "create group")
    gid = group["groupId"]
    groups = await ok(client, "GET", "/api/groups")
    check(any(g["id"] == gid for g in groups), "list groups")
    detail = await ok(client, "GET", f"/api/groups/{gid}")
    check(detail["id"] == gid and detail["name"] == "Test Group", "get group")
    for agent, role in ((a, "admin"), (b, "member")):
        added = await ok(client, "POST", f"/api/groups/{gid}/members",
                         {"agentId": agent, "role": role})
        check(bool(added["success"]), f"add member {role}")
    members = await ok(client, "GET", f"/api/groups/{gid}/agents")
    check(len(members) == 2, "group agents")
    of_agent = await ok(client, "GET", f"/api/agents/{a}/groups")
    check(any(g["id"] == gid for g in of_agent), "agent groups")

    one = await ok(client, "POST", f"/api/groups/{gid}/memory",
                   {"agentId": a, "key": "test-key", "value": {"data": "v1"}})
    check(one["version"] == 1, "memory set")
    two = await ok(client, "POST", f"/api/groups/{gid}/memory",
                   {"agentId": b, "key": "test-key", "value": {"data": "v2"}})
    check(two["version"] == 2, "memory update version 2")
    await ok(client, "POST", f"/api/groups/{gid}/memory",
             {"agentId": a, "key": "other-key", "value": "x"})
    item = await ok(client, "GET", f"/api/groups/{gid}/memory/test-key")
    check(item["value"] == {"data": "v2"}, "memory get")
    listed = await ok(client, "GET", f"/api/groups/{gid}/memory")
    picked = await ok(client, "GET", f"/api/groups/{gid}/memory?keys=test-key,other-key")
    check(len(listed) >= 2 and len(picked) == 2, "memory list and keys filter")
    history = await ok(client, "GET", f"/api/groups/{gid}/memory/test-key/history")
    check(history["currentVersion"] == 2, "memory history")
    cast = await ok(client, "POST", f"/api/groups/{gid}/broadcast",
                    {"from": a, "content": "hello group"})
    check(cast["recipientCount"] == 1, "group broadcast")

    ids = []
    for n in range(4):
        sent = await ok(client, "POST", "/api/messages",
                        {"from": a, "to": b, "content": f"m{n}"})
        ids.append(sent["messageId"])
    for message_id, status in zip(ids, ("delivered", "completed", "timeout", "failed"),
                                  strict=True):
        reply = await ok(client, "PATCH", f"/api/messages/{message_id}/status",
                         {"status": status, "error": "e" if status == "failed" else None})
        check(reply["status"] == status, f"status {status}")
    failed = await ok(client, "GET", f"/api/messages/{b}/failed")
    check({ids[2], ids[3]} <= {m["id"] for m in failed}, "failed messages")
    retried = await ok(client, "POST", f"/api/messages/{ids[3]}/retry")
    check(bool(retried["success"]), "retry")
    deleted = await ok(client, "DELETE", f"/api/groups/{gid}/memory/other-key",
                       {"agentId": a})
    check(bool(deleted["success"]), "memory delete")
    removed = await ok(client, "DELETE", f"/api/groups/{gid}/members/{b}")
    check(bool(removed["success"]), "remove member")
    return passed


async def test_test_api_js_passes_twice_on_one_database(node):
    assert await run_test_api(node) == 25
    assert await run_test_api(node) == 25


async def test_tools_js_routes(node):
    me = (await ok(node, "POST", "/api/agents/register", {"name": "tools"}))["agentId"]
    peer = (await ok(node, "POST", "/api/agents/register", {"name": "peer"}))["agentId"]
    await ok(node, "POST", "/api/messages", {"from": peer, "to": me, "content": "hi"})
    inbox = await ok(node, "GET", f"/api/messages/{me}?unreadOnly=true&since=")
    assert [m["content"] for m in inbox] == ["hi"]
    await ok(node, "POST", f"/api/messages/{inbox[0]['id']}/read")
    assert await ok(node, "GET", f"/api/messages/{me}?unreadOnly=true") == []
    await ok(node, "POST", "/api/broadcast", {"from": me, "content": "all"})
    assert {a["id"] for a in await ok(node, "GET", "/api/agents")} >= {me, peer}
    await ok(node, "POST", f"/api/agents/{me}/heartbeat")
    skill = await ok(node, "POST", "/api/skills", {"agentId": peer, "name": "search"})
    assert any(s["id"] == skill["skillId"] for s in await ok(node, "GET", "/api/skills"))
    await ok(node, "POST", f"/api/skills/{skill['skillId']}/invoke",
             {"from": me, "payload": {"q": 1}})
    status, body = await call(node, "GET", "/api/agents", headers={
        "X-API-Key": "wrong", "Authorization": "Bearer wrong"})
    assert status == 401 and body["error"] == "Invalid or missing API key"


async def test_websocket_client_js_anonymous_socket(node, anon):
    a = (await ok(node, "POST", "/api/agents/register", {"name": "ws-a"}))["agentId"]
    b = (await ok(node, "POST", "/api/agents/register", {"name": "ws-b"}))["agentId"]
    ws = await anon.ws_connect("/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "connected"
    await ws.send_json({"type": "register_agent", "agentId": b})
    await ws.send_json({"type": "heartbeat"})
    await ok(node, "POST", "/api/messages", {"from": a, "to": b, "content": "hello"})
    event = await next_event(ws, "new_message")
    assert event["message"]["from"] == a and event["message"]["content"] == "hello"
    await ws.close()
