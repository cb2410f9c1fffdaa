"""Console routes: the page, login and logout, the panels the page refreshes on each
WebSocket event, operator actions, and `/docs` (Swagger UI from the swagger-ui-bundle package).

Pages without a session redirect to the login; the console's JSON routes answer 401 JSON.
Operator actions need a session opened with the admin key, a same-origin request and the
session's CSRF token; they go to the supervisor over the control socket like /api/admin/*.
"""

from __future__ import annotations

import math
import mimetypes
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from meshd import log as logging
from meshd.api.console import data
from meshd.api.console.sessions import (
    ADMIN,
    SESSIONS,
    THROTTLE,
    VIEWER,
    clear_cookie,
    csrf_ok,
    current_session,
    same_origin,
    set_cookie,
)
from meshd.api.http import json_response
from meshd.api.keys import SETTINGS, supervisor
from meshd.api.middleware import key_matches
from meshd.api.openapi import document_for
from meshd.errors import Forbidden, Invalid, MeshError, NotFound

log = logging.get("meshd.console")
routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).parent / "static"
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# Swagger UI sets style attributes from its markup: inline styles allowed there, scripts not.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
            "frame-ancestors 'none'")
ACTIONS = ("backup", "drill", "abort", "mode")


def _secure_headers(response: web.StreamResponse, csp: str = PAGE_CSP) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _to_login() -> web.Response:
    return _redirect("/login")


@routes.get("/")
async def page(request: web.Request) -> web.StreamResponse:
    session = current_session(request)
    if session is None:
        return _to_login()
    context = await data.gather(request)
    context.update(session=session, panels=data.PANELS)
    response = aiohttp_jinja2.render_template("console.html", request, context)
    return _secure_headers(response)


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
        return _redirect("/")
    return _secure_headers(aiohttp_jinja2.render_template("login.html", request,
                                                          {"error": None}))


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    if not same_origin(request):
        return _login_refused(request, "This login did not come from meshd's own page.", 403)
    throttle = request.app[THROTTLE]
    address = request.remote or "unknown"
    wait = throttle.retry_after(address)
    if wait is not None:
        response = _login_refused(
            request, f"Too many failed logins: try again in {math.ceil(wait)} s.", 429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    form = await request.post()
    key = form.get("key")
    key = key if isinstance(key, str) else ""
    settings = request.app[SETTINGS]
    if settings.admin_key and key_matches(key, settings.admin_key):
        role = ADMIN
    elif key_matches(key, settings.api_key):
        role = VIEWER
    else:
        throttle.failed(address)
        log.warning("console.login_failed", remote=address)
        return _login_refused(request, "That key is not valid.", 401)
    session_id, _session = request.app[SESSIONS].create(role)
    response = _redirect("/")
    set_cookie(request, response, session_id)
    return response


def _login_refused(request: web.Request, message: str, status: int) -> web.StreamResponse:
    response = aiohttp_jinja2.render_template("login.html", request, {"error": message},
                                              status=status)
    return _secure_headers(response)


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    session = current_session(request)
    if session is not None:
        form = await request.post()
        token = form.get("csrf")
        if not same_origin(request) or not csrf_ok(request, session,
                                                   token if isinstance(token, str) else None):
            raise Forbidden("CSRF check failed")
        request.app[SESSIONS].drop(session)
    response = _redirect("/login")
    clear_cookie(response)
    return response


@routes.get("/console/panels")
async def panels(request: web.Request) -> web.Response:
    """Every panel's HTML, rendered (and escaped) here: the page swaps them in on events."""
    session = current_session(request)
    if session is None:
        return json_response({"error": "no console session; log in at /login"}, status=401)
    context = await data.gather(request)
    context["session"] = session
    rendered = {name: aiohttp_jinja2.render_string(f"panel_{name}.html", request, context)
                for name in data.PANELS}
    return _secure_headers(json_response(rendered))


@routes.post("/console/actions/{action}")
async def action(request: web.Request) -> web.Response:
    session = current_session(request)
    if session is None:
        return json_response({"error": "no console session; log in at /login"}, status=401)
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    if not csrf_ok(request, session, request.headers.get("X-CSRF-Token")):
        raise Forbidden("CSRF check failed")
    if not session.is_admin:
        raise Forbidden("operator actions need a session opened with the admin key")
    name = request.match_info["action"]
    if name not in ACTIONS:
        raise NotFound(f"no action {name}; one of {', '.join(ACTIONS)}")
    try:
        body = await request.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    method, path, payload = _control_call(name, body)
    status, answer = await supervisor(request).call(method, path, payload)
    if status >= 400:
        error = MeshError(answer.get("error", "the supervisor refused")
                          if isinstance(answer, dict) else "the supervisor refused")
        error.status = status
        raise error
    return json_response({"action": name, "result": answer})


def _control_call(name: str, body: dict) -> tuple[str, str, dict | None]:
    if name == "backup":
        return "POST", "/control/backup", None
    if name == "drill":
        agents = body.get("agents") or []
        if isinstance(agents, str):
            agents = [a.strip() for a in agents.split(",") if a.strip()]
        if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
            raise Invalid("agents must be a list of agent ids")
        return "POST", "/control/protocols/network_partition/run", {
            "reason": "drill started from the console",
            "context": {"agents": agents[:100], "drill": True}}
    if name == "abort":
        run_id = body.get("runId")
        if not isinstance(run_id, str) or not run_id or "/" in run_id:
            raise Invalid("runId is required")
        return "POST", f"/control/runs/{run_id}/abort", {"reason": "aborted from the console"}
    mode = body.get("mode")
    if mode not in ("read-only", "read-write"):
        raise Invalid("mode must be read-only or read-write")
    return "POST", "/control/mode", {"mode": mode}


def _static_file(directory: Path, name: str) -> web.StreamResponse:
    """A file shipped in a package directory; never a path outside it."""
    path = (directory / name).resolve()
    if "/" in name or name.startswith(".") or path.parent != directory.resolve() \
            or not path.is_file():
        raise NotFound(f"no file {name}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = web.FileResponse(path, headers={"Content-Type": content_type,
                                               "Cache-Control": "public, max-age=3600",
                                               "X-Content-Type-Options": "nosniff"})
    return response


@routes.get("/console/static/{name}")
async def console_static(request: web.Request) -> web.StreamResponse:
    return _static_file(STATIC_DIR, request.match_info["name"])


@routes.get("/docs")
async def docs(request: web.Request) -> web.StreamResponse:
    if current_session(request) is None:
        return _to_login()
    response = aiohttp_jinja2.render_template("docs.html", request, {})
    return _secure_headers(response, DOCS_CSP)


@routes.get("/docs/openapi.json")
async def docs_document(request: web.Request) -> web.Response:
    """The OpenAPI document for a console session (the page cannot send the API key)."""
    if current_session(request) is None:
        return json_response({"error": "no console session; log in at /login"}, status=401)
    return json_response(document_for(request.app[SETTINGS].mcp))


@routes.get("/docs/static/{name}")
async def docs_static(request: web.Request) -> web.StreamResponse:
    from swagger_ui_bundle import swagger_ui_path

    return _static_file(Path(str(swagger_ui_path)), request.match_info["name"])
