"""Agent token routes: rotate (a new token, the old one stops working) and revoke.

Both need the agent's own current token or the admin key (auth.Scope.OWNER); the shared key
never reaches them, so whoever holds only it cannot take an agent's identity over.
"""

from __future__ import annotations

from aiohttp import web

from meshd import log as logging
from meshd.api.auth import IDENTITY
from meshd.api.http import json_response
from meshd.api.keys import AGENT_ID, settings, storage
from meshd.clock import db_time
from meshd.errors import Conflict, NotFound
from meshd.store import agents as agents_store
from meshd.store import tokens as store

log = logging.get("meshd.tokens")

routes = web.RouteTableDef()


async def _known_agent(request: web.Request) -> str:
    agent_id = request.match_info["id"]
    request[AGENT_ID] = agent_id
    if settings(request).agent_auth == "off":
        raise Conflict("agent_auth is off: meshd hands out no agent tokens")
    if not await storage(request).read(agents_store.exists, agent_id):
        raise NotFound("Agent not found")
    return agent_id


@routes.post("/api/agents/{id}/token")
async def rotate(request: web.Request) -> web.Response:
    agent_id = await _known_agent(request)
    token = store.new_token()
    await storage(request).write(store.issue, agent_id, store.digest(token), db_time(), True)
    log.info("token.rotated", agent_id=agent_id, by=request[IDENTITY].kind)
    return json_response({"success": True, "agentId": agent_id, "agentToken": token})


@routes.delete("/api/agents/{id}/token")
async def revoke(request: web.Request) -> web.Response:
    agent_id = await _known_agent(request)
    if not await storage(request).write(store.revoke, agent_id, db_time()):
        raise NotFound("Agent has no active token")
    log.info("token.revoked", agent_id=agent_id, by=request[IDENTITY].kind)
    return json_response({"success": True, "agentId": agent_id,
                          "message": "Token revoked; only the admin key can issue a new one"})
