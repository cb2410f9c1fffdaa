"""The ceiling: a bare aiohttp server with one catch-all handler, the fastest any aiohttp server
can answer on this machine with this client. It reads the whole request body (so an upload's
ceiling includes moving its bytes) and answers a small JSON object, or `X-Ceiling-Bytes` bytes
when the bench asks for a response as large as meshd's (downloads, inboxes, dashboards), or,
with `X-Ceiling-Gzip-File`, that file's bytes as a gzip-encoded body: the very bytes meshd sends
for a gzipped snapshot, so the client decompresses the same body from both.

Run: python bench/_ceiling.py PORT [uvloop|asyncio]   (the scenarios bench starts it itself,
with the event loop meshd's worker uses)
"""

from __future__ import annotations

import asyncio
import struct
import sys

import orjson
from aiohttp import web

SMALL = b'{"success":true}'
_files: dict[str, bytes] = {}


async def answer(request: web.Request) -> web.Response:
    await request.read()
    gzipped = request.headers.get("X-Ceiling-Gzip-File")
    if gzipped:
        if gzipped not in _files:
            with open(gzipped, "rb") as f:
                _files[gzipped] = f.read()
        return web.Response(body=_files[gzipped], content_type="application/json",
                            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    size = request.headers.get("X-Ceiling-Bytes")
    body = b"x" * int(size) if size else SMALL
    return web.Response(body=body, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=SMALL, content_type="application/json")


# WebSocket fan-out: the fastest an aiohttp server can hand one event to every listener
# (the frame built once, written to each transport), for the bench's fan-out scenario.
LISTENERS: dict[web.WebSocketResponse, asyncio.Transport] = {}


async def listen(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20.0)
    await ws.prepare(request)
    LISTENERS[ws] = request.transport
    try:
        async for _ in ws:
            pass
    finally:
        LISTENERS.pop(ws, None)
    return ws


async def register(request: web.Request) -> web.Response:
    """Announce the name to every listener, as meshd announces a registration."""
    name = (await request.json())["name"]
    frame = text_frame(orjson.dumps({"type": "agent_joined", "agent": {"name": name}}))
    for transport in list(LISTENERS.values()):
        if transport is not None and not transport.is_closing():
            transport.write(frame)
    return web.Response(body=SMALL, content_type="application/json")


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/health", health)
    app.router.add_get("/ws", listen)
    app.router.add_post("/api/agents/register", register)
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
