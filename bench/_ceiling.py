"""The ceiling: a bare aiohttp server with one catch-all handler, the fastest any aiohttp server
can answer on this machine with this client. It reads the whole request body (so an upload's
ceiling includes moving its bytes) and answers a small JSON object, or `X-Ceiling-Bytes` bytes
when the bench asks for a response as large as meshd's (downloads, inboxes, dashboards).

Run: python bench/_ceiling.py PORT [uvloop|asyncio]   (the scenarios bench starts it itself,
with the event loop meshd's worker uses)
"""

from __future__ import annotations

import sys

from aiohttp import web

SMALL = b'{"success":true}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    size = request.headers.get("X-Ceiling-Bytes")
    body = b"x" * int(size) if size else SMALL
    return web.Response(body=body, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=SMALL, content_type="application/json")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
