"""The Node server's primary compatibility script (test-api.js, API-CONTRACT.md §10), its 25
checks in the same order, run twice against the same database as the contract requires, on
both backends (this directory runs once per backend: `[postgresql]` is the one this file adds).

Like test-api.js, every request sends both `X-API-Key` and `Authorization: Bearer`.
"""

from __future__ import annotations

from tests.conftest import API_KEY, call

HEADERS = {"X-API-Key": API_KEY, "Authorization": f"Bearer {API_KEY}"}


async def node_test_api(client, run: int) -> int:
    """test-api.js's sequence; the number of checks passed (every one asserts)."""
    checks = 0

    async def req(method: str, path: str, body=None):
        return await call(client, method, path, body, headers=HEADERS)

    def check(condition: bool, what: str) -> None:
        nonlocal checks
        assert condition, f"run {run}: {what}"
        checks += 1

    status, body = await req("GET", "/health")
    check(status == 200 and body["status"] == "ok", "health")
    agents = {}
    for name in ("compat-alpha", "compat-beta"):
        status, body = await req("POST", "/api/agents/register",
                                 {"name": name, "endpoint": f"http://{name}",
                                  "capabilities": ["test"]})
        check(status == 200 and body["success"], f"register {name}")
        agents[name] = body["agentId"]
    status, body = await req("POST", "/api/agents/register", {"name": "compat-alpha"})
    check(body["agentId"] == agents["compat-alpha"] and body["existed"],
          "identity persistence")
    alpha, beta = agents["compat-alpha"], agents["compat-beta"]

    status, body = await req("POST", "/api/groups", {"name": f"compat-{run}",
                                                     "createdBy": alpha})
    check(status == 200 and body["groupId"], "create group")
    group = body["groupId"]
    status, body = await req("GET", "/api/groups")
    check(status == 200 and any(g["id"] == group for g in body), "list groups")
    status, body = await req("GET", f"/api/groups/{group}")
    check(status == 200 and body["id"] == group, "get group")
    for agent in (alpha, beta):
        status, body = await req("POST", f"/api/groups/{group}/members", {"agentId": agent})
        check(status == 200 and body["success"], "add member")
    status, body = await req("GET", f"/api/groups/{group}/agents")
    check(status == 200 and len(body) == 2, "group agents")
    status, body = await req("GET", f"/api/agents/{alpha}/groups")
    check(status == 200 and any(g["id"] == group for g in body), "agent groups")

    memory = f"/api/groups/{group}/memory"
    await req("POST", memory, {"agentId": alpha, "key": "a", "value": {"n": 1}})
    await req("POST", memory, {"agentId": beta, "key": "b", "value": "x"})
    status, body = await req("POST", memory, {"agentId": alpha, "key": "a", "value": {"n": 2}})
    check(status == 200 and body["version"] == 2, "memory version 2")
    status, body = await req("GET", f"{memory}/a")
    check(status == 200 and body["value"] == {"n": 2}, "get memory")
    status, body = await req("GET", memory)
    check(status == 200 and len(body) == 2, "list memory")
    status, body = await req("GET", f"{memory}?keys=a,b")
    check(status == 200 and len(body) == 2, "memory by keys")
    status, body = await req("GET", f"{memory}/a/history")
    check(status == 200 and body["currentVersion"] == 2, "memory history")
    status, body = await req("POST", f"/api/groups/{group}/broadcast",
                             {"from": alpha, "content": "to the group"})
    check(status == 200 and body["success"], "group broadcast")

    failed_ids = []
    for new_status in ("delivered", "completed", "timeout", "failed"):
        status, body = await req("POST", "/api/messages",
                                 {"from": alpha, "to": beta, "content": new_status})
        assert status == 200, body
        message_id = body["messageId"]
        status, body = await req("PATCH", f"/api/messages/{message_id}/status",
                                 {"status": new_status})
        check(status == 200 and body["success"], f"status {new_status}")
        if new_status in ("timeout", "failed"):
            failed_ids.append(message_id)
    status, body = await req("GET", f"/api/messages/{beta}/failed")
    check(status == 200 and {m["id"] for m in body} >= set(failed_ids), "failed messages")
    status, body = await req("POST", f"/api/messages/{failed_ids[-1]}/retry")
    check(status == 200 and body["success"], "retry")
    status, body = await req("DELETE", f"{memory}/b", {"agentId": beta})
    check(status == 200 and body["success"], "delete memory")
    status, body = await req("DELETE", f"/api/groups/{group}/members/{beta}")
    check(status == 200 and body["success"], "remove member")
    return checks


async def test_node_test_api_passes_twice_on_one_database(client):
    assert await node_test_api(client, 1) == 25
    assert await node_test_api(client, 2) == 25
