"""The API worker: opens the store, serves HTTP + /ws on a socket, drains on SIGTERM.

It is the only SQL writer while it runs. It serves either on a socket handed to it by the
supervisor (so restarts refuse no connection) or on one it binds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshd import jobs
from meshd import log as logging
from meshd.api.app import make_app
from meshd.config import Settings
from meshd.store.sqlite import SqliteStorage
from meshd.ws import Hub

log = logging.get("meshd.worker")


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def open_storage(settings: Settings, on_corruption: Callable[[str], None] | None = None):
    return SqliteStorage(settings.database, settings.data_dir / "journal",
                         readers=settings.readers, on_corruption=on_corruption)


async def serve(
    settings: Settings,
    sock: socket.socket | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then drain and close the store."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    storage = open_storage(settings)
    await storage.start()
    hub = Hub()
    app = make_app(settings, storage, hub)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=settings.drain_timeout)
    await runner.setup()
    sock = sock or bind_socket(settings.host, settings.port)
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    background = jobs.start(settings, storage, hub)
    log.info("worker.serving", host=settings.host, port=port, database=str(settings.database))
    if on_ready:
        result = on_ready(port)
        if asyncio.iscoroutine(result):
            await result
    await stop.wait()
    started = time.monotonic()
    log.info("worker.draining", timeout_s=settings.drain_timeout)
    await jobs.stop(background)
    await runner.cleanup()  # stops accepting, waits for in-flight requests, closes sockets
    await storage.close()
    log.info("worker.stopped", drain_s=round(time.monotonic() - started, 3),
             journal_seq=storage.journal_seq)
