"""Agent registry routes: register, identity persistence, list, get; their bad inputs."""

from __future__ import annotations

from tests.conftest import call, next_event, no_event, register, ws_connect


async def test_register_new_agent_announces_it(client):
    ws = await ws_connect(client)
    status, body = await call(client, "POST", "/api/agents/register",
                              {"name": "Alpha", "endpoint": "http://a:1", "capabilities": ["x"]})
    assert status == 200
    assert body["success"] is True and body["existed"] is False
    assert body["message"] == "Agent registered successfully"
    event = await next_event(ws, "agent_joined")
    assert event["agent"] == {"id": body["agentId"], "name": "Alpha", "endpoint": "http://a:1",
                              "capabilities": ["x"]}
    await ws.close()


async def test_reregister_keeps_id_endpoint_and_capabilities(client):
    agent_id = await register(client, "Alpha", endpoint="http://a:1", capabilities=["x"])
    ws = await ws_connect(client)
    status, body = await call(client, "POST", "/api/agents/register", {"name": "Alpha"})
    assert status == 200
    assert body == {"success": True, "agentId": agent_id,
                    "message": "Agent re-registered with existing ID", "existed": True}
    await no_event(ws, "agent_joined")
    _, row = await call(client, "GET", f"/api/agents/{agent_id}")
    assert row["endpoint"] == "http://a:1"
    assert row["capabilities"] == ["x"]
    await ws.close()


async def test_names_are_case_sensitive_and_numbers_match_text(client):
    a = await register(client, "Alpha")
    b = await register(client, "alpha")
    assert a != b
    n = await register(client, 12345)
    assert await register(client, "12345") == n


async def test_concurrent_first_registrations_yield_one_agent(client):
    import asyncio

    results = await asyncio.gather(*[call(client, "POST", "/api/agents/register",
                                          {"name": "Racer"}) for _ in range(20)])
    assert {status for status, _ in results} == {200}
    assert len({body["agentId"] for _, body in results}) == 1


async def test_register_bad_inputs(client):
    for body in ({}, {"name": ""}, {"name": None}, {"name": 0}, []):
        status, resp = await call(client, "POST", "/api/agents/register", body)
        assert (status, resp) == (400, {"error": "Name is required"}), body
    status, resp = await call(client, "POST", "/api/agents/register", {"name": {"a": 1}})
    assert status == 400 and "name" in resp["error"]
    status, resp = await call(client, "POST", "/api/agents/register", data=b"{oops",
                              headers={"Content-Type": "application/json"})
    assert status == 400 and "malformed JSON" in resp["error"]
    status, resp = await call(client, "POST", "/api/agents/register", data=b'"scalar"',
                              headers={"Content-Type": "application/json"})
    assert status == 400


async def test_json_body_accepted_with_form_content_type(client):
    """curl -d sends application/x-www-form-urlencoded; the Node server answered 400."""
    status, body = await call(client, "POST", "/api/agents/register", data=b'{"name":"Curl"}',
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["existed"] is False


async def test_oversized_body_is_413_json(client, settings):
    big = b'{"name":"' + b"x" * (settings.max_body_size + 10) + b'"}'
    status, body = await call(client, "POST", "/api/agents/register", data=big,
                              headers={"Content-Type": "application/json"})
    assert status == 413 and "error" in body


async def test_list_and_get(client):
    a = await register(client, "A", capabilities=["c1"])
    b = await register(client, "B")
    status, rows = await call(client, "GET", "/api/agents")
    assert status == 200
    assert {r["id"] for r in rows} == {a, b}
    assert set(rows[0]) == {"id", "name", "endpoint", "capabilities", "last_seen", "created_at"}
    status, rows = await call(client, "GET", "/api/agents?limit=1")
    assert status == 200 and len(rows) == 1
    status, rows = await call(client, "GET", "/api/agents?limit=1&offset=1")
    assert len(rows) == 1
    for bad in ("limit=-1", "limit=x", "offset=-2"):
        status, resp = await call(client, "GET", f"/api/agents?{bad}")
        assert status == 400 and "error" in resp
    status, row = await call(client, "GET", f"/api/agents/{a}")
    assert status == 200 and row["capabilities"] == ["c1"]
    assert await call(client, "GET", "/api/agents/nope") == (404, {"error": "Agent not found"})
    # GET /api/agents/register is the get route with id "register", as in Express.
    assert (await call(client, "GET", "/api/agents/register"))[0] == 404


async def test_auth(anon, client):
    status, body = await call(anon, "GET", "/api/agents")
    assert status == 401 and body == {"error": "Invalid or missing API key"}
    status, _ = await call(anon, "GET", "/api/agents", headers={"X-API-Key": "wrong"})
    assert status == 401
    assert (await call(anon, "GET", "/api/agents", headers={"X-API-Key": " test-key "}))[0] == 200
    assert (await call(anon, "GET", "/api/agents?apiKey=test-key"))[0] == 200
    assert (await call(anon, "GET", "/api/agents?apiKey=test-key&apiKey=x"))[0] == 200
    assert (await call(anon, "GET", "/api/agents",
                       headers={"Authorization": "Bearer test-key"}))[0] == 200
    # A Bearer header replaces a correct X-API-Key, as on the Node server.
    assert (await call(anon, "GET", "/api/agents",
                       headers={"X-API-Key": "test-key", "Authorization": "Bearer no"}))[0] == 401
    # The key is never echoed back.
    assert "test-key" not in str(body)
    # Case-insensitive routes are authenticated too.
    assert (await call(anon, "GET", "/API/AGENTS/"))[0] == 401


async def test_routing_like_express(client):
    await register(client, "A")
    assert (await call(client, "GET", "/API/Agents/"))[0] == 200
    status, body = await call(client, "GET", "/nope")
    assert status == 404 and body == {"error": "Cannot GET /nope"}
    status, body = await call(client, "DELETE", "/api/agents")
    assert status == 404 and body == {"error": "Cannot DELETE /api/agents"}


async def test_cors_preflight_and_headers(anon):
    resp = await anon.options("/api/agents", headers={
        "Origin": "http://ui", "Access-Control-Request-Headers": "x-api-key"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-API-Key" in resp.headers["Access-Control-Allow-Headers"]
    resp = await anon.get("/api/agents")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_health_needs_no_key(anon):
    status, body = await call(anon, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["service"] == "agent-mesh-api"
    assert body["timestamp"].endswith("Z")


async def test_a_body_that_looks_like_json_but_does_not_parse_is_malformed_whatever_its_type(
        client):
    """`curl -d '{"name": "x",}'` sends a form type: the answer says the JSON is malformed,
    not "Name is required"; a form body that is not JSON still gets the route's own 400."""
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        status, resp = await call(client, "POST", "/api/agents/register",
                                  data=b'{"name": "x",}', headers=headers)
        assert status == 400 and "malformed JSON" in resp["error"], (content_type, resp)
    status, resp = await call(client, "POST", "/api/agents/register", data=b"name=x",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "malformed JSON" not in resp["error"], resp
