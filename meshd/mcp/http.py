"""Streamable HTTP at `/mcp` on the worker: the SDK's ASGI session manager behind a plain
aiohttp route, through a small ASGI bridge (docs/decisions.md says why not an adapter).

With `mcp = true` the route exists from the start, but the SDK (some 25 MiB of imports) is
loaded and its session manager started only by the first request that passes the door, so an
idle worker stays as small as one without MCP. The door admits the shared key, or an agent
token the API accepts (asked of the API), and lets a session be used only with the credential
that opened it: no one without a credential can open sessions or load the SDK; each session then calls the local API with it over loopback,
so the API's rules apply unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from typing import Any

import aiohttp
from aiohttp import web

from meshd import log as logging
from meshd.api.http import json_response
from meshd.api.keys import SETTINGS
from meshd.api.middleware import AUTH_FAILED, key_matches
from meshd.config import Settings
from meshd.mcp.credentials import TOKEN_PREFIX, presented_credential

log = logging.get("meshd.mcp")

PATH = "/mcp"
SESSION_HEADER = "mcp-session-id"
OTHER_CREDENTIAL = "this MCP session was opened with another credential"
# Twice the SDK's default cap on open sessions (10,000), so a live session's entry is not
# dropped before the SDK itself would have refused new sessions.
OWNERS_LIMIT = 20_000


class SessionOwners:
    """Which credential opened each MCP session (as a SHA-256), so a session id alone never
    lets another credential act in it. Bounded: the oldest entries go first (a tool call in
    a session also checks the credential that first used it: server.session_of)."""

    def __init__(self, limit: int = OWNERS_LIMIT) -> None:
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    @staticmethod
    def digest(credential: str) -> str:
        return hashlib.sha256(credential.encode()).hexdigest()

    def record(self, session_id: str, credential: str) -> None:
        self._owners[session_id] = self.digest(credential)
        while len(self._owners) > self._limit:
            self._owners.popitem(last=False)

    def refuses(self, session_id: str, credential: str) -> bool:
        owner = self._owners.get(session_id)
        return owner is not None and owner != self.digest(credential)


class TokenCheck:
    """Whether the API accepts an agent token, asked of the API itself (one loopback
    `GET /api/agents?limit=0` with it), so the door admits exactly the tokens the API does;
    an accepted token is remembered for `ttl` seconds."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._accepted: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def accepts(self, request: web.Request, token: str) -> bool:
        digest = SessionOwners.digest(token)
        now = time.monotonic()
        if self._accepted.get(digest, 0.0) > now:
            return True
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._http.get(local_api(request) + "/api/agents",
                                      params={"limit": "0"},
                                      headers={"X-API-Key": token}) as resp:
                accepted = resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        if accepted:
            self._accepted = {d: t for d, t in self._accepted.items() if t > now}
            self._accepted[digest] = now + self.ttl
        return accepted

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def local_api(request: web.Request) -> str:
    """The API on the listener that accepted this request (its own address, not the Host a
    proxy may have rewritten)."""
    host, port = request.transport.get_extra_info("sockname")[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class LazyMcp:
    """The SDK's session manager, imported and started on first use, stopped with the app.

    One task enters and leaves the manager's task group, as anyio requires."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owners = SessionOwners()
        self.tokens = TokenCheck()
        self._manager: Any = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def manager(self) -> Any:
        async with self._lock:
            if self._manager is None:
                self._manager = await self._start()
        return self._manager

    async def _start(self) -> Any:
        from meshd.mcp.server import build_server
        from meshd.mcp.session import MeshSession

        settings = self.settings
        server = build_server(lambda: MeshSession(local_files=False), security(settings),
                              max_body_size=settings.max_file_size * 4 // 3 + (1 << 20))
        server.streamable_http_app()  # creates the session manager with the server's settings
        manager = server.session_manager
        started = asyncio.Event()

        async def run() -> None:
            async with manager.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.get_running_loop().create_task(run())
        await started.wait()
        log.info("mcp.started", path=PATH)
        return manager

    async def close(self) -> None:
        await self.tokens.close()
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)


MCP: web.AppKey[LazyMcp] = web.AppKey("mcp", LazyMcp)


def security(settings: Settings) -> Any:
    """DNS-rebinding protection (Host and Origin checks) while meshd listens on loopback,
    where a browser page could otherwise reach it with the default key; beyond loopback a
    reverse proxy sets the Host, and the key is not the default one."""
    from mcp.server.transport_security import TransportSecuritySettings

    if settings.listens_beyond_loopback:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])


def mount(app: web.Application) -> None:
    """Add `/mcp` (GET, POST, DELETE); the SDK itself waits for the first request."""
    app[MCP] = LazyMcp(app[SETTINGS])
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, PATH, handle)
    app.on_shutdown.append(_stop)


async def _stop(app: web.Application) -> None:
    await app[MCP].close()


async def _admitted(request: web.Request, credential: str | None) -> bool:
    if credential is None:
        return False
    if credential.startswith(TOKEN_PREFIX):
        return await request.app[MCP].tokens.accepts(request, credential)
    # With agent_auth=required an MCP session must act with its agent's own token: the shared
    # key would let one session act as any agent it names.
    settings = request.app[SETTINGS]
    return settings.agent_auth != "required" and key_matches(credential, settings.api_key)


async def handle(request: web.Request) -> web.StreamResponse:
    credential = presented_credential(request.headers)
    if not await _admitted(request, credential):
        return json_response({"error": AUTH_FAILED}, status=401)
    assert credential is not None
    mcp = request.app[MCP]
    session_id = request.headers.get(SESSION_HEADER)
    if session_id and mcp.owners.refuses(session_id, credential):
        return json_response({"error": OTHER_CREDENTIAL}, status=403)
    manager = await mcp.manager()
    bridge = AsgiBridge(request)
    await manager.handle_request(bridge.scope(), bridge.receive, bridge.send)
    opened = dict(bridge.headers).get(SESSION_HEADER)
    if not session_id and opened:
        mcp.owners.record(opened, credential)
    return await bridge.finish()


class AsgiBridge:
    """One aiohttp request as an ASGI HTTP connection: the body in one `http.request`
    message, the response streamed as the app sends it (server-sent events included), and
    `http.disconnect` once the response is complete or the peer has gone."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self._status = 500
        self._headers: list[tuple[str, str]] = []
        self._body_sent = False
        self._done = asyncio.Event()
        self._plain_error: bytearray | None = None

    def scope(self) -> dict[str, Any]:
        request = self.request
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        peername = request.transport.get_extra_info("peername") if request.transport else None
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method, "scheme": request.scheme,
            "path": request.path, "raw_path": request.raw_path.split("?")[0].encode(),
            "query_string": request.query_string.encode(), "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            # The listener's own address: where the session reaches the local API.
            "server": tuple(sockname[:2]) if sockname else None,
            "client": tuple(peername[:2]) if peername else None,
        }

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": await self.request.read(),
                    "more_body": False}
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            self._headers = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                             for k, v in message.get("headers", [])]
            media = dict(self._headers).get("content-type", "")
            if self._status >= 400 and not media.startswith("application/json"):
                # The transport's own refusals (bad Host, Accept, size) are plain text; meshd
                # answers every error as JSON `{"error": ...}`.
                self._plain_error = bytearray()
        elif kind == "http.response.body" and self._plain_error is not None:
            self._plain_error += message.get("body", b"")
            if not message.get("more_body", False):
                self._done.set()
        elif kind == "http.response.body":
            response = await self._prepared()
            try:
                body = message.get("body", b"")
                if body:
                    await response.write(body)
                if not message.get("more_body", False):
                    await response.write_eof()
                    self._done.set()
            except (ConnectionError, RuntimeError):
                self._done.set()  # the client went away: the app sees http.disconnect
                raise OSError("client disconnected") from None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The app's response headers, names in lower case."""
        return self._headers

    async def _prepared(self) -> web.StreamResponse:
        if self.response is None:
            response = web.StreamResponse(status=self._status)
            for name, value in self._headers:
                response.headers.add(name, value)
            await response.prepare(self.request)
            self.response = response
        return self.response

    async def finish(self) -> web.StreamResponse:
        """The response the app produced (an empty one with its status if it sent no body)."""
        self._done.set()
        if self._plain_error is not None:
            text = self._plain_error.decode("utf-8", "replace").strip()
            return json_response({"error": text or f"MCP transport refused ({self._status})"},
                                 status=self._status)
        response = await self._prepared()
        if not response.prepared:
            await response.prepare(self.request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response
