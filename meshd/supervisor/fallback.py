"""The 503 the supervisor answers itself on the API port while no worker can (restarting after
a slow crash, crash loop, restore): every request gets a JSON 503 with Retry-After, so agents
back off instead of piling up connections on a socket nobody accepts."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshd import log as logging
from meshd.http_server import GuardedAppRunner

log = logging.get("meshd.supervisor")


class Fallback:
    def __init__(self, sock: socket.socket, describe: Callable[[], dict[str, Any]],
                 metrics: Callable[[web.Request], Awaitable[web.Response]] | None = None,
                 header_timeout: float = 20.0) -> None:
        self._sock = sock
        self._describe = describe  # the body of each 503: why meshd is unavailable
        self._metrics = metrics  # /metrics keeps answering (the supervisor's own figures)
        self._header_timeout = header_timeout
        self._runner: web.AppRunner | None = None

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def start(self, reason: str) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        # Hostile requests get the worker's treatment here too: JSON errors, a head deadline.
        runner = GuardedAppRunner(app, header_timeout=self._header_timeout, access_log=None,
                                  handle_signals=False)
        await runner.setup()
        # A duplicate of the socket: stopping the site closes the duplicate, not ours.
        await web.SockSite(runner, self._sock.dup()).start()
        self._runner = runner
        log.info("supervisor.fallback_serving", reason=reason)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        body = self._describe()
        # Every answer the supervisor gives in the worker's place is logged: during an incident
        # these lines are what agents saw.
        log.warning("supervisor.unavailable_answered", method=request.method,
                    path=request.path, status=503, reason=body.get("error"))
        return web.json_response(body, status=503, headers={
            "Retry-After": "5", "Access-Control-Allow-Origin": "*"})
