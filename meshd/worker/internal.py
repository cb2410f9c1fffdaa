"""The worker's private routes on `data/worker.sock`, for its supervisor only (mode 0600).

The supervisor never writes SQL while a worker runs: what it needs recorded or announced
(catastrophe events, mode changes, WebSocket alerts) it sends here, and the worker's single
writer journals it like any other write.
"""

from __future__ import annotations

import os
import time

from aiohttp import web

from meshd import log as logging
from meshd.api.http import json_response, read_body
from meshd.api.keys import HUB, SETTINGS, STORAGE
from meshd.clock import db_time
from meshd.control import server as control_server
from meshd.errors import Invalid, MeshError
from meshd.store import records
from meshd.store.events import Event, emit_only
from meshd.worker.leadership import Lease

log = logging.get("meshd.internal")
routes = web.RouteTableDef()
STARTED = web.AppKey("started", float)
LEASE = web.AppKey("lease", Lease)


@routes.get("/internal/status")
async def status(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    counts = await storage.read(records.counts)
    reason = storage.read_only_reason
    return json_response({
        "pid": os.getpid(),
        "mode": "read-only" if reason else "read-write",
        "reason": reason,
        "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
        "journal_seq": storage.journal_seq,
        "ws_clients": len(request.app[HUB].clients),
        "leader": request.app[LEASE].leads(),
        **counts,
    })


@routes.post("/internal/leader")
async def set_leader(request: web.Request) -> web.Response:
    """The supervisor's lease: whether this worker runs the once-per-mesh jobs, and until
    when (a CLOCK_MONOTONIC deadline)."""
    body = await read_body(request)
    leads, until = body.get("leader"), body.get("until_monotonic")
    if not isinstance(leads, bool):
        raise Invalid("leader must be true or false")
    lease = request.app[LEASE]
    if leads:
        if not isinstance(until, int | float) or isinstance(until, bool):
            raise Invalid("until_monotonic must be a number when leader is true")
        lease.grant(float(until))
    else:
        lease.revoke()
    return json_response({"leader": lease.leads()})


@routes.post("/internal/mode")
async def set_mode(request: web.Request) -> web.Response:
    body = await read_body(request)
    mode = body.get("mode")
    if mode == "read-only":
        request.app[STORAGE].set_read_only(str(body.get("reason") or "set by the supervisor"))
    elif mode == "read-write":
        request.app[STORAGE].set_read_only(None)
    else:
        raise Invalid("mode must be read-only or read-write")
    log.info("worker.mode_changed", mode=mode, reason=body.get("reason"))
    return json_response({"mode": mode})


@routes.post("/internal/records")
async def apply_records(request: web.Request) -> web.Response:
    """Apply the supervisor's queued records (idempotent: each carries its own id)."""
    body = await read_body(request, limit=8 << 20)
    items = body.get("records")
    if not isinstance(items, list):
        raise Invalid("records must be a list")
    storage = request.app[STORAGE]
    # Records are what the supervisor recorded while it could not write: they must land even
    # when the API refuses writes (read-only after a restore).
    await storage.write_internal(records.apply_all, items)
    return json_response({"applied": len(items)})


@routes.post("/internal/selftest")
async def self_test(request: web.Request) -> web.Response:
    """Exercise the write path in a transaction that is rolled back: register an agent,
    refresh it, read it back. Works in read-only mode; leaves no trace."""
    storage = request.app[STORAGE]
    started = time.monotonic()
    result = await storage.trial(records.self_test, db_time())
    problems = await storage.check(full=False)
    if problems:
        raise MeshError(f"quick_check failed: {problems[:3]}")
    return json_response({"ok": True, "checks": result,
                          "seconds": round(time.monotonic() - started, 3)})


@routes.post("/internal/publish")
async def publish(request: web.Request) -> web.Response:
    body = await read_body(request)
    event = body.get("event")
    if not isinstance(event, dict) or "type" not in event:
        raise Invalid("event must be an object with a type")
    audience = body.get("audience")
    storage = request.app[STORAGE]
    payload = {k: v for k, v in event.items() if k != "type"}
    try:
        # Through a write, so the event gets its row and id like any other; meshd's own
        # record, so read-only mode does not refuse it.
        await storage.write_internal(emit_only, Event(event["type"], payload, audience))
    except MeshError as exc:
        log.info("publish.without_event_row", reason=exc.message)
        request.app[HUB].publish(event, audience)
    return json_response({"published": True})


def make_internal_app(public: web.Application, lease: Lease) -> web.Application:
    """The private app, served with the control socket's framing and error convention."""
    app = control_server.make_app(routes)
    for key in (STORAGE, HUB, SETTINGS):
        app[key] = public[key]
    app[STARTED] = time.monotonic()
    app[LEASE] = lease
    return app
