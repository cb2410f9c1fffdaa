"""Liveness and readiness: `/health` answers whenever the loop does (read-only included),
`/readyz` says whether writes are taken."""

from __future__ import annotations

from aiohttp import web

from meshd.api.http import json_response
from meshd.api.keys import storage
from meshd.clock import iso_time

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    reason = storage(request).read_only_reason
    return json_response({
        "status": "ok",
        "service": "agent-mesh-api",
        "timestamp": iso_time(),
        "mode": "read-only" if reason else "read-write",
    })


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    store = storage(request)
    unreachable = getattr(store, "unreachable", None)  # the PostgreSQL backend's state
    if unreachable:
        return json_response({"ready": False, "mode": "unavailable",
                              "reason": f"the database is unreachable: {unreachable}"},
                             status=503, headers={"Retry-After": "5"})
    reason = store.read_only_reason
    if reason:
        return json_response({"ready": False, "mode": "read-only", "reason": reason},
                             status=503, headers={"Retry-After": "5"})
    return json_response({"ready": True, "mode": "read-write"})
