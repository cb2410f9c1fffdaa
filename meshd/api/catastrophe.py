"""Catastrophe routes: report (broadcast as catastrophe_alert), protocols, get, list, resolve."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from meshd.api.http import (
    json_response,
    optional_text,
    paging,
    parse_json_column,
    query_text,
    read_body,
    text,
    truthy,
)
from meshd.api.keys import storage
from meshd.clock import db_time, iso_time, utcnow
from meshd.errors import Invalid, NotFound
from meshd.recovery.protocols import catalog
from meshd.store import catastrophe as store
from meshd.store.events import Event, emitting

routes = web.RouteTableDef()


def public_event(row: dict) -> dict:
    """The row as stored (affected_agents still JSON text) plus `affectedAgents` parsed."""
    return {**row, "affectedAgents": parse_json_column(row["affected_agents"])}


def _choice(body: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = body[key]
    if value not in allowed:
        raise Invalid(f"{key} must be one of {', '.join(allowed)}")
    return value


def _affected_agents(body: dict) -> list[str]:
    value = body.get("affectedAgents")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid("affectedAgents must be an array of agent ids")
    return value


@routes.post("/api/catastrophe")
async def report(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not all(truthy(body.get(k)) for k in ("eventType", "severity", "title")):
        raise Invalid("eventType, severity, and title are required")
    fields: dict[str, Any] = {
        "event_type": _choice(body, "eventType", store.EVENT_TYPES),
        "severity": _choice(body, "severity", store.SEVERITIES),
        "title": text(body["title"], "title"),
        "description": optional_text(body, "description"),
        "recovery_protocol": optional_text(body, "recoveryProtocol"),
        "affected_agents": _affected_agents(body),
    }
    moment = utcnow()

    def alert(event_id: str) -> list[Event]:
        """The Node contract's echo of the request (fields as sent), not a row's alert."""
        alert: dict[str, Any] = {"id": event_id, "eventType": body["eventType"],
                                 "severity": body["severity"], "title": body["title"]}
        for key in ("description", "recoveryProtocol"):
            if key in body:
                alert[key] = body[key]
        alert["occurredAt"] = iso_time(moment)
        if "affectedAgents" in body:
            alert["affectedAgents"] = body["affectedAgents"]
        alert["status"] = store.ACTIVE
        return [Event("catastrophe_alert", {"catastrophe": alert})]

    event_id = await storage(request).write(
        emitting(partial(store.create_event, now=db_time(moment), **fields), alert))
    return json_response({"success": True, "eventId": event_id, "broadcast": True,
                          "message": "Catastrophe event reported and broadcasted"})


# Declared before /{id} so that "protocols" is never taken for an event id.
@routes.get("/api/catastrophe/protocols")
async def protocols(request: web.Request) -> web.Response:
    return json_response(catalog())


@routes.get("/api/catastrophe/{id}")
async def get_event(request: web.Request) -> web.Response:
    row = await storage(request).read(store.get_event, request.match_info["id"])
    if row is None:
        raise NotFound("Catastrophe event not found")
    return json_response(public_event(row))


@routes.get("/api/catastrophe/{id}/runs")
async def event_runs(request: web.Request) -> web.Response:
    """The protocol runs working on one event: what an agent sees of its recovery."""
    event_id = request.match_info["id"]
    db = storage(request)
    if await db.read(store.get_event, event_id) is None:
        raise NotFound("Catastrophe event not found")
    return json_response(await db.read(store.runs_for_event, event_id))


@routes.get("/api/catastrophe")
async def list_events(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    rows = await storage(request).read(
        store.list_events, query_text(request, "status"), query_text(request, "severity"),
        limit, offset)
    return json_response([public_event(r) for r in rows])


@routes.post("/api/catastrophe/{id}/resolve")
async def resolve(request: web.Request) -> web.Response:
    body = await read_body(request)
    notes = optional_text(body, "resolutionNotes")
    await storage(request).write(
        store.set_status, request.match_info["id"], store.RESOLVED, db_time(), notes)
    return json_response({"success": True, "message": "Catastrophe resolved"})
