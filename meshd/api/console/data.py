"""What the console shows, gathered per request from the store, the supervisor's status and
the enforcement state: a view over the same sources as the API, with no logic of its own."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from meshd import log as logging
from meshd.api import enforcement
from meshd.api.keys import SETTINGS, STORAGE, SUPERVISOR
from meshd.api.metrics import journal_bytes
from meshd.clock import db_time_ago
from meshd.errors import MeshError
from meshd.store import console as console_store

log = logging.get("meshd.console")

PANELS = ("service", "events", "health", "updates", "agents", "messages", "skills", "files")
STATUS_TIMEOUT = 2.0


def capabilities(raw: Any) -> list[str]:
    """The stored JSON text as a list of strings to show (anything else shown as text)."""
    if raw is None:
        return []
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        return [str(raw)]
    if isinstance(value, list):
        return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]
    return [orjson.dumps(value).decode()]


def service_state(read_only_reason: str | None, status: dict | None) -> dict[str, Any]:
    """read-write, read-only or restoring, with the reason."""
    if status and status.get("state") == "restoring":
        return {"mode": "restoring", "reason": status.get("reason")}
    if read_only_reason:
        return {"mode": "read-only", "reason": read_only_reason}
    return {"mode": "read-write", "reason": None}


async def _supervisor_status(request: web.Request) -> dict | None:
    client = request.app[SUPERVISOR]
    if not client.supervised:
        return None
    try:
        status, body = await client.call("GET", "/status", timeout=STATUS_TIMEOUT)
    except MeshError as exc:
        log.warning("console.status_unavailable", error=exc.message)
        return None
    return body if status == 200 and isinstance(body, dict) else None


async def gather(request: web.Request) -> dict[str, Any]:
    app = request.app
    settings = app[SETTINGS]
    storage = app[STORAGE]
    snap = await storage.read(console_store.snapshot, db_time_ago(settings.heartbeat_timeout))
    for agent in snap["agents"]:
        agent["capability_list"] = capabilities(agent["capabilities"])
    for event in snap["events"]:
        event["affected"] = capabilities(event.get("affected_agents"))
    state = await enforcement.current(app)
    status = await _supervisor_status(request)
    return {
        **snap,
        "service": service_state(storage.read_only_reason, status),
        "supervisor": status,
        "supervised": app[SUPERVISOR].supervised,
        "database_bytes": storage.file_size(),
        "journal_bytes": journal_bytes(storage.journal_dir),
        "journal_seq": storage.journal_seq,
        "min_version": state.required,
        "min_version_update": state.update_id,
        "rendered_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
