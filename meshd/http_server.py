"""aiohttp's connection handler, made to answer hostile requests the way the API does.

Errors aiohttp raises below the router (a bad request line, a header over 8190 bytes, both
Content-Length and Transfer-Encoding, a byte that is not HTTP) never reach middleware: aiohttp
answers them itself with `text/plain` that quotes the request (and so any key in it), and logs
the same text with a traceback. aiohttp has no public hook for those answers, nor a timeout
for reading a request head, so this module subclasses its `RequestHandler` (docs/decisions.md):

- `handle_error` answers `{"error": ...}` JSON that quotes nothing, and logs one line;
- `log_exception` logs one line (the exception's type), never a traceback or a message;
- a connection that has not sent a whole request head within `header_timeout` seconds (from
  its start, or from the first byte of a later request on a kept-alive connection) is closed.

The hook depends on aiohttp's internals, so pyproject.toml pins aiohttp's minor version and
tests/api/test_hostile.py fails when an upgrade changes what is used here.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from meshd import log as logging

log = logging.get("meshd.http")

# What a client is told: the status phrase, never the parser's message (it quotes the request).
ERRORS = {
    400: "bad request: the request line, a header or the body framing is not valid HTTP",
    413: "request body is too large",
    431: "request headers are too large",
    500: "internal error",
    504: "the request took too long",
}
LINGERING_TIME = 2.0


class GuardedRequestHandler(RequestHandler):
    """One connection: JSON errors, one-line logs, and a deadline for each request head."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a whole request head (or a parse error) arrived
            self._disarm_head_timer()
        elif data and not self._request_in_progress and not self._messages:
            self._arm_head_timer()  # the first bytes of a later request's head

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self._header_timeout > 0:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._request_in_progress or self._messages:
            return
        log.info("http.header_timeout", timeout_s=self._header_timeout,
                 peer=_peer(self.transport))
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        log.info("http.bad_request", status=status,
                 error=type(exc).__name__ if exc else HTTPStatus(status).phrase,
                 peer=_peer(self.transport))
        if request.writer.output_size > 0:
            # Part of a response is out: nothing else can be said on this connection.
            raise ConnectionError("response already started")
        response = web.json_response(
            {"error": ERRORS.get(status, HTTPStatus(status).phrase.lower())}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        log.info("http.connection_error",
                 error=type(exc).__name__ if isinstance(exc, BaseException) else "unknown")


class GuardedServer(web.Server):
    """aiohttp's low-level server, making `GuardedRequestHandler`s."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout,
                                     **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `GuardedServer`."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        # After an early answer (408, 413) aiohttp reads what is left of the body for this
        # long before closing (its default, 10 s, lets a stalled client hold the connection).
        kwargs.setdefault("lingering_time", LINGERING_TIME)
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=plain._loop, header_timeout=self._header_timeout,
                             **plain._kwargs)


def _peer(transport: asyncio.BaseTransport | None) -> str | None:
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None
