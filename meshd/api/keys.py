"""Typed keys for what the application shares with its handlers (no globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from meshd.api.enforcement import Enforcement
    from meshd.api.middleware import InFlight
    from meshd.api.supervision import SupervisorLink
    from meshd.api.ws import Hub
    from meshd.config import Settings
    from meshd.store.base import Storage

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
HUB: web.AppKey[Hub] = web.AppKey("hub")
SUPERVISOR: web.AppKey[SupervisorLink] = web.AppKey("supervisor")
ENFORCEMENT: web.AppKey[Enforcement] = web.AppKey("enforcement")
INFLIGHT: web.AppKey[InFlight] = web.AppKey("inflight")


def storage(request: web.Request) -> Storage:
    return request.app[STORAGE]


def hub(request: web.Request) -> Hub:
    return request.app[HUB]


def supervisor(request: web.Request) -> SupervisorLink:
    return request.app[SUPERVISOR]


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]

# The agent a request acts for, once a handler knows it (for the request log line).
AGENT_ID: web.RequestKey[str] = web.RequestKey("agent_id", str)
# The kind of credential a request carried (api/auth.py), for the request log line.
CREDENTIAL: web.RequestKey[str] = web.RequestKey("credential", str)
