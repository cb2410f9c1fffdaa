"""What a WebSocket client leaves in the worker once it is gone: nothing. Stalled clients (a
raw socket that never reads) dropped round after round, stalled clients cut for missing their
pongs before their backlog reached its budget, and a thousand clients that connect, receive
and leave normally: afterwards no Client, queue, queued event or server socket of theirs is
left and the hub is empty.

The stalled clients' checks run with the cyclic garbage collector off: what a gone client
held must be freed by reference counting, at once. A reference cycle (the cancelled sender
task's traceback holding its Client) kept each dropped client's queue, up to 16 MiB of
events, until a full collection, which a busy worker runs rarely: its RSS grew round after
round of stalled clients. The server is the worker's own (`GuardedAppRunner`, aiohttp's
defaults: a handler is not cancelled when its connection is lost), on loopback; every check
polls with a deadline. docs/performance.md has the memory figures these go with."""

from __future__ import annotations

import asyncio
import base64
import gc
import socket
import weakref

import aiohttp
import pytest
from aiohttp import web

from meshd.api import ws as ws_module
from meshd.api.app import make_app
from meshd.api.keys import HUB
from meshd.http_server import GuardedAppRunner
from meshd.store.events import Encoded
from tests.conftest import API_KEY, AUTH
from tests.support import async_poll

pytestmark = pytest.mark.sqlite_only  # the hub's memory, the same on either backend

PAD = "x" * 65536


@pytest.fixture
async def server(settings, storage):
    """(port, app) of the real app on the worker's runner, on a loopback port."""
    app = make_app(settings, storage)
    runner = GuardedAppRunner(app, header_timeout=5.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], app
    await runner.cleanup()


@pytest.fixture
def refcounting_only():
    """The cyclic garbage collector off for the test (what it leaves must be freed by
    reference counting), back on and run afterwards."""
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()
    gc.collect()


def stalled_socket(port: int) -> socket.socket:
    """A WebSocket client that completes nothing but its request and never reads: its tiny
    receive buffer fills at once, then the server's kernel buffer, then its transport's."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nX-API-Key: {API_KEY}\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


async def serving(hub, count: int) -> list:
    """The hub's `count` clients once each one's sender runs (the hub holds no others)."""
    def ready():
        members = [c for c in hub.clients if c.sender is not None]
        return members if len(members) == count else None
    return await async_poll(ready, timeout=10, what=f"{count} clients serving")


def alive_encoded(marker: str) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, Encoded) and marker in o.data)


class Traces:
    """Weak references to what the hub held for some clients, and their server-side sockets:
    `gone()` once every one is freed or closed."""

    def __init__(self, members: list) -> None:
        self.clients = [weakref.ref(c) for c in members]
        self.queues = [weakref.ref(c.queue) for c in members]
        self.sockets = [c.transport.get_extra_info("socket") for c in members]

    def left(self, hub, marker: str) -> str | None:
        what = []
        if hub.clients:
            what.append(f"{len(hub.clients)} in the hub")
        if alive := sum(r() is not None for r in self.clients):
            what.append(f"{alive} Client objects")
        if alive := sum(r() is not None for r in self.queues):
            what.append(f"{alive} queues")
        if alive := sum(s.fileno() != -1 for s in self.sockets):
            what.append(f"{alive} server sockets open")
        if alive := alive_encoded(marker):
            what.append(f"{alive} queued events")
        return ", ".join(what) or None

    async def gone(self, hub, marker: str, timeout: float = 15) -> None:
        left: list[str | None] = [None]

        def check() -> bool:
            left[0] = self.left(hub, marker)
            return left[0] is None
        try:
            await async_poll(check, timeout=timeout, what="the clients' memory freed")
        except AssertionError:
            raise AssertionError(f"still there: {left[0]}") from None


async def test_stalled_clients_dropped_round_after_round_leave_nothing(
        server, monkeypatch, refcounting_only):
    """Each round: three clients that never read, 64 KiB events until all three overflow
    their budget and are dropped. In even rounds the peers stay connected (meshd must cut
    them), in odd rounds they leave once dropped. After every round nothing of theirs is
    left, without a garbage collection: not the Client, its queue, the events it had
    queued, nor the server's socket."""
    monkeypatch.setattr(ws_module, "SEND_BUFFER_BYTES", 1 << 20)  # 16 events, not 256
    monkeypatch.setattr(ws_module, "CLOSE_BOUND", 0.5)
    port, app = server
    hub = app[HUB]
    for round_ in range(4):
        socks = [stalled_socket(port) for _ in range(3)]
        traces = Traces(await serving(hub, 3))
        marker = f"stalled-round-{round_}"
        dropped = hub.dropped
        seq = 0
        while hub.dropped < dropped + 3:
            hub.publish({"type": "broadcast", "round": marker, "seq": seq, "pad": PAD})
            seq += 1
            await asyncio.sleep(0)
        assert alive_encoded(marker) > 0  # what the check below sees go does exist
        if round_ % 2:
            for sock in socks:
                sock.close()
        await traces.gone(hub, marker)
        for sock in socks:
            sock.close()


async def test_a_stalled_client_under_its_budget_is_cut_once_it_misses_its_pongs(
        server, monkeypatch, refcounting_only):
    """A client that stops reading while its backlog is far below its budget is ended by
    the protocol pings: aiohttp then only `close()`s its transport, which waits for the peer
    to read what is buffered, so a peer that never reads again kept its connection, our
    buffered frames and the kernel's send buffer for good. meshd aborts such a transport
    CLOSE_BOUND seconds after the socket's handler ended."""
    monkeypatch.setattr(ws_module, "PING_INTERVAL", 1.0)
    monkeypatch.setattr(ws_module, "CLOSE_BOUND", 0.5)
    port, app = server
    hub = app[HUB]
    sock = stalled_socket(port)
    (member,) = await serving(hub, 1)
    transport = member.transport
    traces = Traces([member])
    del member
    dropped = hub.dropped
    # Events until bytes wait in our transport, the kernel's buffers being full (a few MiB
    # on loopback): stalled for real, yet far below the 16 MiB budget.
    seq = 0
    while not transport.get_write_buffer_size():
        assert seq < 160, "the kernel took 10 MiB from a peer that reads nothing"
        hub.publish({"type": "broadcast", "round": "under-budget", "seq": seq, "pad": PAD})
        seq += 1
        await asyncio.sleep(0)
    await traces.gone(hub, "under-budget")
    assert hub.dropped == dropped  # ended by the pings, not by the budget
    sock.close()


async def test_a_thousand_clients_that_come_receive_and_leave_leave_nothing(server):
    """1,000 clients one after another, each receiving an event and closing normally: the
    objects a connection creates (Client, WebSocketResponse, request handler, transport,
    tasks) are all freed afterwards, the hub is empty."""
    port, app = server
    hub = app[HUB]
    kinds = ("Client", "WebSocketResponse", "GuardedRequestHandler",
             "_SelectorSocketTransport", "Task")

    def census() -> dict[str, int]:
        gc.collect()
        counts = dict.fromkeys(kinds, 0)
        for o in gc.get_objects():
            name = type(o).__name__
            if name in counts:
                counts[name] += 1
        return counts

    url = f"http://127.0.0.1:{port}/ws"
    async with aiohttp.ClientSession(headers=AUTH) as session:
        # One client first: whatever a first connection creates once (caches) is made here.
        async with session.ws_connect(url) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "connected"
        await async_poll(lambda: not hub.clients, timeout=5, what="hub empty")
        before = census()
        for k in range(1000):
            async with session.ws_connect(url) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "connected"
                hub.publish({"type": "broadcast", "seq": k, "round": "come-and-go"})
                while (frame := await ws.receive_json(timeout=5))["type"] != "broadcast":
                    pass
                assert frame["seq"] == k
        await async_poll(lambda: not hub.clients, timeout=10, what="hub empty")
        last: list[dict] = [{}]

        def same() -> bool:
            last[0] = census()
            return all(last[0][kind] <= before[kind] for kind in kinds)
        try:
            await async_poll(same, timeout=15, what="no more connection objects than before")
        except AssertionError:
            raise AssertionError(f"before {before}, after {last[0]}") from None
    assert alive_encoded("come-and-go") == 0
