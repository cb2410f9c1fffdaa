"""Health routes: heartbeat and health posts (shared metric rules), agent health, dashboard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd import semver
from meshd.api.http import dumps, json_response, paging, parse_json_column, read_body
from meshd.api.keys import SETTINGS, storage
from meshd.api.snapshots import SNAPSHOTS
from meshd.clock import db_time, db_time_ago
from meshd.errors import Invalid, NotFound
from meshd.store import health as store
from meshd.store.events import emitting

routes = web.RouteTableDef()

NUMERIC_METRICS = ("uptimeSeconds", "cpuUsage", "memoryUsage")


def health_fields(body: dict) -> dict[str, Any]:
    """The health columns the body sets, validated; fields it leaves out are not included, so
    their stored values stay. A metric of 0 is a value, not a missing one (RB-12)."""
    fields: dict[str, Any] = {}
    status = body.get("status")
    if status is not None:
        if status not in store.STATUSES:
            raise Invalid(f"status must be one of {', '.join(store.STATUSES)}")
        fields["status"] = status
    for key in NUMERIC_METRICS:
        if key not in body:
            continue
        value = body[key]
        # Integers beyond 64 bits arrive as floats already (read_body), as Node reads them.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Invalid(f"{key} must be a number or null")
        fields[store.METRIC_COLUMNS[key]] = value
    if "customMetrics" in body:
        custom = body["customMetrics"]
        if custom is None:
            custom = {}
        if not isinstance(custom, dict):
            raise Invalid("customMetrics must be an object")
        fields["custom_metrics"] = dumps(custom).decode()
    return fields


def _metrics(body: dict) -> dict:
    """The metric fields as sent, for the `agent_health_change` event."""
    return {k: body[k] for k in store.METRIC_COLUMNS if k in body}


def _number(value: Any) -> Any:
    """REAL columns give 45.0 where the Node server printed 45; a whole float beyond 64-bit
    integers stays a float (1e+20), which orjson can write."""
    whole = isinstance(value, float) and value.is_integer() and abs(value) < 2**63
    return int(value) if whole else value


def reported_version(request: web.Request) -> str | None:
    """The agent's version from `X-Agent-Version` (kept when it is a semantic version): what
    adoption of an update or a roll-back is counted from."""
    version = request.headers.get("X-Agent-Version")
    return version if version and semver.is_valid(version) else None


@routes.post("/api/agents/{id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    """Refreshes last_seen; metrics in the body update the health row. Broadcasts only when
    the agent's health status changes (a first report, or coming back from offline)."""
    agent_id = request.match_info["id"]
    body = await read_body(request)
    fields = health_fields(body)
    await storage(request).write(
        emitting(store.record, store.change_events(agent_id, _metrics(body), always=False)), agent_id, fields,
        db_time(), False, reported_version(request))
    return json_response({"success": True})


@routes.post("/api/agents/{id}/health")
async def post_health(request: web.Request) -> web.Response:
    agent_id = request.match_info["id"]
    body = await read_body(request)
    fields = health_fields(body)
    await storage(request).write(
        emitting(store.record, store.change_events(agent_id, _metrics(body), always=True)), agent_id, fields,
        db_time(), True, reported_version(request))
    return json_response({"success": True, "message": "Health status updated"})


@routes.get("/api/agents/{id}/health")
async def get_health(request: web.Request) -> web.Response:
    row = await storage(request).read(store.get, request.match_info["id"])
    if row is None:
        raise NotFound("Health status not found")
    return json_response({
        "agentId": row["agent_id"],
        "status": row["status"],
        "lastHeartbeat": row["last_heartbeat"],
        "uptimeSeconds": _number(row["uptime_seconds"]),
        "cpuUsage": _number(row["cpu_usage"]),
        "memoryUsage": _number(row["memory_usage"]),
        "customMetrics": parse_json_column(row["custom_metrics"]),
        "lastUpdated": row["last_updated"],
    })


@routes.get("/api/health/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    """Served from a snapshot encoded once per change: a write to the tables it reads, or an
    agent crossing the heartbeat timeout (the one change the clock makes)."""
    limit, offset = paging(request)
    timeout = request.app[SETTINGS].heartbeat_timeout
    db = storage(request)

    async def build() -> tuple[bytes, Callable[[], bool] | None]:
        data = await db.read(store.dashboard, db_time_ago(timeout), limit, offset)
        next_offline = data["next_offline"]
        still_valid = None if next_offline is None else (
            lambda: db_time_ago(timeout) <= next_offline)
        return dumps(dashboard_body(data)), still_valid

    return await request.app[SNAPSHOTS].dashboard.respond(request, db.versions,
                                                          (limit, offset), build)


def dashboard_body(data: dict[str, Any]) -> dict[str, Any]:
    counts = data["counts"]
    last = data["last_catastrophe"]
    number = _number
    return {
        "totalAgents": sum(counts.values()),
        **{status: counts.get(status, 0) for status in store.STATUSES},
        "unknown": counts.get("unknown", 0),
        "criticalEvents": data["critical_events"],
        "lastCatastrophe": (
            {**last, "affectedAgents": parse_json_column(last["affected_agents"])}
            if last else None
        ),
        "agentList": [{
            "agentId": r["agent_id"],
            "name": r["name"],
            "endpoint": r["endpoint"],
            "status": r["status"],
            "uptimeSeconds": number(r["uptime_seconds"]),
            "cpuUsage": number(r["cpu_usage"]),
            "memoryUsage": number(r["memory_usage"]),
            "lastSeen": r["last_seen"],
            "lastUpdated": r["last_updated"],
        } for r in data["agents"]],
    }
