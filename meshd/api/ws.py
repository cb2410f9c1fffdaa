"""WebSocket hub at /ws: fan-out that never blocks the request that caused an event.

Each client has a bounded send queue drained by its own task; a client whose queue fills (slow
or dead) is dropped instead of waited for. Protocol pings detect dead peers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from meshd import incidents
from meshd import log as logging
from meshd.api import enforcement
from meshd.api.keys import HUB, SETTINGS, STORAGE
from meshd.api.middleware import key_matches, presented_key
from meshd.clock import db_time, new_id
from meshd.errors import MeshError, NotFound
from meshd.store import health as health_store
from meshd.store import records
from meshd.store.events import Encoded, Event, emitting, encode

log = logging.get("meshd.ws")

SEND_BUFFER = 256
PING_INTERVAL = 20.0


@dataclass(eq=False, slots=True)
class Client:
    ws: web.WebSocketResponse
    client_id: str
    agent_id: str | None = None
    only_mine: bool = False
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SEND_BUFFER))

    def wants(self, audience: frozenset[str] | None) -> bool:
        return audience is None or not self.only_mine or self.agent_id in audience


class Hub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.dropped = 0

    def publish(self, event: dict, audience: Iterable[str] | None = None) -> None:
        """An event no write caused (a protocol transition the supervisor announces, a
        WebSocket heartbeat's health change): through the same path as a write's events."""
        payload = {k: v for k, v in event.items() if k != "type"}
        self.deliver([encode(Event(event["type"], payload, audience))])

    def deliver(self, events: list[Encoded]) -> None:
        """Queue encoded events for every interested client, in order; never awaited. The
        storage calls this after each COMMIT (`store.events`): the one way events reach
        clients. An event's audience names the agents it is addressed to; clients that
        asked for only their own events get it only when they are in it."""
        if not self.clients:
            return
        for event in events:
            for client in list(self.clients):
                if not client.wants(event.audience):
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
        asyncio.get_running_loop().create_task(
            client.ws.close(code=1013, message=reason.encode()))

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


async def _sender(client: Client) -> None:
    while True:
        data = await client.queue.get()
        await client.ws.send_str(data)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    candidate = presented_key(request)
    if settings.ws_auth and not key_matches(candidate, settings.api_key):
        return web.json_response({"error": "Invalid or missing API key"}, status=401)
    ws = web.WebSocketResponse(heartbeat=PING_INTERVAL, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "WebSocket upgrade required"}, status=400)
    await ws.prepare(request)
    hub: Hub = request.app[HUB]
    client = Client(ws, new_id())
    query_agent = request.query.get("agentId")
    if query_agent:
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
        sender = asyncio.create_task(_sender(client))
        log.info("ws.connected", client_id=client.client_id, agent_id=client.agent_id)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_client_message(request, client, msg.data)
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
    if kind == "register_agent" and isinstance(frame.get("agentId"), str):
        client.agent_id = frame["agentId"]
        if "onlyMine" in frame:
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
