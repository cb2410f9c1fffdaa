"""Skill routes: register, discover, invoke (a message to the owner); bad inputs and events."""

from __future__ import annotations

import orjson

from tests.conftest import call, next_event, no_event, register, ws_connect

SKILL_KEYS = {"id", "agent_id", "name", "description", "endpoint", "created_at", "agent_name"}


async def add_skill(client, agent_id: str, name: str, **fields) -> str:
    status, body = await call(client, "POST", "/api/skills",
                               {"agentId": agent_id, "name": name, **fields})
    assert status == 200, body
    return body["skillId"]


async def query(storage, sql: str, params=()):
    return await storage.read(lambda db: db.query(sql, params))


async def test_register_and_list(client):
    owner = await register(client, "Owner")
    status, body = await call(client, "POST", "/api/skills",
                              {"agentId": owner, "name": "search", "description": "web",
                               "endpoint": "http://o/search"})
    assert status == 200
    assert body == {"success": True, "skillId": body["skillId"]}
    status, rows = await call(client, "GET", "/api/skills")
    assert status == 200
    assert len(rows) == 1 and set(rows[0]) == SKILL_KEYS
    assert rows[0]["id"] == body["skillId"]
    assert (rows[0]["agent_id"], rows[0]["name"], rows[0]["description"], rows[0]["endpoint"],
            rows[0]["agent_name"]) == (owner, "search", "web", "http://o/search", "Owner")


async def test_optional_fields_default_to_empty_and_names_repeat(client):
    owner = await register(client, "Owner")
    first = await add_skill(client, owner, "echo")
    second = await add_skill(client, owner, "echo", description=None, endpoint="")
    assert first != second
    _, rows = await call(client, "GET", "/api/skills")
    assert {(r["description"], r["endpoint"]) for r in rows} == {("", "")}
    assert len(rows) == 2


async def test_register_bad_inputs_store_nothing(client, storage):
    owner = await register(client, "Owner")
    required = (400, {"error": "agentId and name are required"})
    for body in ({}, {"agentId": owner}, {"name": "x"}, {"agentId": "", "name": "x"},
                 {"agentId": owner, "name": 0}, {"agent_id": owner, "name": "x"}):
        assert await call(client, "POST", "/api/skills", body) == required, body
    assert await call(client, "POST", "/api/skills", {"agentId": "ghost", "name": "x"}) == (
        404, {"error": "Agent not found"})
    status, body = await call(client, "POST", "/api/skills",
                              {"agentId": owner, "name": {"n": 1}})
    assert (status, body) == (400, {"error": "name must be a string"})
    status, body = await call(client, "POST", "/api/skills",
                              {"agentId": owner, "name": "x", "description": ["d"]})
    assert (status, body) == (400, {"error": "description must be a string"})
    assert await query(storage, "SELECT id FROM skills") == []


async def test_list_order_and_paging(client, storage):
    owner = await register(client, "Owner")
    old = await add_skill(client, owner, "old")
    first = await add_skill(client, owner, "first")
    second = await add_skill(client, owner, "second")
    await storage.write(lambda tx: tx.execute(
        "UPDATE skills SET created_at = CASE WHEN id = ? THEN '2001-01-01 00:00:00'"
        " ELSE '2030-01-01 00:00:00' END", (old,)))
    _, rows = await call(client, "GET", "/api/skills")
    assert [r["id"] for r in rows] == [first, second, old]
    _, rows = await call(client, "GET", "/api/skills?limit=1&offset=1")
    assert [r["id"] for r in rows] == [second]
    assert (await call(client, "GET", "/api/skills?limit=abc"))[0] == 400


async def test_invoke_sends_the_owner_a_message_and_announces(client, storage):
    owner = await register(client, "Owner")
    caller = await register(client, "Caller")
    skill_id = await add_skill(client, owner, "search", endpoint="http://never-called")
    ws = await ws_connect(client)
    status, body = await call(client, "POST", f"/api/skills/{skill_id}/invoke",
                              {"from": caller, "payload": {"q": "x", "n": [1, 2]}})
    assert status == 200
    assert body == {"success": True, "invocationId": body["invocationId"]}
    assert await next_event(ws, "skill_invoked") == {
        "type": "skill_invoked", "skillId": skill_id, "skillName": "search",
        "from": caller, "to": owner}
    rows = await query(storage, "SELECT * FROM messages WHERE id = ?", (body["invocationId"],))
    assert len(rows) == 1
    message = rows[0]
    assert (message["from_agent"], message["to_agent"], message["message_type"],
            message["status"], message["read"]) == (caller, owner, "skill_invocation",
                                                    "pending", 0)
    assert message["content"] == (
        '{"type":"skill_invocation","skillName":"search","payload":{"q":"x","n":[1,2]}}')
    # The owner finds it in its inbox.
    _, inbox = await call(client, "GET", f"/api/messages/{owner}")
    assert [m["id"] for m in inbox] == [body["invocationId"]]
    await ws.close()


async def test_invoke_payload_absent_or_null(client, storage):
    owner = await register(client, "Owner")
    skill_id = await add_skill(client, owner, "ping")
    _, body = await call(client, "POST", f"/api/skills/{skill_id}/invoke", {"from": "c"})
    _, null_body = await call(client, "POST", f"/api/skills/{skill_id}/invoke",
                              {"from": "c", "payload": None})
    contents = {}
    for invocation in (body["invocationId"], null_body["invocationId"]):
        rows = await query(storage, "SELECT content FROM messages WHERE id = ?", (invocation,))
        contents[invocation] = orjson.loads(rows[0]["content"])
    assert contents[body["invocationId"]] == {"type": "skill_invocation", "skillName": "ping"}
    assert contents[null_body["invocationId"]] == {"type": "skill_invocation",
                                                   "skillName": "ping", "payload": None}


async def test_invoke_bad_inputs(client, storage):
    owner = await register(client, "Owner")
    skill_id = await add_skill(client, owner, "search")
    ws = await ws_connect(client)
    path = f"/api/skills/{skill_id}/invoke"
    for body in ({}, {"from": ""}, {"from": None}, {"payload": {"q": 1}}):
        assert await call(client, "POST", path, body) == (
            400, {"error": "from is required"}), body
    status, body = await call(client, "POST", path, {"from": {"id": 1}})
    assert (status, body) == (400, {"error": "from must be a string"})
    not_found = (404, {"error": "Skill not found"})
    assert await call(client, "POST", "/api/skills/nope/invoke", {"from": "c"}) == not_found
    # An unknown skill is reported before a missing sender, as the Node server did.
    assert await call(client, "POST", "/api/skills/nope/invoke", {}) == not_found
    assert await query(storage, "SELECT id FROM messages") == []
    await no_event(ws, "skill_invoked")
    await ws.close()


async def test_invocation_reaches_the_owners_scoped_socket(client):
    owner = await register(client, "Owner")
    skill_id = await add_skill(client, owner, "search")
    ws = await ws_connect(client, f"/ws?agentId={owner}&onlyMine=true")
    await call(client, "POST", "/api/messages", {"from": "a", "to": "b", "content": "other"})
    await call(client, "POST", f"/api/skills/{skill_id}/invoke", {"from": "caller"})
    assert (await next_event(ws, "skill_invoked"))["to"] == owner
    await no_event(ws, "new_message")
    await ws.close()
