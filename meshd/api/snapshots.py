"""Encoded responses kept until a write could change them: the dashboard and the agent list.

Both read every agent, so building them per request costs time proportional to the fleet
(10,000 agents: tens of milliseconds of SQL, dict building and JSON encoding). A snapshot is
the encoded body, filed under the write counter of the tables it read
(`meshd.store.versions`); a request serves it as is while the counter stands and, for the
dashboard, while no agent has crossed the heartbeat timeout since (the one change that comes
from the clock, not from a write). Concurrent requests for a stale snapshot share one rebuild.

A snapshot of at least `gzip_min_size` bytes is also kept gzipped, compressed once (off the
event loop) when a client first asks for it with `Accept-Encoding: gzip`: a 10,000-agent
dashboard is 2.7 MB, 0.6 MB gzipped. Clients that do not ask get the identity body, as from
the Node server; both carry `Vary: Accept-Encoding`.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiohttp import web

from meshd.api.http import JSON_TYPE
from meshd.api.keys import SETTINGS

# A time condition besides the tables: True while the snapshot is still what a fresh build
# would give.
StillValid = Callable[[], bool]
Build = Callable[[], Awaitable[tuple[bytes, StillValid | None]]]


# zlib level 4: about a sixth of the dashboard's JSON, in a third of level 6's time (the
# compression runs once per snapshot, but snapshots change with every agent write).
GZIP_LEVEL = 4


@dataclass(slots=True)
class Snapshot:
    version: int
    body: bytes
    still_valid: StillValid | None
    gzipped: asyncio.Future[bytes] | None = None

    def fresh(self, version: int) -> bool:
        return self.version == version and (self.still_valid is None or self.still_valid())


class Snapshots:
    """Snapshots of one kind of response, one per request shape (paging), at most `size`."""

    def __init__(self, tables: tuple[str, ...], size: int = 16) -> None:
        self.tables = tables
        self.size = size
        self.builds = 0  # how many times a body was built (tests and the profile read it)
        self.compressions = 0  # how many snapshots were gzipped (tests read it)
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

    async def respond(self, request: web.Request, versions, key: Hashable,
                      build: Build) -> web.Response:
        """The snapshot as a response: gzipped when large and the client accepts gzip."""
        body = await self.body(versions, key, build)
        # The setting gzip_min_size: on loopback a client decompressing costs more than the
        # bytes it saves (docs/performance.md), so only bodies worth it over a network.
        least = request.app[SETTINGS].gzip_min_size
        if least <= 0 or len(body) < least:
            return encoded_response(body)
        if accepts_gzip(request.headers.get("Accept-Encoding")):
            response = encoded_response(await self._gzipped(key, body))
            response.headers["Content-Encoding"] = "gzip"
        else:
            response = encoded_response(body)
        response.headers["Vary"] = "Accept-Encoding"
        return response

    async def _gzipped(self, key: Hashable, body: bytes) -> bytes:
        """`body` compressed, once per snapshot; concurrent requests share the compression
        and one that goes away does not cancel it for the others."""
        entry = self._entries.get(key)
        if entry is None or entry.body is not body:  # replaced meanwhile: this one alone
            return await asyncio.to_thread(compress, body)
        if entry.gzipped is None:
            self.compressions += 1
            entry.gzipped = asyncio.ensure_future(asyncio.to_thread(compress, body))
        return await asyncio.shield(entry.gzipped)

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


def compress(body: bytes) -> bytes:
    """gzip with a fixed header (no timestamp): the same snapshot compresses to the same
    bytes."""
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110 12.5.3): `gzip` or `x-gzip`
    with a non-zero q, or `*` with a non-zero q when gzip is not named."""
    if not header:
        return False
    named: float | None = None
    wildcard: float | None = None
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = _quality(params)
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            wildcard = q
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0
