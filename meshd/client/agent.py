"""`MeshClient`: one agent's connection to the mesh, wiring the SDK's parts together.

It registers (the server keeps the identity by name; the id is also kept in state_dir, so an
agent restarted during an outage still knows who it is), sends heartbeats with psutil metrics,
keeps a WebSocket open, and delivers incoming messages to a handler exactly once and in order
per sender. When the server is unreachable it keeps working offline: messages are queued in
SQLite and replayed on recovery, and agents on the same host keep talking through the spool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from meshd import log as logging
from meshd.client.backoff import Backoff, Pause
from meshd.client.dedupe import Delivered
from meshd.client.errors import Rejected, Unavailable
from meshd.client.http import MeshHttp
from meshd.client.inbound import Handler, Inbound
from meshd.client.link import Link
from meshd.client.metrics import ProcessMetrics
from meshd.client.queue import Outbox
from meshd.client.records import FileInfo, Message, Via
from meshd.client.sender import Sender
from meshd.client.spool import Spool
from meshd.client.state import StateDB
from meshd.client.ws import EventStream
from meshd.clock import db_time, parse_time, utcnow

log = logging.get("meshd.client")

# The inbox is read from a little before the newest message already seen: times have whole
# seconds, the filter is strict, and two requests may store their rows out of time order.
CURSOR_MARGIN = timedelta(seconds=2)
DEFAULT_BACKOFF = Backoff()
UpdateHook = Callable[[dict], Awaitable[str | None] | str | None]
EventHook = Callable[[dict], Awaitable[None] | None]


class MeshClient:
    """An agent on the mesh; use as `async with MeshClient(...) as client:`.

    `on_message(message)` receives each direct message once (a `Message`, with `via` telling
    the channel). `on_update(update)` is called for each `system_update` event; when it returns
    a status ("accepted", "rejected", "completed") the update is acknowledged with `version`.
    `on_event(event)` sees every WebSocket event, raw.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        name: str,
        *,
        state_dir: Path,
        endpoint: str | None = None,
        capabilities: Iterable[str] | None = None,
        version: str | None = None,
        spool_dir: Path | None = None,
        on_message: Handler | None = None,
        on_update: UpdateHook | None = None,
        on_event: EventHook | None = None,
        heartbeat_interval: float = 30.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        request_timeout: float = 10.0,
        spool_poll_interval: float = 0.2,
        order_hold: float = 60.0,
        respool_window: float = 5.0,
        ws_heartbeat: float = 20.0,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.capabilities = list(capabilities) if capabilities is not None else None
        self.version = version
        self.state_dir = Path(state_dir)
        self.heartbeat_interval = heartbeat_interval
        self.backoff = backoff
        self.spool_poll_interval = spool_poll_interval
        self.order_hold = order_hold
        self.respool_window = respool_window
        self._on_message = on_message
        self._on_update = on_update
        self._on_event = on_event
        self.http = MeshHttp(base_url, api_key, timeout=request_timeout, agent_version=version)
        self.link = Link()
        self.spool = Spool(Path(spool_dir)) if spool_dir is not None else None
        self.events = EventStream(self.http, self._ws_params, self._catch_up, self._on_ws_event,
                                  backoff=backoff, heartbeat=ws_heartbeat)
        self._metrics = ProcessMetrics()
        self._agent_id: str | None = None
        self._needs_register = False
        self._cursor: str | None = None
        self._db: StateDB | None = None
        self._outbox: Outbox | None = None
        self._sender: Sender | None = None
        self._inbound: Inbound | None = None
        self._tasks: set[asyncio.Task] = set()
        self._recovery_pause = Pause()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> MeshClient:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the state, register (waiting for the server only if this agent never
        registered before), and start the background tasks."""
        self._db = await StateDB.open(self.state_dir)
        stored_name = await self._db.get("name")
        if stored_name is not None and stored_name != self.name:
            raise ValueError(f"{self.state_dir} holds the state of agent {stored_name!r}, "
                             f"not {self.name!r}")
        self._outbox = Outbox(self._db)
        self._sender = Sender(self.http, self._outbox, self.link, self.spool,
                              respool_window=self.respool_window)
        self._cursor = await self._db.get("inbox_cursor")
        await self._register_at_start()
        if self._on_message is not None:
            delivered = Delivered(self._db)
            await delivered.prune()
            self._inbound = Inbound(delivered, self._on_message, hold_timeout=self.order_hold)
            if self.spool is not None:
                self._spawn(self._read_spool(), "spool")
        self._spawn(self._recover(), "recovery")
        self._spawn(self._heartbeats(), "heartbeat")
        self._spawn(self.events.run(), "websocket")

    async def close(self) -> None:
        if self._inbound is not None:
            # A message already handed to the handler must be recorded as delivered first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbound.settled(), 5)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.http.close()
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- public API ------------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        if self._agent_id is None:
            raise RuntimeError("the client is not started")
        return self._agent_id

    @property
    def online(self) -> bool:
        return self.link.online

    @property
    def held(self) -> int:
        """Spooled messages waiting for an earlier message from the same sender."""
        return self._inbound.held if self._inbound is not None else 0

    async def wait_online(self) -> None:
        """Until the server is reachable and every queued message was replayed."""
        await self.link.wait_online()

    async def send(self, to: str, content: str, message_type: str = "direct") -> str:
        """Send a message (or queue it while offline); its client id."""
        assert self._sender is not None, "the client is not started"
        return await self._sender.send(self.agent_id, to, content, message_type)

    async def pending(self) -> int:
        """How many messages wait in the offline queue."""
        assert self._outbox is not None, "the client is not started"
        return await self._outbox.count()

    async def rejected(self) -> list[dict]:
        """Queued messages the server refused on replay (they are not retried)."""
        assert self._outbox is not None, "the client is not started"
        return await self._outbox.rejected()

    async def inbox(self, since: str | None = None, unread_only: bool = False
                    ) -> list[Message]:
        """Messages to this agent stored on the server, oldest first."""
        params = {"unreadOnly": "true"} if unread_only else {}
        if since:
            params["since"] = since
        rows = await self.http.request("GET", f"/api/messages/{self.agent_id}", params=params)
        return [_from_row(r) for r in _oldest_first(rows)]

    async def mark_read(self, message_id: str) -> None:
        await self.http.request("POST", f"/api/messages/{message_id}/read")

    async def heartbeat(self) -> None:
        """Report this process's metrics now (the heartbeat task does it every interval)."""
        await self.http.request("POST", f"/api/agents/{self.agent_id}/heartbeat",
                                json=self._metrics.sample().body())

    async def upload(self, data: bytes, filename: str, *, file_type: str | None = None,
                     description: str | None = None) -> FileInfo:
        body: dict[str, Any] = {"agentId": self.agent_id, "filename": filename,
                                "fileData": base64.b64encode(data).decode("ascii")}
        if file_type is not None:
            body["fileType"] = file_type
        if description is not None:
            body["description"] = description
        reply = await self.http.request("POST", "/api/files/upload", json=body)
        return FileInfo(id=reply["fileId"], url=reply["url"], filename=reply["filename"],
                        size=reply["fileSize"], sha256=reply.get("sha256"))

    async def download(self, file_id: str) -> bytes:
        """A file's bytes, sent raw by the server (no base64 inside JSON)."""
        return await self.http.download(f"/api/files/{file_id}/download")

    async def files(self, agent_id: str | None = None) -> list[dict]:
        params = {"agentId": agent_id} if agent_id else None
        return await self.http.request("GET", "/api/files", params=params)

    async def delete_file(self, file_id: str) -> None:
        await self.http.request("DELETE", f"/api/files/{file_id}",
                                json={"agentId": self.agent_id})

    async def updates(self) -> list[dict]:
        return await self.http.request("GET", "/api/updates")

    async def acknowledge(self, update_id: str, status: str = "accepted",
                          notes: str | None = None) -> None:
        body: dict[str, Any] = {"agentId": self.agent_id, "status": status}
        if self.version is not None:
            body["agentVersion"] = self.version
        if notes is not None:
            body["notes"] = notes
        await self.http.request("POST", f"/api/updates/{update_id}/acknowledge", json=body)

    # -- registration ----------------------------------------------------------------------

    async def _register_at_start(self) -> None:
        assert self._db is not None
        stored = await self._db.get("agent_id")
        attempt = 0
        while True:
            try:
                await self._register()
            except Unavailable as exc:
                if stored is not None:
                    # Known already: work offline under the stored id, register on recovery.
                    self._agent_id = stored
                    self._needs_register = True
                    self._open_mailbox()
                    log.warning("client.starting_offline", agent_id=stored, error=str(exc))
                    return
                delay = self.backoff.delay(attempt)
                log.warning("client.register_retry", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            # Online only with an empty queue; otherwise recovery replays it first.
            assert self._outbox is not None
            if await self._outbox.count() == 0:
                self.link.mark_online()
            return

    async def _register(self) -> None:
        """Register by name (the server answers an existing name with its existing id)."""
        assert self._db is not None
        body: dict[str, Any] = {"name": self.name}
        if self.endpoint is not None:
            body["endpoint"] = self.endpoint
        if self.capabilities is not None:
            body["capabilities"] = self.capabilities
        if self._cursor is None:
            # The inbox of a first run starts now, on the server's clock.
            health = await self.http.request("GET", "/health")
            moment = parse_time(str(health.get("timestamp", ""))) or utcnow()
            await self._save_cursor(db_time(moment))
        reply = await self._register_request(body)
        agent_id = reply["agentId"]
        known = await self._db.get("agent_id")
        if known is not None and agent_id != known:
            # The server lost this agent (a restored database): others must learn the new id.
            log.error("client.identity_changed", old=known, new=agent_id)
        self._agent_id = agent_id
        self._needs_register = False
        await self._db.set("agent_id", agent_id)
        await self._db.set("name", self.name)
        if reply.get("agentToken"):
            # Shown once by the server: kept with the identity, sent from now on.
            await self._db.set("agent_token", reply["agentToken"])
            self.http.token = reply["agentToken"]
        self._open_mailbox()
        log.info("client.registered", agent_id=agent_id, existed=reply.get("existed"))

    async def _register_request(self, body: dict[str, Any]) -> dict:
        """POST the registration with the stored token as proof of identity. A token the
        server no longer knows (revoked, or a database restored from before it) is dropped
        and the registration retried with the shared key alone: with agent_auth optional
        that is how an agent whose token was lost gets back in."""
        assert self._db is not None
        self.http.token = await self._db.get("agent_token")
        try:
            return await self.http.request("POST", "/api/agents/register", json=body)
        except Rejected as exc:
            if exc.status != 401 or self.http.token is None:
                raise
            log.error("client.token_rejected", name=self.name, error=str(exc))
            await self._db.run(_forget_token)
            self.http.token = None
            return await self.http.request("POST", "/api/agents/register", json=body)

    @property
    def agent_token(self) -> str | None:
        """This agent's token, once the server handed one out (kept in state_dir)."""
        return self.http.token

    def _open_mailbox(self) -> None:
        if self.spool is not None and self._on_message is not None:
            self.spool.open_mailbox(self.agent_id)

    # -- background tasks ------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"meshd-client-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("client.task_failed", task=task.get_name(),
                      error=repr(task.exception()))

    async def _recover(self) -> None:
        """While offline: probe GET /health with backoff; once it answers, register if that
        is still owed, replay the queue and go back online."""
        assert self._sender is not None
        while True:
            await self.link.wait_offline()
            attempt = 0
            while not self.link.online:
                await self._recovery_pause.sleep(self.backoff.delay(attempt))
                attempt += 1
                if not await self.http.healthy():
                    continue
                try:
                    if self._needs_register:
                        await self._register()
                    if await self._sender.replay():
                        log.info("client.recovered", replayed=self._sender.replayed)
                        self.events.wake()
                except Unavailable as exc:
                    log.info("client.recovery_failed", error=str(exc))
                except Rejected as exc:
                    log.error("client.recovery_rejected", status=exc.status, error=str(exc))

    async def _heartbeats(self) -> None:
        while True:
            await self.link.wait_online()
            try:
                await self.heartbeat()
            except Unavailable as exc:
                self.link.mark_offline(f"heartbeat: {exc}")
            except Rejected as exc:
                if exc.status == 404:  # the server forgot this agent (a restored database)
                    self._needs_register = True
                    self.link.mark_offline("agent unknown to the server")
                else:
                    log.error("client.heartbeat_rejected", status=exc.status, error=str(exc))
            await asyncio.sleep(self.heartbeat_interval)

    async def _read_spool(self) -> None:
        """Deliver what same-host agents put in this agent's mailbox; a held file stays in
        new/ until its predecessor is delivered, so it survives a restart."""
        assert self.spool is not None and self._inbound is not None
        in_flight: set[Path] = set()
        while True:
            try:
                files = await asyncio.to_thread(self.spool.pending, self.agent_id,
                                                frozenset(in_flight))
            except OSError as exc:  # the mailbox was removed, or a disk error: try again
                log.warning("client.spool_unreadable", error=str(exc))
                with contextlib.suppress(OSError):
                    self._open_mailbox()
                files = []
            for found in files:
                m = found.message
                if m is None or m.to_agent != self.agent_id:
                    self.spool.discard(found.path)
                    continue
                in_flight.add(found.path)
                message = Message(client_id=m.client_id, from_agent=m.from_agent,
                                  to_agent=m.to_agent, content=m.content,
                                  message_type=m.message_type, created_at=m.created_at,
                                  via=Via.SPOOL)
                await self._inbound.offer(message, prev=m.prev,
                                          settle=partial(self._settle, in_flight, found.path))
            await self._inbound.release_expired()
            await asyncio.sleep(self.spool_poll_interval)

    def _settle(self, in_flight: set[Path], path: Path) -> None:
        assert self.spool is not None
        self.spool.discard(path)
        in_flight.discard(path)

    # -- the server channel ----------------------------------------------------------------

    def _ws_params(self) -> dict[str, str]:
        return {"agentId": self.agent_id, "onlyMine": "true"}

    async def _catch_up(self) -> None:
        """After each WebSocket connection, before its events: deliver what arrived in the
        inbox while no socket was open (events are never replayed by the server)."""
        if not self.link.online:
            self._recovery_pause.wake()  # the server answers: replay now, not after a backoff
        if self._inbound is None:
            return
        params = {}
        if self._cursor is not None:
            moment = parse_time(self._cursor)
            if moment is not None:
                params["since"] = db_time(moment - CURSOR_MARGIN)
        rows = await self.http.request("GET", f"/api/messages/{self.agent_id}", params=params)
        for row in _oldest_first(rows):
            if row.get("message_type") == "broadcast":
                continue  # broadcasts are `broadcast` events, not per-recipient messages
            await self._inbound.offer(_from_row(row))
            await self._advance_cursor(row.get("created_at"))

    async def _on_ws_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "new_message" and self._inbound is not None:
            data = event.get("message")
            if (isinstance(data, dict) and data.get("to") == self.agent_id
                    and isinstance(data.get("from"), str)):
                await self._inbound.offer(_from_event(data))
                await self._advance_cursor(data.get("createdAt"))
        elif kind == "system_update" and self._on_update is not None:
            update = event.get("update")
            if isinstance(update, dict):
                self._spawn(self._handle_update(update), "update")
        if self._on_event is not None:
            result = self._on_event(event)
            if inspect.isawaitable(result):
                await result

    async def _handle_update(self, update: dict) -> None:
        """The update hook, off the WebSocket task (an upgrade may take a while); its status,
        if any, is acknowledged."""
        assert self._on_update is not None
        status = self._on_update(update)
        if inspect.isawaitable(status):
            status = await status
        if isinstance(status, str) and update.get("id"):
            await self.acknowledge(update["id"], status)
            log.info("client.update_acknowledged", update_id=update["id"], status=status,
                     version=self.version)

    async def _advance_cursor(self, created_at: Any) -> None:
        moment = parse_time(created_at) if isinstance(created_at, str) else None
        if moment is None:
            return
        stamp = db_time(moment)
        if self._cursor is None or stamp > self._cursor:
            await self._save_cursor(stamp)

    async def _save_cursor(self, stamp: str) -> None:
        assert self._db is not None
        self._cursor = stamp
        await self._db.set("inbox_cursor", stamp)


def _oldest_first(rows: list[dict]) -> list[dict]:
    """Inbox rows come newest first with ties in insertion order; a stable sort on the time
    gives oldest first and keeps the ties in insertion order."""
    return sorted(rows, key=lambda r: str(r.get("created_at") or ""))


def _text(content: Any) -> str:
    """Content as the server stores it: text stays, other JSON values become their JSON."""
    return content if isinstance(content, str) else json.dumps(content, separators=(",", ":"))


def _from_row(row: dict) -> Message:
    return Message(client_id=row.get("client_id"), from_agent=row["from_agent"],
                   to_agent=row["to_agent"], content=_text(row["content"]),
                   message_type=row.get("message_type"), created_at=row.get("created_at"),
                   via=Via.CATCHUP, id=row.get("id"))


def _from_event(data: dict) -> Message:
    return Message(client_id=data.get("clientId"), from_agent=data["from"],
                   to_agent=data["to"], content=_text(data.get("content")),
                   message_type=data.get("messageType"), created_at=data.get("createdAt"),
                   via=Via.SERVER, id=data.get("id"))


def _forget_token(conn) -> None:
    with conn:
        conn.execute("DELETE FROM settings WHERE key = 'agent_token'")
