"""Agent tokens: handed out once, stored hashed, enforced when presented (agent_auth
optional), trust on first use for agents that never had one, rotation and revocation."""

from __future__ import annotations

import asyncio
import sqlite3

from meshd.store import tokens
from tests.api.authkit import ADMIN, SHARED, bearer, open_mesh
from tests.conftest import API_KEY


async def test_new_agent_gets_a_token_once_and_only_its_hash_is_stored(aiohttp_client,
                                                                        tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        first = await mesh.register("alpha")
        token = first["agentToken"]
        assert token.startswith(tokens.PREFIX) and len(token) > 40
        again = await mesh.register("alpha")
        assert again["agentId"] == first["agentId"] and again["existed"] is True
        assert "agentToken" not in again  # the shared key is no proof
        with_token = await mesh.register("alpha", bearer(token))
        assert "agentToken" not in with_token and with_token["agentId"] == first["agentId"]
    db = sqlite3.connect(tmp_path / "data" / "mesh.db")
    rows = db.execute("SELECT agent_id, token_hash FROM agent_tokens").fetchall()
    db.close()
    assert rows == [(first["agentId"], tokens.digest(token))]
    assert token not in str(rows)


async def test_optional_mode_enforces_a_presented_token(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        a = await mesh.register("alpha")
        b = await mesh.register("beta")
        as_a = bearer(a["agentToken"])
        inbox_b = f"/api/messages/{b['agentId']}"
        assert (await mesh.call("GET", inbox_b, headers=SHARED))[0] == 200
        status, body = await mesh.call("GET", inbox_b, headers=as_a)
        assert status == 403 and a["agentId"] in body["error"]
        status, _ = await mesh.call("POST", "/api/messages",
                                    {"from": b["agentId"], "to": a["agentId"],
                                     "content": "forged"}, as_a)
        assert status == 403
        status, _ = await mesh.call("POST", "/api/messages",
                                    {"from": a["agentId"], "to": b["agentId"],
                                     "content": "hi"}, as_a)
        assert status == 200
        # The shared key beside a token widens nothing: the token decides.
        status, _ = await mesh.call("GET", inbox_b, headers={**as_a, **SHARED})
        assert status == 403
        status, _ = await mesh.call("GET", inbox_b,
                                    headers={"X-API-Key": a["agentToken"],
                                             "Authorization": f"Bearer {API_KEY}"})
        assert status == 403
        status, body = await mesh.call("GET", "/api/agents",
                                       headers=bearer(tokens.PREFIX + "forged"))
        assert status == 401 and body["error"] == "Invalid or revoked agent token"


async def test_trust_on_first_use_for_an_agent_without_a_token(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, agent_auth="off") as mesh:
        legacy = await mesh.register("legacy")  # as if migrated from the Node server
        assert "agentToken" not in legacy
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        first = await mesh.register("legacy")
        assert first["agentId"] == legacy["agentId"] and first["agentToken"]
        second = await mesh.register("legacy")
        assert "agentToken" not in second


async def test_required_mode_gives_tokens_to_old_agents_only_through_the_admin_key(
        aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, agent_auth="off") as mesh:
        legacy = await mesh.register("legacy")
    async with open_mesh(aiohttp_client, tmp_path, agent_auth="required") as mesh:
        status, body = await mesh.call("POST", "/api/agents/register", {"name": "legacy"},
                                       SHARED)
        assert status == 403 and "admin key" in body["error"]
        new = await mesh.register("fresh")  # a new name needs no proof
        assert new["agentToken"]
        status, body = await mesh.call("POST", "/api/agents/register", {"name": "legacy"},
                                       ADMIN)
        assert status == 200 and body["agentId"] == legacy["agentId"] and body["agentToken"]
        status, body = await mesh.call("POST", "/api/agents/register", {"name": "legacy"},
                                       ADMIN)
        assert status == 200 and "agentToken" not in body  # it has an active one now
        status, _ = await mesh.call("POST", "/api/agents/register", {"name": "legacy"},
                                    bearer(new["agentToken"]))
        assert status == 403  # one agent's token cannot re-register another


async def test_rotation_and_revocation(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        a = await mesh.register("alpha")
        b = await mesh.register("beta")
        route = f"/api/agents/{a['agentId']}/token"
        assert (await mesh.call("POST", route, headers=SHARED))[0] == 403
        assert (await mesh.call("POST", route, headers=bearer(b["agentToken"])))[0] == 403
        status, rotated = await mesh.call("POST", route, headers=bearer(a["agentToken"]))
        assert status == 200 and rotated["agentToken"] != a["agentToken"]
        assert (await mesh.call("GET", "/api/agents", headers=bearer(a["agentToken"])))[0] \
            == 401
        new = bearer(rotated["agentToken"])
        assert (await mesh.call("GET", "/api/agents", headers=new))[0] == 200
        status, _ = await mesh.call("DELETE", route, headers=new)
        assert status == 200
        assert (await mesh.call("GET", "/api/agents", headers=new))[0] == 401
        assert (await mesh.call("DELETE", route, headers=ADMIN))[0] == 404  # none active
        # Revoked is not "never had one": the shared key gets no new token by registering.
        again = await mesh.register("alpha")
        assert "agentToken" not in again
        status, body = await mesh.call("POST", route, headers=ADMIN)
        assert status == 200 and body["agentToken"]
        status, _ = await mesh.call("POST", "/api/agents/nobody/token", headers=ADMIN)
        assert status == 404


async def test_agent_auth_off_hands_out_no_tokens(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path, agent_auth="off") as mesh:
        a = await mesh.register("alpha")
        assert "agentToken" not in a
        status, body = await mesh.call("POST", f"/api/agents/{a['agentId']}/token",
                                       headers=ADMIN)
        assert status == 409 and "off" in body["error"]


async def test_file_and_memory_deletes_default_to_the_tokens_agent(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        a = await mesh.register("alpha")
        as_a = bearer(a["agentToken"])
        up = await mesh.ok("POST", "/api/files/upload",
                           {"agentId": a["agentId"], "filename": "f", "fileData": "eA=="},
                           as_a)
        group = await mesh.ok("POST", "/api/groups", {"name": "g", "createdBy": a["agentId"]})
        await mesh.ok("POST", f"/api/groups/{group['groupId']}/members",
                      {"agentId": a["agentId"]})
        await mesh.ok("POST", f"/api/groups/{group['groupId']}/memory",
                      {"agentId": a["agentId"], "key": "k", "value": 1}, as_a)
        assert (await mesh.call("DELETE", f"/api/files/{up['fileId']}", None, as_a))[0] == 200
        status, _ = await mesh.call("DELETE", f"/api/groups/{group['groupId']}/memory/k",
                                    None, as_a)
        assert status == 200


async def test_cors_stays_open_by_default_and_can_be_narrowed(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        resp = await mesh.client.get("/health", headers={"Origin": "https://x.example"})
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in resp.headers
    async with open_mesh(aiohttp_client, tmp_path,
                         cors_origins="https://ui.example, http://localhost:5173") as mesh:
        resp = await mesh.client.options("/api/agents",
                                         headers={"Origin": "https://ui.example"})
        assert resp.headers["Access-Control-Allow-Origin"] == "https://ui.example"
        assert resp.headers["Vary"] == "Origin"
        resp = await mesh.client.get("/api/agents", headers={"Origin": "https://evil.example",
                                                             **SHARED})
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_a_token_header_that_is_not_utf8_is_a_json_400_not_a_500(aiohttp_client, tmp_path):
    async with open_mesh(aiohttp_client, tmp_path) as mesh:
        server = mesh.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /api/agents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer mat_\xff\xfe\r\n\r\n")
        await writer.drain()
        reply = await reader.read()
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        # Refused before any credential is looked at (tests/api/test_hostile.py has every
        # header meshd reads), and nothing of the header is echoed.
        assert head.startswith(b"HTTP/1.1 400"), reply[:300]
        assert body == b'{"error":"the Authorization header is not valid UTF-8"}'

