"""Breaking-update enforcement: too-old agents may not send, but may always report upgrades."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import call, register

BREAKING = {"version": "2.0.0", "updateType": "api", "title": "v2", "breakingChange": True,
            "requiredVersion": "2.0.0", "announcement": "pip install -U agent==2.0.0"}


@pytest.fixture
def strict(make_client):
    """An app with no grace period, so enforcement starts with the update."""
    return lambda **extra: make_client(**{"update_grace": "0s", **extra})


async def send(client, sender, headers=None):
    return await call(client, "POST", "/api/messages",
                      {"from": sender, "to": "x", "content": "hi"}, headers=headers or {})


async def test_too_old_agent_is_refused_with_a_problem_body(strict):
    client = await strict()
    a = await register(client, "A")
    assert (await send(client, a))[0] == 200  # nothing enforced yet
    status, body = await call(client, "POST", "/api/updates", BREAKING)
    assert status == 200
    resp = await client.post("/api/messages", json={"from": a, "to": "x", "content": "hi"})
    assert resp.status == 426
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["Upgrade"] == "agent-mesh/2.0.0"
    problem = await resp.json(content_type=None)
    assert problem["status"] == 426 and problem["requiredVersion"] == "2.0.0"
    assert problem["agentVersion"] is None
    assert problem["upgradeInstructions"] == BREAKING["announcement"]
    assert "upgrade" in problem["error"]
    # Broadcasts and skill invocations on behalf of the agent are refused too.
    assert (await call(client, "POST", "/api/broadcast", {"from": a, "content": "x"}))[0] == 426
    # The version header or an acknowledgment at the required version lets it send.
    assert (await send(client, a, {"X-Agent-Version": "2.1.0"}))[0] == 200
    assert (await send(client, a, {"X-Agent-Version": "1.9.9"}))[0] == 426


async def test_acknowledging_the_new_version_lifts_the_refusal(strict):
    client = await strict()
    a = await register(client, "A")
    _, created = await call(client, "POST", "/api/updates", BREAKING)
    ack = f"/api/updates/{created['updateId']}/acknowledge"
    assert (await call(client, "POST", ack, {"agentId": a, "status": "accepted",
                                              "agentVersion": "1.0.0"}))[0] == 200
    assert (await send(client, a))[0] == 426
    assert (await call(client, "POST", ack, {"agentId": a, "status": "completed",
                                              "agentVersion": "2.0.0"}))[0] == 200
    assert (await send(client, a))[0] == 200


async def test_reporting_routes_and_anonymous_requests_are_never_refused(strict):
    client = await strict()
    a = await register(client, "A")
    await call(client, "POST", "/api/updates", BREAKING)
    assert (await call(client, "POST", "/api/agents/register", {"name": "A"}))[0] == 200
    assert (await call(client, "POST", f"/api/agents/{a}/heartbeat", {}))[0] == 200
    assert (await call(client, "POST", f"/api/agents/{a}/health",
                       {"status": "healthy"}))[0] == 200
    assert (await call(client, "GET", f"/api/messages/{a}"))[0] == 200
    assert (await call(client, "GET", "/api/agents"))[0] == 200
    # An operator's request names no agent.
    assert (await call(client, "POST", "/api/updates", {**BREAKING, "version": "2.0.1"}))[0] == 200


async def test_unknown_version_allowed_when_configured(strict):
    client = await strict(unknown_version="allow")
    a = await register(client, "A")
    await call(client, "POST", "/api/updates", BREAKING)
    assert (await send(client, a))[0] == 200
    assert (await send(client, a, {"X-Agent-Version": "1.0.0"}))[0] == 426


async def test_grace_period_delays_enforcement(strict):
    client = await strict(update_grace="10m")
    a = await register(client, "A")
    await call(client, "POST", "/api/updates", BREAKING)
    assert (await send(client, a))[0] == 200


async def test_invalid_required_version_is_refused(strict):
    client = await strict()
    status, body = await call(client, "POST", "/api/updates",
                              {**BREAKING, "requiredVersion": "two"})
    assert status == 400 and "semantic version" in body["error"]


async def test_websocket_of_a_too_old_agent_is_closed_with_4426(strict):
    client = await strict()
    a = await register(client, "A")
    await call(client, "POST", "/api/updates", BREAKING)
    ws = await client.ws_connect(f"/ws?agentId={a}")
    frames = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            frames.append(msg.json())
    assert ws.close_code == 4426
    assert frames[0]["type"] == "connected"
    assert frames[-1]["type"] == "upgrade_required"
    assert frames[-1]["requiredVersion"] == "2.0.0"
    # An up-to-date agent stays connected.
    ok = await client.ws_connect(f"/ws?agentId={a}", headers={"X-Agent-Version": "2.0.0"})
    assert (await ok.receive_json(timeout=5))["type"] == "connected"
    assert not ok.closed
    await ok.close()
