"""WebSocket hub at /ws: fan-out that never blocks the request that caused an event.

An event's frame is built once (once more with its `eventId` for the clients that asked for
ids) and written straight to each client's transport when that client has nothing waiting:
no queue, no task wake-up and no frame build per client. A client that is behind (events in
its queue, or bytes its peer has not taken yet still in the transport's buffer) gets the event
queued instead, drained by its own sender task; a client whose backlog outgrows its budget
(slow or dead) is dropped instead of waited for.

The budget is counted in bytes (SEND_BUFFER_BYTES) with a cap on the number of events
(SEND_BUFFER_EVENTS), not in events alone: a burst of thousands of small events (every agent
of a partitioned network going offline at once, one `agent_health_change` each) must not
drop every healthy listener, while a peer that stopped reading large events is cut off as
soon as before. A queued event is the shared `Encoded` object (one pointer per client), and
its frame text is built when the sender writes it. A client that negotiated permessage-deflate always goes through
its queue (aiohttp compresses per client). Protocol pings detect dead peers.

Writing frames to the transport bypasses aiohttp's WebSocketWriter, which is sound while that
writer keeps no state between uncompressed frames and writes each one synchronously:
tests/api/test_ws_fanout.py fails if an aiohttp upgrade changes either (aiohttp is pinned to a
minor version, docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import orjson
from aiohttp import WSMsgType, web

from meshd import incidents
from meshd import log as logging
from meshd.api import auth, enforcement
from meshd.api.auth import Identity, Kind
from meshd.api.console import sessions as console_sessions
from meshd.api.keys import HUB, SETTINGS, STORAGE
from meshd.api.middleware import AUTH_FAILED
from meshd.clock import db_time, new_id
from meshd.config import is_loopback
from meshd.errors import MeshError, NotFound
from meshd.store import event_log, records
from meshd.store import health as health_store
from meshd.store.events import Encoded, Event, emitting, encode

log = logging.get("meshd.ws")

SEND_BUFFER_BYTES = 16 * 2**20  # a client's queued frame text before it is dropped
SEND_BUFFER_EVENTS = 65_536  # and its queued events (a pointer each: 512 KiB at most)
REPLAY_BATCH = 500
PING_INTERVAL = 20.0
# Client deliveries (an event offered to one client) per step of the event loop. A write that
# emits thousands of events (every agent of a partitioned network marked offline at once) to
# a thousand listeners is millions of deliveries: done in one go they held the loop for
# seconds, long enough for the supervisor's probes to fail and the worker to be killed.
DELIVER_STEP = 20_000
CLOSE_BOUND = 5.0  # a dropped client's close handshake gets this long, then the TCP is cut


# What a socket without a key may see when ws_auth is public, and what an agent's socket sees
# besides the events addressed to it: nothing in them is private to one agent.
MESH_WIDE = frozenset({"agent_joined", "broadcast", "system_update", "catastrophe_alert",
                       "agent_health_change"})


class View(StrEnum):
    FULL = "full"          # every event (the Node server's stream); onlyMine narrows it
    MESH = "mesh"          # mesh-wide events only, and no writes (anonymous, ws_auth public)
    AGENT = "agent"        # one agent's events plus the mesh-wide ones (an agent token)


@dataclass(eq=False, slots=True, weakref_slot=True)
class Client:
    ws: web.WebSocketResponse
    client_id: str
    agent_id: str | None = None
    only_mine: bool = False
    view: View = View.FULL
    # Encoded events not yet written, oldest first (their ids let a resuming client skip what
    # its backlog already sent); bounded by `admit`, not by the queue.
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0
    with_ids: bool = False  # connected with ?since=: every frame carries its eventId
    sent_up_to: int = 0  # the newest event id sent from the backlog
    remote: str | None = None
    transport: asyncio.BaseTransport | None = None
    sender: asyncio.Task | None = None
    # Frames may be written to the transport directly (set once its sender runs, when no
    # compression was negotiated).
    direct: bool = False

    def can_take_now(self) -> bool:
        """True when a frame written to the transport now goes out after everything sent
        before it: nothing queued (an item leaves the queue only when the sender writes it,
        synchronously), nothing left in the transport's buffer, the socket open."""
        transport = self.transport
        return (self.direct and self.queue.empty() and not self.ws.closed
                and transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0)

    def wants(self, event_type: str | None, audience: frozenset[str] | None) -> bool:
        if self.view is View.MESH:
            return event_type in MESH_WIDE
        if self.view is View.AGENT:
            return event_type in MESH_WIDE or (audience is not None
                                               and self.agent_id in audience)
        return audience is None or not self.only_mine or self.agent_id in audience

    def admit(self, event: Encoded) -> bool:
        """Queue `event` for the sender; False (nothing queued) when the backlog would
        exceed its budget: the client is too far behind to be waited for."""
        size = len(event.data)
        if (self.queued_bytes + size > SEND_BUFFER_BYTES
                or self.queue.qsize() >= SEND_BUFFER_EVENTS):
            return False
        self.queued_bytes += size
        self.queue.put_nowait(event)
        return True

    def queue_error(self, message: str) -> None:
        """Answer a refused frame in order with the events (the Node server never answered
        frames; only the new modes refuse any)."""
        self.admit(Encoded("error", orjson.dumps({"type": "error", "error": message}).decode(),
                           None))


def text_frame(text: str) -> bytes:
    """A final, unmasked, uncompressed WebSocket text frame (RFC 6455 5.2), as a server sends
    it: what aiohttp's writer would write for `send_str(text)` without compression."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class _Frames:
    """One event's frames, each built on first use: plain and with its eventId."""

    __slots__ = ("event", "_plain", "_with_id")

    def __init__(self, event: Encoded) -> None:
        self.event = event
        self._plain: bytes | None = None
        self._with_id: bytes | None = None

    def get(self, with_id: bool) -> bytes:
        if with_id and self.event.id is not None:
            if self._with_id is None:
                self._with_id = text_frame(self.event.with_id())
            return self._with_id
        if self._plain is None:
            self._plain = text_frame(self.event.data)
        return self._plain


class Hub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.dropped = 0
        self.direct_writes = 0  # frames written straight to a transport (tests read it)
        # Events waiting for the drain task, oldest first: while any wait, later events queue
        # behind them, so every client still gets every event in order.
        self.backlog: deque[Encoded] = deque()
        self._drain: asyncio.Task | None = None
        self.deferred_steps = 0  # loop steps the drain task yielded (tests read it)

    def publish(self, event: dict, audience: Iterable[str] | None = None) -> None:
        """An event no write caused (a protocol transition the supervisor announces, a
        WebSocket heartbeat's health change): through the same path as a write's events."""
        payload = {k: v for k, v in event.items() if k != "type"}
        try:
            encoded = encode(Event(event["type"], payload, audience))
        except MeshError as exc:  # nothing to undo here, and nothing to tell a client
            log.warning("ws.event_not_encodable", event_type=event["type"], error=exc.message)
            return
        self.deliver([encoded])

    def deliver(self, events: list[Encoded]) -> None:
        """Queue encoded events for every interested client, in order; never awaited. The
        storage calls this after each COMMIT (`store.events`): the one way events reach
        clients. An event's audience names the agents it is addressed to; clients that
        asked for only their own events get it only when they are in it."""
        if not self.clients:
            return
        if self.backlog or len(events) * len(self.clients) > DELIVER_STEP:
            # Too much for one loop step: a task delivers it in steps, in order. Small writes
            # (the usual case) still reach every client before their answer is sent.
            self.backlog.extend(events)
            if self._drain is None or self._drain.done():
                self._drain = asyncio.get_running_loop().create_task(self._drain_backlog())
            return
        self._offer(events)

    async def _drain_backlog(self) -> None:
        while self.backlog:
            budget = DELIVER_STEP
            batch = []
            while self.backlog and budget > 0:
                batch.append(self.backlog.popleft())
                budget -= max(1, len(self.clients))
            self._offer(batch)
            if self.backlog:
                self.deferred_steps += 1
                await asyncio.sleep(0)  # let requests, probes and senders run

    def _offer(self, events: list[Encoded]) -> None:
        for event in events:
            frames = _Frames(event)
            for client in list(self.clients):
                if not client.wants(event.type, event.audience):
                    continue
                if client.can_take_now():
                    if event.id is None or event.id > client.sent_up_to:
                        client.transport.write(frames.get(client.with_ids))
                        self.direct_writes += 1
                    continue
                if not client.admit(event):
                    self._drop(client, "send buffer full")

    def _drop(self, client: Client, reason: str) -> None:
        self.clients.discard(client)
        self.dropped += 1
        log.warning("ws.client_dropped", client_id=client.client_id, agent_id=client.agent_id,
                    reason=reason)
        if client.sender:
            client.sender.cancel()  # it may be stuck writing to a peer that does not read
        asyncio.get_running_loop().create_task(close_within(client, 1013, reason))

    def count_from(self, remote: str | None) -> int:
        return sum(1 for c in self.clients if c.remote == remote)

    async def close_all(self, flush_timeout: float = 2.0) -> None:
        """Shutdown: give every client's queue a bounded time to empty (the events of writes
        already acknowledged), then close with 1001 Going Away."""
        deadline = asyncio.get_running_loop().time() + flush_timeout
        while ((self.backlog or any(not c.queue.empty() for c in self.clients))
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server shutdown")
        self.clients.clear()


async def close_within(client: Client, code: int, reason: str,
                       bound: float | None = None) -> None:
    """Close with a WebSocket close frame; a peer that does not take it (its receive window
    full, it never answers) has its TCP connection aborted after `bound` seconds (default
    CLOSE_BOUND), so its kernel buffers and our send buffer are released."""
    try:
        async with asyncio.timeout(CLOSE_BOUND if bound is None else bound):
            await client.ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    finally:
        if client.transport is not None:
            client.transport.abort()  # close() would wait for the buffer to drain


def cut_unflushed_later(transport: asyncio.BaseTransport | None, client_id: str) -> None:
    """When a socket's handler ends with bytes its peer has not taken still in `transport`,
    abort it if they are still there CLOSE_BOUND seconds later.

    aiohttp ends a socket whose peer misses a pong (a client that stopped reading before its
    backlog reached its budget) with `transport.close()`, which waits for the send buffer to
    drain: a peer that keeps its TCP connection open and never reads again then held its
    connection, our transport with up to a few hundred KiB of frames and the kernel's send
    buffer (megabytes) for as long as it liked, after its Client was long gone. A socket that
    closed normally has nothing left to send and is not touched (no timer holds it)."""
    if transport is None or not transport.get_write_buffer_size():
        return

    def cut() -> None:
        if transport.get_write_buffer_size():
            log.warning("ws.transport_cut", client_id=client_id,
                        unsent_bytes=transport.get_write_buffer_size())
            transport.abort()

    asyncio.get_running_loop().call_later(CLOSE_BOUND, cut)


async def _sender(client: Client) -> None:
    try:
        while True:
            event = await client.queue.get()
            client.queued_bytes -= len(event.data)
            if event.id is not None and event.id <= client.sent_up_to:
                continue  # already sent from the backlog of a resuming client
            await client.ws.send_str(event.with_id() if client.with_ids else event.data)
    except (ConnectionError, RuntimeError):  # peer gone; the handler logs the disconnect
        return


def _view(identity: Identity, ws_auth: str, agent_auth: str) -> View:
    if identity.kind is Kind.AGENT and agent_auth != "off":
        return View.AGENT
    if identity.kind is Kind.ANONYMOUS and ws_auth == "public":
        return View.MESH
    return View.FULL


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    # The web console authenticates with its session cookie, accepted from meshd's own pages
    # only: a foreign page riding the cookie is refused (cross-site WebSocket hijacking).
    console = console_sessions.ws_access(request)
    if console is False:
        return web.json_response({"error": "cross-origin console connection refused"},
                                 status=403)
    try:
        identity = await auth.identify(request)
    except MeshError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    if console and identity.kind is Kind.ANONYMOUS:
        identity = Identity(Kind.SHARED)  # a console session sees what the shared key sees
    if settings.ws_auth == "required" and identity.kind is Kind.ANONYMOUS:
        return web.json_response({"error": AUTH_FAILED}, status=401)
    view = _view(identity, settings.ws_auth, settings.agent_auth)
    query_agent = request.query.get("agentId")
    if view is View.AGENT and query_agent and query_agent != identity.agent_id:
        return web.json_response(
            {"error": f"this agent token acts as {identity.agent_id}; it cannot open a "
                      f"socket for {query_agent}"}, status=403)
    since = _since(request)
    if isinstance(since, web.Response):
        return since
    ws = web.WebSocketResponse(heartbeat=PING_INTERVAL, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "WebSocket upgrade required"}, status=400)
    hub: Hub = request.app[HUB]
    remote = request.remote
    cap = settings.ws_max_per_address
    if cap > 0 and not is_loopback(remote or "") and hub.count_from(remote) >= cap:
        log.warning("ws.address_cap", remote=remote, cap=cap)
        return web.json_response(
            {"error": f"too many WebSocket connections from this address (limit {cap})"},
            status=429)
    await ws.prepare(request)
    client = Client(ws, new_id(), view=view, remote=remote, transport=request.transport,
                    with_ids=since is not None)
    if view is View.AGENT:
        client.agent_id = identity.agent_id  # bound by its token, onlyMine enforced
    elif query_agent and view is View.FULL:
        client.agent_id = query_agent
        client.only_mine = request.query.get("onlyMine") == "true"
    # Join the hub first: events published from now on wait in the client's queue and are
    # sent after `connected` and the open events, never lost in between.
    hub.clients.add(client)
    sender = None
    try:
        await ws.send_str(orjson.dumps({"type": "connected", "clientId": client.client_id,
                                        "message": "Connected to Agent Mesh"}).decode())
        # A client that connects (or reconnects after an outage) learns what is still open.
        try:
            for row in await request.app[STORAGE].read(records.open_events):
                await ws.send_str(orjson.dumps(incidents.alert(row)).decode())
        except MeshError as exc:
            log.warning("ws.open_events_failed", error=exc.message)
        if await _refused(request, client):
            return ws
        if since is not None:
            await _replay(request, client, since)
        sender = client.sender = asyncio.create_task(_sender(client))
        # From now on the queue is drained by the sender: events may skip it when it is empty.
        client.direct = not ws.compress
        log.info("ws.connected", client_id=client.client_id, agent_id=client.agent_id,
                 view=client.view, credential=identity.kind)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_client_message(request, client, msg.data)
    except (ConnectionError, RuntimeError) as exc:
        # The peer went away while we wrote to it: the disconnect line below says it all.
        log.debug("ws.send_failed", client_id=client.client_id, error=type(exc).__name__)
    finally:
        if sender:
            sender.cancel()
        # The cancelled sender keeps its CancelledError, whose traceback holds the sender's
        # frame and so `client`: with `client.sender` pointing back at the task that is a
        # reference cycle, and the Client with its queue (up to SEND_BUFFER_BYTES of events)
        # waited for a full garbage collection, which a busy worker runs rarely (each round
        # of stalled clients added ~16 MiB to its RSS). Unlinked, refcounting frees it all
        # once the task is done.
        client.sender = None
        hub.clients.discard(client)
        cut_unflushed_later(client.transport, client.client_id)
        log.info("ws.disconnected", client_id=client.client_id, agent_id=client.agent_id)
    return ws


def _since(request: web.Request) -> int | None | web.Response:
    """`?since=ID`: the last event id the client saw (0: from the oldest kept)."""
    raw = request.query.get("since")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        return web.json_response({"error": "since must be a non-negative event id"},
                                 status=400)
    return int(raw)


async def _replay(request: web.Request, client: Client, since: int) -> None:
    """Send the events after `since` that this client may see, oldest first, before the live
    ones (already queued since it joined the hub; the sender skips those sent here). A client
    further behind than the events kept gets what is kept."""
    storage = request.app[STORAGE]
    while True:
        try:
            batch = await storage.read(event_log.after, since, REPLAY_BATCH)
        except MeshError as exc:
            log.warning("ws.replay_failed", client_id=client.client_id, error=exc.message)
            return
        for event in batch:
            if client.wants(event.type, event.audience):
                await client.ws.send_str(event.with_id())
            client.sent_up_to = since = event.id or since
        if len(batch) < REPLAY_BATCH:
            return


async def _refused(request: web.Request, client: Client, version: str | None = None) -> bool:
    """Close the socket of an agent a breaking update has left behind (code 4426)."""
    if not client.agent_id:
        return False
    state = await enforcement.current(request.app)
    unknown_ok = request.app[SETTINGS].unknown_version == "allow"
    too_old = state.too_old(client.agent_id, version or request.headers.get("X-Agent-Version"),
                            unknown_ok)
    if too_old is None:
        return False
    await close_outdated(client, state.problem(client.agent_id, too_old, "/ws"))
    return True


async def close_outdated(client: Client, problem: dict) -> None:
    with contextlib.suppress(Exception):
        await client.ws.send_str(orjson.dumps({**problem, "type": "upgrade_required"}).decode())
        await client.ws.close(code=enforcement.WS_CLOSE_UPGRADE,
                              message=f"upgrade to {problem['requiredVersion']}".encode()[:120])


async def _on_client_message(request: web.Request, client: Client, data: str) -> None:
    """`register_agent` binds the socket to an agent (and may ask for only its events);
    `heartbeat` refreshes the bound agent's last_seen. Anything else is ignored."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(frame, dict):
        return
    kind = frame.get("type")
    if kind not in ("register_agent", "heartbeat"):
        return
    refusal = _write_refusal(request, client, kind, frame.get("agentId"))
    if refusal:
        log.info("ws.frame_refused", client_id=client.client_id, frame_type=kind,
                 agent_id=client.agent_id, reason=refusal)
        client.queue_error(refusal)
        return
    if kind == "register_agent" and isinstance(frame.get("agentId"), str):
        client.agent_id = frame["agentId"]
        if "onlyMine" in frame and client.view is View.FULL:
            client.only_mine = frame["onlyMine"] is True
        await _refused(request, client, frame.get("version"))
    elif kind == "heartbeat" and client.agent_id:
        storage = request.app[STORAGE]
        if storage.read_only_reason:
            return
        try:
            # Like the HTTP heartbeat: refresh last_seen and revive an agent marked offline.
            await storage.write(
                emitting(health_store.record,
                         health_store.change_events(client.agent_id, {}, always=False)),
                client.agent_id, {}, db_time(), False)
        except NotFound:
            return
        except Exception as exc:  # noqa: BLE001 - a heartbeat frame never closes the socket
            log.warning("ws.heartbeat_failed", agent_id=client.agent_id, error=str(exc))
            return


def _write_refusal(request: web.Request, client: Client, kind: str, agent_id) -> str | None:
    """Why this socket may not send a `register_agent` or `heartbeat` frame, or None.

    The Node-compatible stream (ws_auth off, or the shared key) keeps its old behaviour,
    except that with agent_auth required binding to an agent needs the agent's token."""
    if client.view is View.MESH:
        return (f"{kind} needs a credential: connect with the API key or an agent token "
                "(?apiKey=...)")
    if client.view is View.AGENT:
        if kind == "register_agent" and agent_id != client.agent_id:
            return (f"this socket's token acts as {client.agent_id}; it cannot bind to "
                    f"{agent_id}")
        return None
    if request.app[SETTINGS].agent_auth == "required":
        return f"agent_auth is required: {kind} acts as an agent and needs its token"
    return None
