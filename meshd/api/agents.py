"""Agent registry routes: register (identity kept by name), list, get, heartbeat."""

from __future__ import annotations

from aiohttp import web

from meshd.api.http import (
    MISSING,
    dumps,
    json_response,
    paging,
    parse_json_column,
    read_body,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, hub, storage
from meshd.api.snapshots import SNAPSHOTS, encoded_response
from meshd.clock import db_time
from meshd.errors import Invalid, NotFound
from meshd.store import agents as store

routes = web.RouteTableDef()


def public_agent(row: dict) -> dict:
    return {**row, "capabilities": parse_json_column(row["capabilities"])}


@routes.post("/api/agents/register")
async def register(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not truthy(body.get("name")):
        raise Invalid("Name is required")
    name = text(body["name"], "name")
    endpoint = body.get("endpoint")
    endpoint = text(endpoint, "endpoint") if truthy(endpoint) else None
    capabilities = body.get("capabilities", MISSING)
    # Absent capabilities keep the stored ones (the Node server wiped them, RB-12).
    caps_json = None if capabilities is MISSING else dumps(capabilities or []).decode()
    agent_id, existed = await storage(request).write(
        store.register, name, endpoint, caps_json, db_time())
    request[AGENT_ID] = agent_id
    if existed:
        return json_response({"success": True, "agentId": agent_id,
                              "message": "Agent re-registered with existing ID",
                              "existed": True})
    agent = {"id": agent_id, "name": body["name"]}
    for key in ("endpoint", "capabilities"):
        if key in body:
            agent[key] = body[key]
    hub(request).publish({"type": "agent_joined", "agent": agent})
    return json_response({"success": True, "agentId": agent_id,
                          "message": "Agent registered successfully", "existed": False})


@routes.get("/api/agents")
async def list_agents(request: web.Request) -> web.Response:
    """Encoded once per change of the agents table, not per request."""
    limit, offset = paging(request)
    db = storage(request)

    async def build() -> tuple[bytes, None]:
        rows = await db.read(store.list_all, limit, offset)
        return dumps([public_agent(r) for r in rows]), None

    body = await request.app[SNAPSHOTS].agents.body(db.versions, (limit, offset), build)
    return encoded_response(body)


@routes.get("/api/agents/{id}")
async def get_agent(request: web.Request) -> web.Response:
    row = await storage(request).read(store.get, request.match_info["id"])
    if row is None:
        raise NotFound("Agent not found")
    return json_response(public_agent(row))
