"""WebSocket fan-out writes each event's frame, built once, straight to the transports of the
clients that have nothing waiting, and queues it for the others: order kept per client, views
and eventIds kept, compressed clients on their queue. The first test guards the aiohttp
internals this relies on (aiohttp is pinned to a minor version)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from meshd.api.keys import HUB
from meshd.api.ws import text_frame
from tests.conftest import register, ws_connect
from tests.support import async_poll


class _Transport:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def is_closing(self) -> bool:
        return False


class _Protocol:
    _paused = False


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000, 65535, 65536, 70000])
def test_text_frame_is_what_aiohttps_writer_writes_synchronously(size):
    """The direct path is sound only while (1) the frame is the one aiohttp's writer builds
    for an uncompressed text message and (2) the writer writes it before its first await
    (so a frame taken from a client's queue is on the transport before the next event
    looks at the queue). Both are checked here against the installed aiohttp."""
    text = "é" * (size // 2) + "x" * (size % 2)
    transport = _Transport()
    writer = WebSocketWriter(_Protocol(), transport, compress=0)
    step = writer.send_frame(text.encode(), WSMsgType.TEXT)
    with pytest.raises(StopIteration):
        step.send(None)  # ran to its end without suspending
    assert b"".join(transport.chunks) == text_frame(text)


async def connected_client(hub, before: set):
    """The hub's Client object of the socket just opened, once its sender runs."""
    def fresh():
        new = [c for c in hub.clients if c not in before and c.sender is not None]
        return new[0] if new else None
    return await async_poll(fresh, timeout=5, what="client joined with its sender")


async def compressed_listener(client):
    """The hub, a permessage-deflate WebSocket past its `connected` frame, and its Client in
    the hub once its sender runs (a compressed client's events always go through its queue)."""
    hub = client.server.app[HUB]
    before = set(hub.clients)
    ws = await client.ws_connect("/ws", compress=15)
    assert (await ws.receive_json(timeout=5))["type"] == "connected"
    return hub, ws, await connected_client(hub, before)


async def listeners(client, hub, count: int) -> list:
    """`count` plain WebSocket clients, each returned once its sender runs in the hub."""
    sockets = []
    for _ in range(count):
        before = set(hub.clients)
        sockets.append(await ws_connect(client))
        await connected_client(hub, before)
    return sockets


async def test_events_go_straight_to_idle_clients_in_order(client):
    hub = client.server.app[HUB]
    sockets = await listeners(client, hub, 3)
    before_writes = hub.direct_writes
    for k in range(200):
        hub.publish({"type": "broadcast", "seq": k})
    for ws in sockets:
        seen = [(await ws.receive_json(timeout=5))["seq"] for _ in range(200)]
        assert seen == list(range(200))
    assert hub.direct_writes > before_writes  # at least the first of each went directly
    for ws in sockets:
        await ws.close()


async def test_a_client_with_queued_frames_gets_the_event_behind_them(client):
    hub = client.server.app[HUB]
    ws = await ws_connect(client)
    member = await connected_client(hub, set())
    writes = hub.direct_writes
    member.queue_error("queued first")  # in its queue, not yet written by its sender
    hub.publish({"type": "broadcast", "seq": 1})  # the same loop step: must queue behind
    assert hub.direct_writes == writes
    assert (await ws.receive_json(timeout=5)) == {"type": "error", "error": "queued first"}
    assert (await ws.receive_json(timeout=5))["seq"] == 1
    # Its queue drained, the next event is written directly again.
    await async_poll(member.queue.empty, timeout=5, what="queue drained")
    hub.publish({"type": "broadcast", "seq": 2})
    assert hub.direct_writes == writes + 1
    assert (await ws.receive_json(timeout=5))["seq"] == 2
    await ws.close()


async def test_ids_and_views_survive_the_direct_path(client):
    """A resuming client (?since=) gets eventId on live frames, others do not; an agent's
    onlyMine socket gets only its own events."""
    hub = client.server.app[HUB]
    alice = await register(client, "Alice")
    bob = await register(client, "Bob")
    before = set(hub.clients)
    plain = await ws_connect(client)
    await connected_client(hub, before)
    before = set(hub.clients)
    resuming = await ws_connect(client, "/ws?since=999999")
    await connected_client(hub, before)
    before = set(hub.clients)
    mine = await ws_connect(client, f"/ws?agentId={bob}&onlyMine=true")
    await connected_client(hub, before)
    writes = hub.direct_writes
    status = (await client.post("/api/messages",
                                json={"from": alice, "to": alice, "content": "self"})).status
    assert status == 200
    status = (await client.post("/api/messages",
                                json={"from": alice, "to": bob, "content": "hi"})).status
    assert status == 200
    first, second = ([await plain.receive_json(timeout=5) for _ in range(2)])
    assert "eventId" not in first and "eventId" not in second
    with_ids = [await resuming.receive_json(timeout=5) for _ in range(2)]
    assert [f["eventId"] for f in with_ids] == sorted(f["eventId"] for f in with_ids)
    assert {k: v for k, v in with_ids[1].items() if k != "eventId"} == second
    only = await mine.receive_json(timeout=5)
    assert only == second  # not the message Alice sent herself
    assert hub.direct_writes >= writes + 5
    for ws in (plain, resuming, mine):
        await ws.close()


async def test_a_compressed_client_gets_its_events_through_its_queue(client):
    hub, ws, member = await compressed_listener(client)
    assert member.ws.compress and not member.direct
    writes = hub.direct_writes
    for k in range(20):
        hub.publish({"type": "broadcast", "seq": k, "pad": "z" * 500})
    seen = [(await ws.receive_json(timeout=5))["seq"] for _ in range(20)]
    assert seen == list(range(20))
    assert hub.direct_writes == writes
    await ws.close()
    await asyncio.sleep(0)


async def test_a_burst_of_small_events_does_not_drop_a_listener_that_is_behind(client):
    """Thousands of agents going offline at once are thousands of small events in one loop
    step. A listener whose events are queued (a compressed one always is) gets them all, in
    order: its backlog is bounded in bytes, not at a few hundred events."""
    hub, ws, member = await compressed_listener(client)
    dropped = hub.dropped
    burst = 5000
    for k in range(burst):
        hub.publish({"type": "agent_health_change", "seq": k})
    assert member.queue.qsize() >= burst - 1 and hub.dropped == dropped
    seen = [(await ws.receive_json(timeout=10))["seq"] for _ in range(burst)]
    assert seen == list(range(burst))
    await async_poll(lambda: member.queued_bytes == 0, timeout=5, what="backlog drained")
    await ws.close()


async def test_a_backlog_past_its_byte_budget_drops_the_client(client, monkeypatch):
    from meshd.api import ws as ws_module

    monkeypatch.setattr(ws_module, "SEND_BUFFER_BYTES", 64 * 1024)
    hub, ws, member = await compressed_listener(client)
    dropped = hub.dropped
    for k in range(20):  # 20 x 8 KiB queued in one step: past 64 KiB
        hub.publish({"type": "broadcast", "seq": k, "pad": "z" * 8192})
    assert hub.dropped == dropped + 1 and member not in hub.clients
    await ws.close()


async def test_a_huge_burst_is_delivered_in_steps_that_leave_the_loop_free(client, monkeypatch):
    """Thousands of events to many listeners are delivered a step at a time: other tasks
    (requests, the supervisor's probes) run between steps, and every client still gets every
    event in order, a later small event included."""
    from meshd.api import ws as ws_module
    from meshd.store.events import Encoded

    monkeypatch.setattr(ws_module, "DELIVER_STEP", 100)
    hub = client.server.app[HUB]
    sockets = await listeners(client, hub, 3)
    burst = [Encoded("broadcast", f'{{"type":"broadcast","seq":{k}}}', None)
             for k in range(1000)]
    seen_mid_drain: list[int] = []

    async def bystander() -> None:  # stands for a request served while the burst drains
        seen_mid_drain.append(len(hub.backlog))

    hub.deliver(burst)
    assert len(hub.backlog) == 1000  # nothing delivered in the caller's step
    asyncio.get_running_loop().create_task(bystander())
    hub.publish({"type": "broadcast", "seq": 1000})  # behind the burst, not before it
    for ws in sockets:
        seen = [(await ws.receive_json(timeout=10))["seq"] for _ in range(1001)]
        assert seen == list(range(1001))
    assert seen_mid_drain and seen_mid_drain[0] > 0
    assert hub.deferred_steps > 0 and not hub.backlog
    for ws in sockets:
        await ws.close()
