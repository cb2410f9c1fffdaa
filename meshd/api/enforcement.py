"""Breaking-update enforcement: after a breaking update's grace period, requests that *send*
something on behalf of an agent below the required version are refused with upgrade
instructions (an RFC 9457 problem body with `error` for old clients), until the update is
complete. Registration, heartbeats, health, reads and acknowledgments are never refused: they
are how an agent reports its upgrade; nor are requests that name no agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web

from meshd import semver
from meshd.api.http import read_body
from meshd.api.keys import ENFORCEMENT, HUB, SETTINGS, STORAGE
from meshd.clock import db_time, utcnow
from meshd.errors import UpgradeRequired
from meshd.store import updates as updates_store

# Routes that send something: messages, broadcasts, skill invocations, uploads.
SENDING_ROUTES = frozenset({
    ("POST", "/api/messages"), ("POST", "/api/broadcast"),
    ("POST", "/api/skills/{id}/invoke"), ("POST", "/api/files/upload"),
    ("POST", "/api/groups/{groupId}/broadcast"),
})
REFRESH_SECONDS = 2.0
WS_CLOSE_UPGRADE = 4426  # 4000-range: application close code, "426 upgrade required"


@dataclass
class Enforcement:
    """What the worker enforces now, refreshed from the database every few seconds."""

    update_id: str | None = None
    required: str | None = None
    instructions: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # agent -> last acknowledged
    refreshed: float = 0.0

    def note_version(self, agent_id: str, version: str | None) -> None:
        if version:
            self.versions[agent_id] = version

    def too_old(self, agent_id: str, header_version: str | None,
                unknown_allowed: bool) -> str | None:
        """The agent's version when it is below the requirement ("" when unknown and unknown
        versions are refused), else None."""
        if not self.required:
            return None
        version = header_version or self.versions.get(agent_id)
        if not version:
            return None if unknown_allowed else ""
        return version if semver.compare(version, self.required) < 0 else None

    def problem(self, agent_id: str, version: str, instance: str) -> dict:
        shown = version or "unknown"
        message = (f"agent {agent_id} runs version {shown}, below the required version "
                   f"{self.required} of update {self.update_id}; upgrade required")
        return {
            "type": "urn:meshd:problem:agent-upgrade-required",
            "title": "Agent upgrade required",
            "status": 426,
            "detail": message,
            "instance": instance,
            "error": message,
            "updateId": self.update_id,
            "requiredVersion": self.required,
            "agentVersion": version or None,
            "upgradeInstructions": self.instructions,
        }


async def current(app: web.Application) -> Enforcement:
    state: Enforcement = app[ENFORCEMENT]
    if time.monotonic() - state.refreshed < REFRESH_SECONDS:
        return state
    state.refreshed = time.monotonic()
    grace = app[SETTINGS].update_grace
    update, versions = await app[STORAGE].read(
        updates_store.enforcement_state, db_time(utcnow() - timedelta(seconds=grace)))
    if update is None:
        state.update_id = state.required = state.instructions = None
        state.versions.clear()
    else:
        state.update_id = update["id"]
        state.required = update["required_version"]
        state.instructions = update["announcement"] or update["description"]
        state.versions.update(versions)
        _close_outdated_sockets(app, state)
    return state


def _close_outdated_sockets(app: web.Application, state: Enforcement) -> None:
    from meshd.api.ws import close_outdated  # ws imports this module

    unknown_ok = app[SETTINGS].unknown_version == "allow"
    hub = app[HUB]
    for client in list(hub.clients):
        if not client.agent_id:
            continue
        version = state.too_old(client.agent_id, None, unknown_ok)
        if version is not None:
            hub.clients.discard(client)
            asyncio.get_running_loop().create_task(
                close_outdated(client, state.problem(client.agent_id, version, "/ws")))


async def acting_agent(request: web.Request) -> str | None:
    """The agent a request is made for: X-Agent-Id, the path, or the body's from/agentId."""
    agent = request.headers.get("X-Agent-Id") or request.match_info.get("agentId")
    if agent:
        return agent
    body = await read_body(request)
    for key in ("from", "agentId"):
        if isinstance(body.get(key), str) and body[key]:
            return body[key]
    return None


async def require_current(request: web.Request, agent: str | None) -> None:
    """Raise UpgradeRequired when `agent` is below the version a breaking update requires."""
    if not agent:
        return
    state = await current(request.app)
    if not state.required:
        return
    unknown_ok = request.app[SETTINGS].unknown_version == "allow"
    version = state.too_old(agent, request.headers.get("X-Agent-Version"), unknown_ok)
    if version is None:
        return
    problem = state.problem(agent, version, request.path)
    raise UpgradeRequired(problem.pop("error"), extra=problem,
                          headers={"Upgrade": f"agent-mesh/{state.required}"})


@web.middleware
async def enforce(request: web.Request, handler):
    """Sending routes are checked before the handler runs; the upload route checks in its
    handler, because it streams its body and nothing may read it first."""
    resource = request.match_info.route.resource
    if resource is None or (request.method, resource.canonical) not in SENDING_ROUTES:
        return await handler(request)
    if resource.canonical != "/api/files/upload" and (await current(request.app)).required:
        await require_current(request, await acting_agent(request))
    return await handler(request)
