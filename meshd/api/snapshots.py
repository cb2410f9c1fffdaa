"""Encoded responses kept until a write could change them: the dashboard and the agent list.

Both read every agent, so building them per request costs time proportional to the fleet
(10,000 agents: tens of milliseconds of SQL, dict building and JSON encoding). A snapshot is
the encoded body, filed under the write counter of the tables it read
(`meshd.store.versions`); a request serves it as is while the counter stands and, for the
dashboard, while no agent has crossed the heartbeat timeout since (the one change that comes
from the clock, not from a write). Concurrent requests for a stale snapshot share one rebuild.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiohttp import web

from meshd.api.http import JSON_TYPE

# A time condition besides the tables: True while the snapshot is still what a fresh build
# would give.
StillValid = Callable[[], bool]
Build = Callable[[], Awaitable[tuple[bytes, StillValid | None]]]


@dataclass(slots=True)
class Snapshot:
    version: int
    body: bytes
    still_valid: StillValid | None

    def fresh(self, version: int) -> bool:
        return self.version == version and (self.still_valid is None or self.still_valid())


class Snapshots:
    """Snapshots of one kind of response, one per request shape (paging), at most `size`."""

    def __init__(self, tables: tuple[str, ...], size: int = 16) -> None:
        self.tables = tables
        self.size = size
        self.builds = 0  # how many times a body was built (tests and the profile read it)
        self._entries: dict[Hashable, Snapshot] = {}
        self._building: dict[tuple[Hashable, int], asyncio.Future[bytes]] = {}

    async def body(self, versions, key: Hashable, build: Build) -> bytes:
        """The snapshot for `key`, rebuilt with `build` when a write (or the clock) made it
        stale. The rebuild runs as its own task, so a client that goes away does not cancel
        it for the others waiting on it."""
        version = versions.of(self.tables)
        entry = self._entries.get(key)
        if entry is not None and entry.fresh(version):
            return entry.body
        flight = self._building.get((key, version))
        if flight is None:
            flight = asyncio.ensure_future(self._build(key, version, build))
            self._building[(key, version)] = flight
            flight.add_done_callback(lambda _: self._building.pop((key, version), None))
        return await asyncio.shield(flight)

    async def _build(self, key: Hashable, version: int, build: Build) -> bytes:
        body, still_valid = await build()
        self.builds += 1
        self._entries.pop(key, None)
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = Snapshot(version, body, still_valid)
        return body


@dataclass(slots=True)
class ApiSnapshots:
    dashboard: Snapshots
    agents: Snapshots


def make_snapshots() -> ApiSnapshots:
    # The dashboard reads agents, their health and the open catastrophes; the agent list
    # reads agents only.
    return ApiSnapshots(
        dashboard=Snapshots(("agents", "agent_health_status", "catastrophe_events")),
        agents=Snapshots(("agents",)),
    )


SNAPSHOTS: web.AppKey[ApiSnapshots] = web.AppKey("snapshots")


def encoded_response(body: bytes) -> web.Response:
    """The same response `json_response` gives, from an already encoded body."""
    return web.Response(body=body, content_type=JSON_TYPE, charset="utf-8")
