"""Builds the aiohttp application: routers of every resource, middleware, shared objects."""

from __future__ import annotations

import warnings

from aiohttp import web

from meshd.api import (
    admin,
    agents,
    auth,
    catastrophe,
    console,
    files,
    groups,
    health,
    memory,
    messages,
    metrics,
    openapi,
    skills,
    system,
    tokens,
    updates,
)
from meshd.api.enforcement import Enforcement, enforce
from meshd.api.keys import ENFORCEMENT, HUB, INFLIGHT, SETTINGS, STORAGE, SUPERVISOR
from meshd.api.middleware import InFlight, guard, pipeline
from meshd.api.routing import TolerantRouter
from meshd.api.snapshots import SNAPSHOTS, make_snapshots
from meshd.api.supervision import SupervisorLink, Unsupervised
from meshd.api.ws import Hub, websocket_handler
from meshd.config import Settings
from meshd.store.base import Storage

# Declaration order is match precedence among routes of equal specificity, as in Express.
RESOURCES = (agents, tokens, messages, skills, groups, memory, files, updates, catastrophe, health,
             system, admin, openapi)


def make_app(settings: Settings, storage: Storage, hub: Hub | None = None,
             supervisor: SupervisorLink | None = None) -> web.Application:
    # aiohttp's own limit must admit the largest upload; each route applies its own limit.
    max_size = max(settings.max_body_size, settings.max_file_size * 4 // 3 + (1 << 20))
    with warnings.catch_warnings():
        # A custom router is the one hook that resolves before middleware runs; aiohttp 3
        # deprecates the argument but keeps it (docs/decisions.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        app = web.Application(router=TolerantRouter(),
                              middlewares=[metrics.observe, pipeline, auth.middleware, guard,
                                           enforce],
                              client_max_size=max_size)
    app[SETTINGS] = settings
    app[STORAGE] = storage
    app[HUB] = hub or Hub()
    if storage is not None:  # None: an app built only to list its routes (tests, OpenAPI)
        storage.set_event_sink(app[HUB].deliver)  # what committed writes emit reaches /ws
    app[SUPERVISOR] = supervisor or Unsupervised()
    app[ENFORCEMENT] = Enforcement()
    app[INFLIGHT] = InFlight()
    app[SNAPSHOTS] = make_snapshots()
    for module in RESOURCES:
        app.router.add_routes(module.routes)
    app.router.add_get("/ws", websocket_handler)
    metrics.setup(app)
    console.setup(app)
    if settings.mcp:
        from meshd.mcp.http import mount  # the SDK is loaded only when MCP is enabled

        mount(app)
    app.on_shutdown.append(_close_websockets)
    return app


async def _close_websockets(app: web.Application) -> None:
    """Shutdown: requests in flight finish (and publish their events) before the sockets
    close; both bounded by drain_timeout."""
    await app[INFLIGHT].wait_idle(app[SETTINGS].drain_timeout)
    await app[HUB].close_all()
