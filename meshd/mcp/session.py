"""One MCP session's state: the credential it calls meshd with, the one agent it acts as, the
resources its client subscribed to, and the WebSocket watcher that turns hub events into
`notifications/resources/updated`.

A session acts as exactly one agent. With the shared key, its first register or resume call
binds it; with an agent token the API itself refuses another agent, and the binding keeps the
tools from even trying. A tool naming another agent than the bound one is refused here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.session import ServerSession

from meshd import log as logging
from meshd.client.backoff import Backoff
from meshd.mcp.backend import MeshApi
from meshd.mcp.credentials import TOKEN_PREFIX

log = logging.get("meshd.mcp")

INBOX = "meshd://inbox"
CATASTROPHES = "meshd://catastrophes"
RESOURCES = (INBOX, CATASTROPHES)
CONNECT_WAIT = 10.0  # seconds a subscribe call waits for the watcher's first connection


def affected_resources(event: Mapping[str, Any], agent_id: str | None) -> set[str]:
    """Which of the session's resources a hub event changes."""
    kind = event.get("type")
    if kind == "catastrophe_alert":
        return {CATASTROPHES}
    if agent_id is None:
        return set()
    if kind == "new_message":
        message = event.get("message") or {}
        return {INBOX} if message.get("to") == agent_id else set()
    if kind in ("broadcast", "group_broadcast"):
        # A group broadcast reaches this watcher only when the agent is in its audience
        # (the watcher asks the hub for its own events only).
        return {INBOX} if event.get("from") != agent_id else set()
    if kind == "skill_invoked":
        return {INBOX} if event.get("to") == agent_id else set()
    if kind == "message_retry":
        return {INBOX} if event.get("toAgent") == agent_id else set()
    return set()


@dataclass(eq=False)
class MeshSession:
    """Lives as long as its MCP session (it is the session's lifespan context)."""

    api: MeshApi | None = None  # stdio: from the environment; HTTP: from the first request
    opened_with: str | None = None  # the credential of the first HTTP request
    local_files: bool = False  # stdio only: the server runs on the agent's own host
    agent_id: str | None = None
    agent_name: str | None = None
    subscriptions: set[str] = field(default_factory=set)
    server_session: ServerSession | None = None
    _watcher: asyncio.Task | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=10.0))

    def act_as(self, named: str | None = None) -> str:
        """The agent a tool acts as: the bound one; naming another is refused."""
        if self.agent_id is None:
            raise ToolError("this MCP session acts as no agent yet: call register or resume "
                            "first")
        if named and named != self.agent_id:
            raise ToolError(f"this MCP session acts as agent {self.agent_id}; it may not act "
                            f"as {named}")
        return self.agent_id

    def bind(self, agent_id: str, name: str | None) -> None:
        if self.agent_id is not None and agent_id != self.agent_id:
            raise ToolError(f"this MCP session already acts as agent {self.agent_id}; open "
                            "another session to act as another agent")
        first = self.agent_id is None
        self.agent_id, self.agent_name = agent_id, name
        log.info("mcp.session_bound", agent_id=agent_id)
        if first and self._watcher is not None:
            # Reconnect asking the hub for this agent's own events.
            self._stop_watcher()
            self._start_watcher()

    async def adopt_token(self, token: Any) -> None:
        """A registration answered with the agent's own token: act with it from now on, so the
        API enforces the identity the session is bound to (the watcher reconnects with it)."""
        if isinstance(token, str) and token.startswith(TOKEN_PREFIX) and self.api is not None:
            old = self.api
            self.api = MeshApi(old.base_url, token)
            await old.close()

    async def subscribe(self, uri: str, server_session: ServerSession) -> None:
        if uri not in RESOURCES:
            raise ValueError(f"no resource {uri}; one of {', '.join(RESOURCES)}")
        if uri == INBOX:
            self.act_as()
        self.server_session = server_session
        self.subscriptions.add(uri)
        if self._watcher is None:
            self._start_watcher()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT)

    def unsubscribe(self, uri: str) -> None:
        self.subscriptions.discard(uri)

    async def close(self) -> None:
        self._stop_watcher()
        if self.api is not None:
            await self.api.close()

    def _start_watcher(self) -> None:
        self._connected.clear()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        """Follow the hub, reconnecting with backoff, until the session ends."""
        attempt = 0
        while True:
            try:
                assert self.api is not None
                async with self.api.ws_connect(self.agent_id) as ws:
                    self._connected.set()
                    attempt = 0
                    log.info("mcp.watching", agent_id=self.agent_id)
                    async for frame in ws:
                        if frame.type == aiohttp.WSMsgType.TEXT:
                            await self._on_event(orjson.loads(frame.data))
                        elif frame.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("mcp.watch_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _on_event(self, event: Any) -> None:
        if not isinstance(event, dict) or self.server_session is None:
            return
        for uri in sorted(affected_resources(event, self.agent_id) & self.subscriptions):
            try:
                await self.server_session.send_resource_updated(uri)
            except Exception as exc:  # the client went away: the session is ending
                log.info("mcp.notify_failed", uri=uri, error=f"{type(exc).__name__}: {exc}")
                return
