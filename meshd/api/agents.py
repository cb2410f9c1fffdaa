"""Agent registry routes: register (identity kept by name, a token handed out once), list,
get."""

from __future__ import annotations

from aiohttp import web

from meshd import log as logging
from meshd.api import auth
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
from meshd.api.keys import AGENT_ID, settings, storage
from meshd.api.snapshots import SNAPSHOTS
from meshd.clock import db_time
from meshd.errors import Invalid, NotFound
from meshd.store import agents as store
from meshd.store import tokens
from meshd.store.events import Event, emitting

log = logging.get("meshd.agents")

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
    identity = await auth.identify(request)
    agent_auth = settings(request).agent_auth
    token = tokens.new_token()  # made here, not in the write: the journal replays statements
    grants: list[str | None] = []

    def grant(existing: str | None, token_state: str | None) -> str | None:
        grants.append(auth.registration_grant(identity, existing, token_state, agent_auth))
        return grants[-1]

    def joined(done: tokens.Registration) -> list[Event]:
        if done.existed:
            return []
        agent = {"id": done.agent_id, "name": body["name"],
                 **{key: body[key] for key in ("endpoint", "capabilities") if key in body}}
        return [Event("agent_joined", {"agent": agent})]

    done = await storage(request).write(
        emitting(tokens.register, joined), name, endpoint, caps_json, db_time(),
        tokens.digest(token), grant)
    agent_id = done.agent_id
    request[AGENT_ID] = agent_id
    issued = {"agentToken": token} if done.token_issued else {}
    if done.token_issued and grants[-1] != "new":
        # Trust on first use, or the operator's hand: either is worth a line in the log.
        log.info("token.issued", agent_id=agent_id, grant=grants[-1], by=identity.kind)
    if done.existed:
        return json_response({"success": True, "agentId": agent_id,
                              "message": "Agent re-registered with existing ID",
                              "existed": True, **issued})
    return json_response({"success": True, "agentId": agent_id,
                          "message": "Agent registered successfully", "existed": False,
                          **issued})


@routes.get("/api/agents")
async def list_agents(request: web.Request) -> web.Response:
    """Encoded once per change of the agents table, not per request."""
    limit, offset = paging(request)
    db = storage(request)

    async def build() -> tuple[bytes, None]:
        rows = await db.read(store.list_all, limit, offset)
        return dumps([public_agent(r) for r in rows]), None

    return await request.app[SNAPSHOTS].agents.respond(request, db.versions, (limit, offset),
                                                       build)


@routes.get("/api/agents/{id}")
async def get_agent(request: web.Request) -> web.Response:
    row = await storage(request).read(store.get, request.match_info["id"])
    if row is None:
        raise NotFound("Agent not found")
    return json_response(public_agent(row))
