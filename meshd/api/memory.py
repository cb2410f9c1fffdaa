"""Collective memory routes: versioned upsert, list, get, delete and history of group keys.

Keys may contain `/`; clients reach such a key as `%2F` inside one path segment.
"""

from __future__ import annotations

from aiohttp import web

from meshd import log as logging
from meshd.api import auth
from meshd.api.http import (
    MISSING,
    dumps,
    json_response,
    optional_text,
    paging,
    parse_json_column,
    query_text,
    read_body,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, storage
from meshd.clock import db_time
from meshd.errors import Invalid, NotFound
from meshd.store import memory as store
from meshd.store.events import Event, emitting

routes = web.RouteTableDef()
log = logging.get("meshd.memory")

MAX_KEYS = 500


def public_memory(row: dict) -> dict:
    return {**row, "value": parse_json_column(row["value"])}


def public_change(row: dict) -> dict:
    return {"version": row["version"], "value": parse_json_column(row["value"]),
            "memoryType": row["memory_type"], "agentId": row["agent_id"],
            "change": row["change"], "changedAt": row["changed_at"]}


@routes.post("/api/groups/{groupId}/memory")
async def upsert_memory(request: web.Request) -> web.Response:
    group_id = request.match_info["groupId"]
    body = await read_body(request)
    value = body.get("value", MISSING)
    if not truthy(body.get("agentId")) or not truthy(body.get("key")) or value is MISSING:
        raise Invalid("agentId, key, and value are required")
    agent_id = text(body["agentId"], "agentId")
    key = text(body["key"], "key")
    memory_type = optional_text(body, "memoryType")

    def updated(result: tuple[str, int, list[str]]) -> list[Event]:
        memory_id, _version, audience = result
        return [Event("memory_updated", {"groupId": group_id, "memoryId": memory_id,
                                         "key": body["key"], "agentId": body["agentId"]},
                      audience)]

    memory_id, version, _audience = await storage(request).write(
        emitting(store.upsert, updated), group_id, agent_id, key, dumps(value).decode(),
        memory_type, db_time())
    request[AGENT_ID] = agent_id
    return json_response({"success": True, "memoryId": memory_id, "version": version})


@routes.get("/api/groups/{groupId}/memory")
async def list_memory(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    raw_keys = query_text(request, "keys")
    keys = raw_keys.split(",") if raw_keys else None
    if keys and len(keys) > MAX_KEYS:
        raise Invalid(f"keys must list at most {MAX_KEYS} keys")
    rows = await storage(request).read(
        store.list_for_group, request.match_info["groupId"], keys,
        query_text(request, "memoryType"), limit, offset)
    return json_response([public_memory(r) for r in rows])


@routes.get("/api/groups/{groupId}/memory/{key}")
async def get_memory(request: web.Request) -> web.Response:
    row = await storage(request).read(
        store.get, request.match_info["groupId"], request.match_info["key"])
    if row is None:
        raise NotFound("Memory key not found")
    return json_response(public_memory(row))


@routes.delete("/api/groups/{groupId}/memory/{key}")
async def delete_memory(request: web.Request) -> web.Response:
    group_id = request.match_info["groupId"]
    key = request.match_info["key"]
    body = await read_body(request)
    # The Node server read only the JSON body; the query and header serve clients whose
    # HTTP library cannot send a body with DELETE.
    candidate = body.get("agentId")
    if not truthy(candidate):
        candidate = (query_text(request, "agentId") or request.headers.get("X-Agent-Id")
                     or auth.token_agent(request))
    if not truthy(candidate):
        raise Invalid("agentId is required")
    agent_id = text(candidate, "agentId")
    await storage(request).write(
        emitting(store.delete, lambda audience: [Event("memory_deleted", {
            "groupId": group_id, "key": key, "agentId": candidate}, audience)]),
        group_id, key, agent_id, db_time())
    request[AGENT_ID] = agent_id
    log.info("memory.deleted", group_id=group_id, key=key, agent_id=agent_id)
    return json_response({"success": True, "message": "Memory deleted successfully"})


@routes.get("/api/groups/{groupId}/memory/{key}/history")
async def memory_history(request: web.Request) -> web.Response:
    found = await storage(request).read(
        store.history, request.match_info["groupId"], request.match_info["key"])
    if found is None:
        raise NotFound("Memory key not found")
    row, changes = found
    return json_response({"key": row["key"], "currentVersion": row["version"],
                          "lastUpdated": row["updated_at"], "lastUpdatedBy": row["agent_id"],
                          "versions": [public_change(c) for c in changes]})
