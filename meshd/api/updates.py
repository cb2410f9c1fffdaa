"""System update routes: announce (WebSocket `system_update`), list, get, acknowledge (one row
per agent and update), the acknowledgments and the adoption among active agents.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd import semver
from meshd.api.http import (
    json_response,
    optional_text,
    paging,
    query_flag,
    query_text,
    read_body,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, ENFORCEMENT, settings, storage, supervisor
from meshd.clock import db_time, db_time_ago, iso_time, normalize_since, parse_time, utcnow
from meshd.errors import Invalid, NotFound
from meshd.store import updates as store
from meshd.store.events import Event, emitting

routes = web.RouteTableDef()

DEFAULT_CREATOR = "DuckBot"  # the Node server wrote this for every update
TIME_FORMATS = "an ISO-8601 or 'YYYY-MM-DD HH:MM:SS' timestamp"
# Request field -> column, for the optional text fields of an update.
OPTIONAL_TEXT = {"description": "description", "requiredVersion": "required_version",
                 "announcement": "announcement"}
# Request field -> column, for the optional fields of an acknowledgment.
ACK_OPTIONAL = {"agentVersion": "agent_version", "notes": "notes"}


def _timestamp(value: Any, name: str) -> str | None:
    """An ISO-8601 or DB-format time as DB text; None for null."""
    if value is None:
        return None
    moment = parse_time(value) if isinstance(value, str) else None
    if moment is None:
        raise Invalid(f"{name} must be {TIME_FORMATS}")
    return db_time(moment)


def _not_found() -> NotFound:
    return NotFound("Update not found")


@routes.post("/api/updates")
async def create_update(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not all(truthy(body.get(k)) for k in ("version", "updateType", "title")):
        raise Invalid("version, updateType, and title are required")
    now = utcnow()
    creator = body.get("createdBy")
    row = {
        "version": text(body["version"], "version"),
        "update_type": text(body["updateType"], "updateType"),
        "title": text(body["title"], "title"),
        **{column: optional_text(body, key) for key, column in OPTIONAL_TEXT.items()},
        # Stored as 0/1 by JS truthiness; the Node server kept "yes" as text (RB-12).
        "breaking_change": 1 if truthy(body.get("breakingChange")) else 0,
        "created_by": text(creator, "createdBy") if truthy(creator) else DEFAULT_CREATOR,
        "created_at": db_time(now),
        "expires_at": _timestamp(body.get("expiresAt"), "expiresAt"),
    }
    breaking = row["breaking_change"] and row["required_version"]
    if breaking and not semver.is_valid(row["required_version"]):
        raise Invalid("requiredVersion must be a semantic version such as 2.0.0")

    def announced(update_id: str) -> list[Event]:
        update = {"id": update_id}
        for key in ("version", "updateType", "title", "description", "requiredVersion",
                    "breakingChange", "announcement"):
            if key in body:
                update[key] = body[key]
        update["createdAt"] = iso_time(now)
        return [Event("system_update", {"update": update})]

    update_id = await storage(request).write(emitting(store.create, announced), row)
    request.app[ENFORCEMENT].refreshed = 0.0  # a new requirement is seen at once
    if breaking:
        supervisor(request).start_protocol(
            "breaking_api_update", f"breaking update {row['version']} requires "
            f"{row['required_version']}", {"update_id": update_id,
                                           "required_version": row["required_version"],
                                           "created_at": row["created_at"]})
    return json_response({"success": True, "updateId": update_id, "broadcast": True,
                          "message": "System update created and broadcasted"})


@routes.get("/api/updates")
async def list_updates(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    since = query_text(request, "since")
    if since:
        since = normalize_since(since)
        if since is None:
            raise Invalid(f"since must be {TIME_FORMATS}")
    active_at = db_time() if query_flag(request, "activeOnly") else None
    rows = await storage(request).read(store.list_updates, since, active_at, limit, offset)
    return json_response(rows)


@routes.get("/api/updates/{id}")
async def get_update(request: web.Request) -> web.Response:
    row = await storage(request).read(store.get, request.match_info["id"])
    if row is None:
        raise _not_found()
    return json_response(row)


@routes.post("/api/updates/{id}/acknowledge")
async def acknowledge(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not (truthy(body.get("agentId")) and truthy(body.get("status"))):
        raise Invalid("agentId and status are required")
    agent_id = text(body["agentId"], "agentId")
    status = text(body["status"], "status")
    if status not in store.ACK_STATUSES:
        raise Invalid(f"status must be one of {', '.join(store.ACK_STATUSES)}")
    request[AGENT_ID] = agent_id
    # A repeat keeps the stored version and notes unless the client sends them.
    changes = {"status": status}
    changes.update({column: optional_text(body, key)
                    for key, column in ACK_OPTIONAL.items() if key in body})
    ack_id = await storage(request).write(
        store.acknowledge, request.match_info["id"], agent_id, changes, db_time())
    request.app[ENFORCEMENT].note_version(agent_id, changes.get("agent_version"))
    return json_response({"success": True, "message": "Update acknowledged",
                          "acknowledgmentId": ack_id})


@routes.get("/api/updates/{id}/acknowledgments")
async def list_acknowledgments(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    rows = await storage(request).read(
        store.acknowledgments, request.match_info["id"], limit, offset)
    return json_response(rows)


@routes.get("/api/updates/{id}/adoption")
async def adoption(request: web.Request) -> web.Response:
    """Who took an update: acknowledgment counts by status, and the share of active agents
    (seen within heartbeat_timeout) that accepted or completed it."""
    timeout = settings(request).heartbeat_timeout
    row = await storage(request).read(
        store.adoption, request.match_info["id"], db_time_ago(timeout))
    if row is None:
        raise _not_found()
    active, adopted = row["active"], row["adopted"]
    return json_response({
        "updateId": row["id"],
        "version": row["version"],
        "requiredVersion": row["required_version"],
        "breakingChange": truthy(row["breaking_change"]),
        "activeAgents": active,
        "counts": row["counts"],
        "acknowledged": row["acknowledged"],
        "adopted": adopted,
        "adoptionRate": round(adopted / active, 4) if active else 0.0,
    })
