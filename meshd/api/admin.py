"""Operator routes: list, run (or dry-run), inspect and abort recovery protocols.

They need the operator key (`X-Admin-Key`, the `admin_key` setting), never the agents' key:
an agent must not be able to trigger a restore. Runs live in the supervisor; these routes ask
it over the control socket.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from meshd.api import auth
from meshd.api.http import json_response, read_body
from meshd.api.keys import supervisor
from meshd.errors import Invalid, MeshError, NotFound
from meshd.recovery.protocols import PROTOCOLS, catalog, dry_run

routes = web.RouteTableDef()
# Run ids are UUIDs; anything else (`..%2F..%2Fstatus`, `?`) never reaches the control socket.
RUN_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["runId"]
    if not RUN_ID.fullmatch(run_id):
        raise Invalid("runId must be a run id (letters, digits and dashes)")
    return quote(run_id, safe="")


def _require_admin(request: web.Request) -> None:
    auth.require_admin(request)  # also applied by the auth middleware; kept beside the calls


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
    return json_response({"protocols": catalog()})


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
    return await _ask(request, "GET", f"/control/runs/{_run_id(request)}")


@routes.post("/api/admin/protocols/runs/{runId}/abort")
async def abort_run(request: web.Request) -> web.Response:
    _require_admin(request)
    run_id = _run_id(request)
    body = await read_body(request)
    return await _ask(request, "POST", f"/control/runs/{run_id}/abort",
                      {"reason": str(body.get("reason") or "aborted through the admin API")})
