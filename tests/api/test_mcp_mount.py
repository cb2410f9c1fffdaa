"""The hooks MCP adds to the HTTP app: /mcp exists only with `mcp = true` (and is then in the
OpenAPI document like every route), the SDK is not imported before the first /mcp request
(so not at all without it), and the protocol runs of a catastrophe event are readable by
agents."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshd.api.app import make_app
from meshd.api.openapi import DOCUMENT
from meshd.store import records
from tests.api.test_openapi import document_operations, router_operations
from tests.conftest import AUTH, call


async def test_mcp_routes_exist_only_when_enabled(aiohttp_client, client, settings, storage):
    status, body = await call(client, "POST", "/mcp", {})
    assert status == 404, body
    mcp_client = await aiohttp_client(make_app(settings.replace(mcp=True), storage))
    status, body = await call(mcp_client, "POST", "/mcp", {})
    assert (status, body) == (401, {"error": "Invalid or missing API key"})


async def test_openapi_describes_mcp_routes_exactly_when_mounted(aiohttp_client, settings,
                                                                 storage):
    app = make_app(settings.replace(mcp=True), storage)
    mcp_client = await aiohttp_client(app, headers=AUTH)
    status, doc = await call(mcp_client, "GET", "/api/openapi.json")
    assert status == 200
    routed, documented = router_operations(app), document_operations(doc)
    assert {("GET", "/mcp"), ("POST", "/mcp"), ("DELETE", "/mcp")} <= routed
    assert routed == documented
    assert "/mcp" not in DOCUMENT["paths"], "the default document stays without /mcp"


@pytest.mark.parametrize("mcp", [False, True])
def test_the_sdk_is_not_imported_before_an_mcp_request(settings, mcp):
    code = (
        "import sys, asyncio\n"
        "from meshd import config\n"
        "from meshd.api.app import make_app\n"
        "from meshd.worker.serve import open_storage\n"
        f"s = config.load({{'data_dir': {str(settings.data_dir)!r}, 'mcp': {mcp}}}, environ={{}})\n"
        "async def main():\n"
        "    store = open_storage(s)\n"
        "    await store.start()\n"
        "    make_app(s, store)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "sdk = sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.'))\n"
        "assert not sdk, sdk\n"
        f"assert ('meshd.mcp.http' in sys.modules) is {mcp}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


async def test_catastrophe_runs(client, storage):
    status, body = await call(client, "GET", "/api/catastrophe/nope/runs")
    assert (status, body) == (404, {"error": "Catastrophe event not found"})
    status, body = await call(client, "POST", "/api/catastrophe", {
        "eventType": "server_down", "severity": "critical", "title": "down"})
    event_id = body["eventId"]
    status, body = await call(client, "GET", f"/api/catastrophe/{event_id}/runs")
    assert (status, body) == (200, [])
    for run_id, dry in (("run-1", False), ("run-dry", True)):
        await storage.write(records.upsert_run, {
            "id": run_id, "protocol": "server_crash_recovery", "event_id": event_id,
            "state": "restarting", "outcome": "running", "reason": "probe failed",
            "dry_run": dry, "started_at": "2026-01-01 00:00:00",
            "updated_at": "2026-01-01 00:00:01",
            "steps": [{"state": "detected", "outcome": "ok",
                       "started_at": "2026-01-01 00:00:00"}]})
    status, body = await call(client, "GET", f"/api/catastrophe/{event_id}/runs")
    assert status == 200
    assert body == [{"id": "run-1", "protocol": "server_crash_recovery", "state": "restarting",
                     "outcome": "running", "reason": "probe failed",
                     "started_at": "2026-01-01 00:00:00",
                     "updated_at": "2026-01-01 00:00:01"}]


async def test_the_door_asks_the_api_about_a_token(aiohttp_client, settings, storage):
    # An agent token is admitted when the API accepts it; an unknown one is refused; with
    # agent_auth=required the shared key no longer opens a session.
    app = make_app(settings.replace(mcp=True), storage)
    mcp_client = await aiohttp_client(app)
    status, registered = await call(mcp_client, "POST", "/api/agents/register",
                                    {"name": "mcp-door"}, headers=AUTH)
    assert status == 200, registered
    token = registered["agentToken"]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    resp = await mcp_client.post("/mcp", json=init, headers={
        **headers, "Authorization": "Bearer mat_unknown"})
    assert resp.status == 401
    assert await resp.json() == {"error": "Invalid or missing API key"}
    resp = await mcp_client.post("/mcp", json=init, headers={
        **headers, "Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["mcp-session-id"]
    assert '"serverInfo"' in await resp.text()

    strict = await aiohttp_client(make_app(settings.replace(mcp=True, agent_auth="required"),
                                           storage))
    resp = await strict.post("/mcp", json=init, headers={**headers, **AUTH})
    assert resp.status == 401, await resp.text()
