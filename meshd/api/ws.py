"""WebSocket hub at /ws: fan-out that never blocks the request that caused an event.

Each client has a bounded send queue drained by its own task; a client whose queue fills (slow
or dead) is dropped instead of waited for. Protocol pings detect dead peers.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from meshd.store import health as health_store
from meshd.store import records
from meshd.store.events import Encoded, Event, emitting, encode

log = logging.get("meshd.ws")

SEND_BUFFER = 256
PING_INTERVAL = 20.0
CLOSE_BOUND = 5.0  # a dropped client's close handshake gets this long, then the TCP is cut


# What a socket without a key may see when ws_auth is public, and what an agent's socket sees
# besides the events addressed to it: nothing in them is private to one agent.
MESH_WIDE = frozenset({"agent_joined", "broadcast", "system_update", "catastrophe_alert",
                       "agent_health_change"})


class View(StrEnum):
    FULL = "full"          # every event (the Node server's stream); onlyMine narrows it
    MESH = "mesh"          # mesh-wide events only, and no writes (anonymous, ws_auth public)
    AGENT = "agent"        # one agent's events plus the mesh-wide ones (an agent token)


@dataclass(eq=False, slots=True)
class Client:
    ws: web.WebSocketResponse
    client_id: str
    agent_id: str | None = None
    only_mine: bool = False
    view: View = View.FULL
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SEND_BUFFER))
    remote: str | None = None
    transport: asyncio.BaseTransport | None = None
    sender: asyncio.Task | None = None

    def wants(self, event_type: str | None, audience: frozenset[str] | None) -> bool:
        if self.view is View.MESH:
            return event_type in MESH_WIDE
        if self.view is View.AGENT:
            return event_type in MESH_WIDE or (audience is not None
                                               and self.agent_id in audience)
        return audience is None or not self.only_mine or self.agent_id in audience

    def queue_error(self, message: str) -> None:
        """Answer a refused frame in order with the events (the Node server never answered
        frames; only the new modes refuse any)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(orjson.dumps({"type": "error", "error": message}).decode())


class Hub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.dropped = 0

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
        for event in events:
            for client in list(self.clients):
                if not client.wants(event.type, event.audience):
                    continue
                try:
                    client.queue.put_nowait(event.data)
                except asyncio.QueueFull:
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
        while (any(not c.queue.empty() for c in self.clients)
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server shutdown")
        self.clients.clear()


async def close_within(client: Client, code: int, reason: str,
                       bound: float = CLOSE_BOUND) -> None:
    """Close with a WebSocket close frame; a peer that does not take it (its receive window
    full, it never answers) has its TCP connection aborted after `bound` seconds, so its
    kernel buffers and our send buffer are released."""
    try:
        async with asyncio.timeout(bound):
            await client.ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    finally:
        if client.transport is not None:
            client.transport.abort()  # close() would wait for the buffer to drain


async def _sender(client: Client) -> None:
    try:
        while True:
            data = await client.queue.get()
            await client.ws.send_str(data)
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
    client = Client(ws, new_id(), view=view, remote=remote, transport=request.transport)
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
        sender = client.sender = asyncio.create_task(_sender(client))
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
        hub.clients.discard(client)
        log.info("ws.disconnected", client_id=client.client_id, agent_id=client.agent_id)
    return ws


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
