"""The one server side of meshd's unix sockets: the supervisor's control socket
(`data/meshd.sock`) and the worker's private socket (`data/worker.sock`) are both built here,
with the same framing as `control.client` and the same error convention: every error, bad JSON
included, is a JSON body `{"error": "..."}` with a 4xx/5xx status, never a text/plain page.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from meshd import log as logging
from meshd.errors import MeshError

log = logging.get("meshd.control")


class BadRequest(MeshError):
    status = 400


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type="application/json")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body); anything else is a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except MeshError as exc:
        return reply({"error": exc.message, **exc.extra}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return reply({"error": exc.reason}, exc.status)
    except Exception as exc:
        log.exception("control.error", path=request.path)
        return reply({"error": f"{type(exc).__name__}: {exc}"}, 500)


async def ping(request: web.Request) -> web.Response:
    """What `control.client.probe` asks: answered by the event loop alone, so an answer
    proves the process runs and its loop turns, and costs nothing."""
    return reply({"pid": os.getpid()})


def make_app(routes: Iterable[web.AbstractRouteDef] = ()) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=16 << 20)
    app.router.add_get("/ping", ping)
    app.router.add_routes(list(routes))
    return app


async def serve_unix(app: web.Application, path: Path) -> web.AppRunner:
    """Serve `app` on a unix socket only its owner may use (0600)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    await web.UnixSite(runner, str(path)).start()
    os.chmod(path, 0o600)
    return runner
