"""The WebSocket per ws_auth mode, with anonymous, shared-key and agent-token connections:
what each receives, what each may send, and impersonation over the socket refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp import WSServerHandshakeError

from tests.api.authkit import (
    SHARED,
    Mesh,
    bearer,
    each_backend,  # noqa: F401 - runs this module on both backends
    open_mesh,
)
from tests.conftest import next_event, no_event

PRIVATE = ("new_message", "group_created", "file_available")


async def connect(mesh: Mesh, headers=None, path: str = "/ws"):
    ws = await mesh.client.ws_connect(path, headers=headers or {})
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "connected"
    return ws


async def agents(mesh: Mesh) -> dict[str, dict]:
    found = {}
    for name in ("A", "B", "C"):
        found[name] = await mesh.register(f"agent-{name}")
    await offline(mesh, found)
    return found


async def send(mesh: Mesh, frm: str, to: str, content: str = "secret") -> None:
    await mesh.ok("POST", "/api/messages", {"from": frm, "to": to, "content": content})


async def mesh_wide_and_private_events(mesh: Mesh, a: str, b: str) -> str:
    """One private event of each kind, then one mesh-wide event of each kind (so a socket
    that got the last mesh-wide one has had its chance at every private one)."""
    await send(mesh, a, b)
    await mesh.ok("POST", "/api/groups", {"name": "g", "createdBy": a})
    await mesh.ok("POST", "/api/files/upload", {"agentId": a, "filename": "f",
                                                "fileData": "eA=="})
    await mesh.register("newcomer")
    await mesh.ok("POST", "/api/broadcast", {"from": a, "content": "all"})
    await mesh.ok("POST", "/api/updates", {"version": "1.0.0", "updateType": "minor",
                                           "title": "t"})
    await mesh.ok("POST", f"/api/agents/{a}/health", {"status": "healthy"})
    title = f"last-{uuid.uuid4()}"
    await mesh.ok("POST", "/api/catastrophe", {"eventType": "server_down",
                                               "severity": "minor", "title": title})
    return title


async def frames_until(ws, title: str) -> list[dict]:
    """The frames up to the catastrophe_alert titled `title` (open events replayed at
    connect come first and are skipped)."""
    seen = []
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] == "catastrophe_alert" and frame["catastrophe"]["title"] != title:
            continue
        seen.append(frame)
        if frame["type"] == "catastrophe_alert":
            return seen


MESH_TYPES = ["agent_joined", "broadcast", "system_update", "agent_health_change",
              "catastrophe_alert"]


async def offline(mesh: Mesh, found: dict[str, dict]) -> None:
    """Every agent reported offline: a socket heartbeat for one revives it (healthy)."""
    for reply in found.values():
        await mesh.ok("POST", f"/api/agents/{reply['agentId']}/health", {"status": "offline"},
                      bearer(reply["agentToken"]))


async def status_of(mesh: Mesh, agent_id: str) -> str:
    return (await mesh.ok("GET", f"/api/agents/{agent_id}/health"))["status"]


async def wait_revived(mesh: Mesh, agent_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while await status_of(mesh, agent_id) != "healthy":
        assert asyncio.get_running_loop().time() < deadline, "the heartbeat was not recorded"
        await asyncio.sleep(0.02)


async def test_off_keeps_the_node_stream_for_anonymous_sockets(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        ids = {k: v["agentId"] for k, v in (await agents(mesh)).items()}
        ws = await connect(mesh)
        last = await mesh_wide_and_private_events(mesh, ids["A"], ids["B"])
        types = [f["type"] for f in await frames_until(ws, last)]
        assert set(PRIVATE) <= set(types)
        await ws.send_json({"type": "register_agent", "agentId": ids["B"]})
        await ws.send_json({"type": "heartbeat"})
        await wait_revived(mesh, ids["B"])  # as the Node server allowed: ws_auth off
        await ws.close()


async def test_public_anonymous_sees_only_mesh_wide_events_and_cannot_write(aiohttp_client,
                                                                          tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth="public") as mesh:
        ids = {k: v["agentId"] for k, v in (await agents(mesh)).items()}
        ws = await connect(mesh)
        last = await mesh_wide_and_private_events(mesh, ids["A"], ids["B"])
        types = [f["type"] for f in await frames_until(ws, last)]
        assert types == MESH_TYPES
        await ws.send_json({"type": "register_agent", "agentId": ids["B"]})
        error = await next_event(ws, "error")
        assert "credential" in error["error"]
        await ws.send_json({"type": "heartbeat"})
        assert (await next_event(ws, "error"))["error"].startswith("heartbeat")
        assert await status_of(mesh, ids["B"]) == "offline"
        await ws.close()


@pytest.mark.parametrize("mode", ["public", "required"])
async def test_shared_key_gets_the_full_stream(aiohttp_client, tmp_path, mode):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth=mode) as mesh:
        ids = {k: v["agentId"] for k, v in (await agents(mesh)).items()}
        for headers in (SHARED, {"Authorization": f"Bearer {SHARED['X-API-Key']}"}):
            ws = await connect(mesh, headers)
            last = await mesh_wide_and_private_events(mesh, ids["A"], ids["B"])
            types = [f["type"] for f in await frames_until(ws, last)]
            assert set(PRIVATE) <= set(types)
            await ws.close()
        # The way a Node client passes it: AGENT_MESH_WS_URL=ws://host:4000/ws?apiKey=...
        ws = await connect(mesh, path=f"/ws?apiKey={SHARED['X-API-Key']}")
        await send(mesh, ids["A"], ids["B"])
        assert (await next_event(ws, "new_message"))["message"]["content"] == "secret"
        await ws.send_json({"type": "register_agent", "agentId": ids["C"]})
        await ws.send_json({"type": "heartbeat"})
        await wait_revived(mesh, ids["C"])  # agent_auth optional: the shared key may bind
        await ws.close()


async def test_required_refuses_sockets_without_a_credential(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth="required") as mesh:
        with pytest.raises(WSServerHandshakeError) as refused:
            await mesh.client.ws_connect("/ws")
        assert refused.value.status == 401
        with pytest.raises(WSServerHandshakeError) as refused:
            await mesh.client.ws_connect("/ws", headers=bearer("mat_not-a-token"))
        assert refused.value.status == 401


@pytest.mark.parametrize("mode", ["off", "public", "required"])
async def test_token_socket_gets_its_own_and_mesh_wide_events(aiohttp_client, tmp_path,
                                                              mode):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth=mode) as mesh:
        found = await agents(mesh)
        ids = {k: v["agentId"] for k, v in found.items()}
        # onlyMine=false is not honoured: the token's socket is filtered whatever it asks.
        ws = await connect(mesh, bearer(found["C"]["agentToken"]),
                           path="/ws?onlyMine=false")
        last = await mesh_wide_and_private_events(mesh, ids["A"], ids["B"])
        types = [f["type"] for f in await frames_until(ws, last)]
        assert types == MESH_TYPES
        await send(mesh, ids["A"], ids["C"], "for C")
        assert (await next_event(ws, "new_message"))["message"]["content"] == "for C"
        await send(mesh, ids["C"], ids["B"], "from C")
        assert (await next_event(ws, "new_message"))["message"]["content"] == "from C"
        await ws.close()


@pytest.mark.parametrize("mode", ["off", "public", "required"])
async def test_impersonation_over_the_socket_is_refused(aiohttp_client, tmp_path, mode):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth=mode) as mesh:
        found = await agents(mesh)
        ids = {k: v["agentId"] for k, v in found.items()}
        as_a = bearer(found["A"]["agentToken"])
        with pytest.raises(WSServerHandshakeError) as refused:
            await mesh.client.ws_connect(f"/ws?agentId={ids['B']}", headers=as_a)
        assert refused.value.status == 403
        ws = await connect(mesh, as_a)
        await ws.send_json({"type": "register_agent", "agentId": ids["B"]})
        error = await next_event(ws, "error")
        assert ids["A"] in error["error"] and ids["B"] in error["error"]
        await ws.send_json({"type": "heartbeat"})  # still bound to A: A's heartbeat
        await wait_revived(mesh, ids["A"])
        assert await status_of(mesh, ids["B"]) == "offline"
        await ws.send_json({"type": "register_agent", "agentId": ids["A"]})
        await no_event(ws, "error")
        await ws.close()


async def test_agent_auth_required_stops_binding_without_a_token(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, ws_auth="public",
                         agent_auth="required") as mesh:
        ids = {k: v["agentId"] for k, v in (await agents(mesh)).items()}
        ws = await connect(mesh, SHARED)
        await ws.send_json({"type": "register_agent", "agentId": ids["B"]})
        assert "agent_auth is required" in (await next_event(ws, "error"))["error"]
        await ws.send_json({"type": "heartbeat"})
        await next_event(ws, "error")
        assert await status_of(mesh, ids["B"]) == "offline"
        await ws.close()
