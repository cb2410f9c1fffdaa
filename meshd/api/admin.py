"""Operator routes: list, run (or dry-run), inspect and abort recovery protocols.

They need the operator key (`X-Admin-Key`, the `admin_key` setting), never the agents' key:
an agent must not be able to trigger a restore. Runs live in the supervisor; these routes ask
it over the control socket.
"""

from __future__ import annotations

from aiohttp import web

from meshd.api.http import json_response, read_body
from meshd.api.keys import settings, supervisor
from meshd.api.middleware import key_matches
from meshd.errors import Forbidden, Invalid, MeshError, NotFound
from meshd.recovery.protocols import PROTOCOLS, catalog, dry_run

routes = web.RouteTableDef()


def _require_admin(request: web.Request) -> None:
    expected = settings(request).admin_key
    if not expected:
        raise Forbidden("the admin API is disabled: set admin_key to enable it")
    if not key_matches(request.headers.get("X-Admin-Key"), expected):
        raise Forbidden("Invalid or missing admin key")


async def _ask(request: web.Request, method: str, path: str, body=None) -> web.Response:
    status, data = await supervisor(request).call(method, path, body)
    if status >= 400:
        error = MeshError(data.get("error", "the supervisor refused"))
        error.status = status
        raise error
    return json_response(data)


@routes.get("/api/admin/protocols")
async def list_protocols(request: web.Request) -> web.Response:
    _require_admin(request)
    return json_response({"protocols": catalog(tuple(PROTOCOLS))})


@routes.post("/api/admin/protocols/{name}/run")
async def run_protocol(request: web.Request) -> web.Response:
    _require_admin(request)
    name = request.match_info["name"]
    if name not in PROTOCOLS:
        raise NotFound(f"no protocol {name}; one of {', '.join(PROTOCOLS)}")
    body = await read_body(request)
    if body.get("dryRun") is True:
        return json_response({"protocol": name, "dryRun": True, "steps": dry_run(name)})
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise Invalid("context must be an object")
    reason = body.get("reason") or "started through the admin API"
    return await _ask(request, "POST", f"/control/protocols/{name}/run",
                      {"reason": str(reason), "context": context})


@routes.get("/api/admin/protocols/runs")
async def list_runs(request: web.Request) -> web.Response:
    _require_admin(request)
    return await _ask(request, "GET", "/control/runs")


@routes.get("/api/admin/protocols/runs/{runId}")
async def get_run(request: web.Request) -> web.Response:
    _require_admin(request)
    return await _ask(request, "GET", f"/control/runs/{request.match_info['runId']}")


@routes.post("/api/admin/protocols/runs/{runId}/abort")
async def abort_run(request: web.Request) -> web.Response:
    _require_admin(request)
    body = await read_body(request)
    return await _ask(request, "POST", f"/control/runs/{request.match_info['runId']}/abort",
                      {"reason": str(body.get("reason") or "aborted through the admin API")})
