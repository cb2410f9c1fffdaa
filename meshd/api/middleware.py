"""The request pipeline: CORS, one log event per request, JSON errors, auth, read-only guard.

Every error leaves as `{"error": ...}` JSON with a 4xx/5xx status, framework errors included
(the Node server answered those with HTML stack traces, RB-09).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

from meshd import log as logging
from meshd.api.http import RequestTimeout, dumps, json_response, safe_text
from meshd.api.keys import AGENT_ID, CREDENTIAL, INFLIGHT, SETTINGS, STORAGE
from meshd.credentials import key_matches, presented_key  # noqa: F401 - re-exported
from meshd.errors import Invalid, MeshError, Unavailable

log = logging.get("meshd.http")

API_HEADERS = (
    "Content-Type, X-API-Key, Authorization, X-Agent-Id, X-Agent-Version, Idempotency-Key"
)
ALLOWED_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUTH_FAILED = "Invalid or missing API key"
# Connections that stay open for a session: shutdown does not wait for them to finish.
LONG_LIVED = frozenset({"/ws", "/mcp"})

# Headers meshd reads: one carrying bytes that are not UTF-8 is refused before any handler
# sees it (aiohttp keeps such bytes as lone surrogates, which no encoder accepts).
READ_HEADERS = ("X-API-Key", "Authorization", "X-Admin-Key", "Idempotency-Key", "X-Agent-Id",
                "X-Agent-Version", "If-None-Match", "Origin")


def _agent_id(request: web.Request) -> str | None:
    info = request.match_info
    return (request.get(AGENT_ID) or info.get("agentId") or info.get("id")
            or request.headers.get("X-Agent-Id"))


class InFlight:
    """Requests being handled (WebSocket sessions excluded), so shutdown can wait for them
    before it closes the sockets their events go to."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def undecodable_header(request: web.Request) -> str | None:
    """The name of the first header meshd reads whose value is not valid UTF-8."""
    for name in READ_HEADERS:
        for value in request.headers.getall(name, ()):
            if safe_text(value) is not value:
                return name
    return None


@web.middleware
async def pipeline(request: web.Request, handler):
    """CORS on every response, preflight answered without auth, errors as JSON, one log line."""
    started = time.perf_counter()
    bad_header = undecodable_header(request)
    if bad_header:
        response = error_response(Invalid(f"the {bad_header} header is not valid UTF-8"))
    elif request.method == "OPTIONS":
        response = web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": API_HEADERS,
            "Access-Control-Max-Age": "600",
        })
    else:
        inflight = request.app[INFLIGHT]
        counted = request.path not in LONG_LIVED
        if counted:
            inflight.enter()
        try:
            response = await handler(request)
        except RequestTimeout as exc:
            response = error_response(exc)
            response.force_close()  # what is left of the body will not be read
        except MeshError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            response = _framework_error(request, exc)
        except ConnectionError as exc:
            # The client went away mid-request: this one line (in place of the access line),
            # no traceback; nobody reads the answer.
            log.info("http.client_disconnected", method=request.method,
                     path=safe_text(request.path), error=type(exc).__name__,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))
            response = json_response({"error": "client disconnected"}, status=400)
            response.force_close()
            return response
        except Exception:
            request_id = str(uuid.uuid4())
            log.exception("http.unhandled_error", request_id=request_id,
                          method=request.method, path=request.path)
            response = json_response(
                {"error": "internal error", "requestId": request_id}, status=500)
        finally:
            if counted:
                inflight.leave()
    allow_cors(request, response)
    if request.app[SETTINGS].access_log and not quiet_probe(request, response.status):
        access_log(request, response, started)
    return response


def access_log(request: web.Request, response: web.StreamResponse, started: float) -> None:
    """One line per request. It runs after the write committed, so it must not fail: every
    client-supplied text is repaired first, and a failure is logged instead of raised."""
    try:
        agent_id = _agent_id(request)
        # logging.info_line: the same line as log.info(...) at a fraction of its cost.
        logging.info_line("http.request", {
            "method": safe_text(request.method), "path": safe_text(request.path),
            "status": response.status,
            "agent_id": safe_text(agent_id) if isinstance(agent_id, str) else None,
            "credential": request.get(CREDENTIAL),
            "duration_ms": round((time.perf_counter() - started) * 1000, 2)})
    except Exception as exc:  # noqa: BLE001 - the response is already decided
        log.warning("http.access_log_failed", error=type(exc).__name__)


PROBE_PATHS = frozenset({"/health", "/readyz"})


def quiet_probe(request: web.Request, status: int) -> bool:
    """A health probe that succeeded stays out of the access log: the supervisor probes
    /health every second (some 86,000 lines a day); a failing probe is still logged."""
    return request.method in ("GET", "HEAD") and request.path in PROBE_PATHS and status < 400


def cors_origin(request: web.Request) -> str | None:
    """The Access-Control-Allow-Origin to send: `*` unless cors_origins narrows it, then the
    request's Origin when listed (no credentials either way: keys travel in headers)."""
    allowed = request.app[SETTINGS].cors_origins
    if allowed == "*":
        return "*"
    origin = request.headers.get("Origin")
    return origin if origin and origin in allowed.split(",") else None


def allow_cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = cors_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        vary = response.headers.get("Vary")  # a snapshot varies by Accept-Encoding too
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


def error_response(exc: MeshError) -> web.Response:
    body = {"error": exc.message, **exc.extra}
    if exc.content_type != "application/json":
        return web.Response(body=dumps(body), status=exc.status, headers=exc.headers or None,
                            content_type=exc.content_type, charset="utf-8")
    return json_response(body, status=exc.status, headers=exc.headers or None)


def _framework_error(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    if isinstance(exc, web.HTTPNotFound | web.HTTPMethodNotAllowed):
        # The Node server answers an unknown path or method with 404 `Cannot GET /x`.
        return json_response({"error": f"Cannot {request.method} {request.path}"}, status=404)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return json_response({"error": "request body is too large"}, status=413)
    if exc.status < 400:
        return exc
    return json_response({"error": exc.reason}, status=exc.status)


@web.middleware
async def guard(request: web.Request, handler):
    """No writes while the store is read-only (who may call a route is api/auth.py's job,
    in the middleware before this one)."""
    resource = request.match_info.route.resource
    # The matched route decides, not the raw path: `/API/agents/` matches case-insensitively.
    if resource is None or not resource.canonical.startswith("/api/"):
        return await handler(request)
    if resource.canonical.startswith("/api/admin/"):
        return await handler(request)
    reason = request.app[STORAGE].read_only_reason
    if reason and request.method in MUTATING:
        raise Unavailable(f"meshd is read-only: {reason}", extra={"mode": "read-only"})
    return await handler(request)
