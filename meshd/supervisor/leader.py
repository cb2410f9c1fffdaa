"""Leadership: which node's supervisor runs the duties that must run once per mesh.

Several meshd nodes may serve one mesh on one PostgreSQL database. Some duties must then run
on one node only: offline and partition detection and the message-timeout / event-prune sweep
(the worker's jobs), the mesh-wide protocols (network partition, breaking update), scheduled
backups and checks. The node whose supervisor holds a PostgreSQL session advisory lock on a
dedicated connection leads (the SQL is `meshd/store/pg_nodes.py`); on SQLite there is one node
and it always leads.

Why a lease on top of the lock: the lock says who holds it now, in PostgreSQL; a node acting
on it learns of a loss only at its next ping. So a leader counts as leading only for LEASE
seconds after the start of its last successful ping, and a newly elected node waits
TAKEOVER_WAIT (longer than LEASE) before taking up the duties: by then the old leader's lease,
and its worker's (the worker receives the same deadline on CLOCK_MONOTONIC), have run out,
however its lock was lost. The lock connection sets `idle_session_timeout` above LEASE, so a
leader that is cut off or frozen has stopped before the server frees its lock.

States and moves (TRANSITIONS): CONNECTING -> FOLLOWER (connected, another node holds the
lock) or ELECTED (took it); ELECTED -> LEADER after TAKEOVER_WAIT; any connected state ->
CONNECTING when the lock connection fails (duties stop at once; a new connection is tried
after TICK); any -> STOPPED at shutdown (the lock is released, the row marked stopped).

Each tick, connected, the mesh-wide runs are reconciled with the database first (`on_runs`,
`meshd/supervisor/takeover.py`: a leader adopts the runs of a node that lost the lead, any node
drops the local runs another one adopted), then the leader takes the open hand-overs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from meshd import __version__
from meshd import log as logging
from meshd.config import Settings
from meshd.store import pg_nodes, pg_runs, postgres

log = logging.get("meshd.leader")

TICK = 1.0  # followers try the lock, leaders ping, this often
QUERY_TIMEOUT = 1.5  # a lock-connection query slower than this counts as a failed connection
LEASE = 4.0  # a leader leads this long after the start of its last successful ping
TAKEOVER_WAIT = LEASE + 0.5  # an elected node waits out the previous leader's lease
IDLE_SESSION_TIMEOUT_MS = 6000  # the server ends a silent lock session (> LEASE)
TOUCH_EVERY = 2.0  # each node's last_seen
PRUNE_EVERY = 300.0


class Role(StrEnum):
    SINGLE = "single"  # SQLite: the only node, always leads
    CONNECTING = "connecting"  # no lock connection (yet, or again after a failure)
    FOLLOWER = "follower"  # connected; another node holds the lock
    ELECTED = "elected"  # holds the lock, waiting out the previous leader's lease
    LEADER = "leader"  # holds the lock and runs the duties
    STOPPED = "stopped"


TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.SINGLE: frozenset({Role.STOPPED}),
    Role.CONNECTING: frozenset({Role.FOLLOWER, Role.ELECTED, Role.STOPPED}),
    Role.FOLLOWER: frozenset({Role.ELECTED, Role.CONNECTING, Role.STOPPED}),
    Role.ELECTED: frozenset({Role.LEADER, Role.CONNECTING, Role.STOPPED}),
    Role.LEADER: frozenset({Role.CONNECTING, Role.STOPPED}),
    Role.STOPPED: frozenset(),
}


def node_id(data_dir: Path) -> str:
    """This node's id, stable per data dir (kept in `data/node-id`)."""
    path = data_dir / "node-id"
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    made = f"{socket.gethostname().split('.')[0][:24]}-{uuid.uuid4().hex[:8]}"
    path.write_text(made + "\n")
    return made


def advertised_address(settings: Settings, port: int) -> str:
    """`node_address`, else http://HOST:PORT (the host name when listening on every address)."""
    if settings.node_address:
        return settings.node_address
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Leadership:
    """The election loop of one supervisor and what it knows: its role, the lease, the nodes.
    `on_change(leads)` is called when the role changes `leads`. A lease that lapsed while the
    loop stalled (shorter than the server's idle timeout, so the lock was still ours) is
    renewed by the next successful ping; a longer stall ends the session and the ping fails."""

    def __init__(self, url: str | None, node: pg_nodes.NodeInfo,
                 on_change: Callable[[bool], None] = lambda leads: None,
                 on_handover: Callable[[dict[str, Any]], None] = lambda start: None) -> None:
        self.url = url
        self.node = node
        self.on_change = on_change
        self.on_handover = on_handover
        # Reconciles the mesh-wide runs with the database, given the lock connection and
        # whether this node leads (set by the supervisor; its queries fail the connection).
        self.on_runs: Callable[[Any, bool], Awaitable[None]] | None = None
        self.term = ""  # a new one at each election: hand-overs taken in it are not retaken
        self.role = Role.SINGLE if url is None else Role.CONNECTING
        self.role_since = time.monotonic()
        self.valid_until = 0.0  # CLOCK_MONOTONIC: the lease's end
        self.nodes: list[dict[str, Any]] = []
        # The running mesh-wide runs and the node driving each, read with the nodes.
        self.mesh_runs: list[dict[str, Any]] = []
        self.nodes_at: float | None = None
        self.last_error: str | None = None
        self.elections = 0
        self._conn = None
        self._elected_at = 0.0
        self._touched = 0.0
        self._pruned = 0.0
        self._stop = asyncio.Event()
        self._closing: set[asyncio.Task] = set()  # connections being closed, kept till done

    # -- what others ask -----------------------------------------------------------------

    @property
    def leads(self) -> bool:
        if self.role == Role.SINGLE:
            return True
        return self.role == Role.LEADER and time.monotonic() < self.valid_until

    def lease(self) -> dict[str, Any]:
        """What the worker is told: whether it leads and until when (CLOCK_MONOTONIC, shared
        by every process of the host)."""
        leads = self.leads
        return {"leader": leads, "until_monotonic": self.valid_until if leads else None,
                "node_id": self.node.node_id}

    def leader_node(self) -> dict[str, Any] | None:
        return next((n for n in self.nodes if n["leader"]), None)

    def not_leader(self, what: str) -> str:
        """Why `what` is refused here, naming the leader when one is known."""
        leader = self.leader_node()
        where = (f"the leader is node {leader['node_id']} at {leader['address']}"
                 if leader else "no node leads right now; retry in a few seconds")
        return f"this node ({self.node.node_id}) is not the leader: {what} runs on the leader; {where}"

    async def hand_over(self, protocol: str, reason: str, context: dict[str, Any]) -> int:
        """Queue a mesh-wide protocol start for the leader (it takes it within a tick of
        leading); raises when the lock connection is down."""
        if self._conn is None:
            raise ConnectionError("no connection to the database to hand the start over")
        handed = await self._q(pg_nodes.hand_over(self._conn, self.node.node_id, protocol,
                                                  reason, context))
        log.info("leader.handed_over", id=handed, protocol=protocol, reason=reason)
        return handed

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"node_id": self.node.node_id, "address": self.node.address,
                "role": str(self.role), "leads": self.leads,
                "role_for_s": round(now - self.role_since, 3),
                "lease_left_s": (round(max(0.0, self.valid_until - now), 3)
                                 if self.role in (Role.ELECTED, Role.LEADER) else None),
                "elections": self.elections, "last_error": self.last_error,
                "nodes_age_s": round(now - self.nodes_at, 3) if self.nodes_at else None}

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        if self.role == Role.SINGLE:
            return
        while not self._stop.is_set():
            await self.tick()
            pause = TICK
            if self.role == Role.ELECTED:  # take the duties up as soon as the wait is over
                pause = max(0.0, min(TICK, self._elected_at + TAKEOVER_WAIT - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    async def tick(self) -> None:
        try:
            await self._tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg, OS and timeout errors alike
            first_line = (str(exc).strip().splitlines() or [""])[0]
            self._lost(f"{type(exc).__name__}: {first_line}")

    async def _q(self, coro):
        return await asyncio.wait_for(coro, QUERY_TIMEOUT)

    async def _tick(self) -> None:
        if self.role == Role.STOPPED:
            return
        now = time.monotonic()
        if self._conn is None:
            self._conn = await asyncio.wait_for(
                pg_nodes.connect(self.url, self.node.node_id, IDLE_SESSION_TIMEOUT_MS),
                pg_nodes.CONNECT_TIMEOUT + 1)
            await self._q(pg_nodes.register(self._conn, self.node))
            self._touched = now
            self.last_error = None
            log.info("leader.connected", node_id=self.node.node_id,
                     database=postgres.redact(self.url))
        started = time.monotonic()
        if self.role in (Role.CONNECTING, Role.FOLLOWER):
            if await self._q(pg_nodes.try_lock(self._conn)):
                self.valid_until = started + LEASE
                self._elected_at = started
                self.elections += 1
                self.term = uuid.uuid4().hex
                self._move(Role.ELECTED, f"took the lock; duties start in {TAKEOVER_WAIT:g} s")
            elif self.role == Role.CONNECTING:
                self._move(Role.FOLLOWER, "another node holds the lock")
        if now - self._touched >= TOUCH_EVERY or self.role in (Role.ELECTED, Role.LEADER):
            started = time.monotonic()
            await self._q(pg_nodes.touch(self._conn, self.node.node_id))  # also the ping
            self._touched = started
            if self.role in (Role.ELECTED, Role.LEADER):
                self.valid_until = started + LEASE
        if self.role == Role.ELECTED and time.monotonic() - self._elected_at >= TAKEOVER_WAIT:
            self._move(Role.LEADER, "the previous leader's lease ran out")
        self.nodes = await self._q(pg_nodes.list_nodes(self._conn))
        self.mesh_runs = await self._q(pg_runs.running(self._conn))
        self.nodes_at = time.monotonic()
        if self.on_runs is not None:  # adopted runs first: a hand-over then joins its run
            await self._q(self.on_runs(self._conn, self.leads))
        if self.leads:
            for start in await self._q(pg_nodes.take_handovers(self._conn, self.node.node_id,
                                                               self.term)):
                if start["taken_before"] is None:
                    log.info("leader.handover_taken", id=start["id"], protocol=start["protocol"],
                             from_node=start["from_node"], run_id=start["run_id"])
                else:  # its taker lost the lead (or died) before the run's row was written
                    log.warning("leader.handover_retaken", id=start["id"],
                                protocol=start["protocol"], from_node=start["from_node"],
                                taken_before=start["taken_before"], run_id=start["run_id"])
                try:
                    self.on_handover(start)
                except Exception as exc:  # noqa: BLE001 - one bad start never costs the lead
                    log.error("leader.handover_failed", id=start["id"], error=str(exc))
        if self.role == Role.LEADER and now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            pruned = await self._q(pg_nodes.prune(self._conn))
            if pruned:
                log.info("leader.nodes_pruned", count=pruned)

    def _move(self, to: Role, reason: str) -> None:
        if to not in TRANSITIONS[self.role]:
            raise RuntimeError(f"leadership cannot move from {self.role} to {to}")
        leading = self.leads
        before, self.role, self.role_since = self.role, to, time.monotonic()
        log_at = log.warning if to == Role.CONNECTING and before != Role.FOLLOWER else log.info
        log_at("leader.role", node_id=self.node.node_id, from_role=str(before),
               to_role=str(to), reason=reason)
        if leading != self.leads:
            self.on_change(self.leads)

    def _lost(self, error: str) -> None:
        """The lock connection failed: whatever we held is not ours any more. Stop leading at
        once (before anyone else can be elected), drop the connection, retry next tick."""
        if self.role == Role.STOPPED:
            return  # stop() took the connection while a tick was using it
        self.last_error = error
        conn, self._conn = self._conn, None
        if conn is not None:
            task = asyncio.get_running_loop().create_task(_close(conn))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self.role == Role.CONNECTING:
            log.info("leader.connect_failed", node_id=self.node.node_id, error=error)
            return
        if self.role in (Role.ELECTED, Role.LEADER):
            log.error("leader.lost", node_id=self.node.node_id, error=error)
        self._move(Role.CONNECTING, f"lock connection failed: {error}")  # tells on_change
        self.valid_until = 0.0

    async def stop(self) -> None:
        """Release the lock (another node is elected at its next try) and mark the row
        stopped; the role is STOPPED even when the database cannot be reached."""
        self._stop.set()
        if self.role == Role.STOPPED:
            return
        conn, self._conn = self._conn, None
        self._move(Role.STOPPED, "stopping")  # tells on_change
        self.valid_until = 0.0
        if conn is None:
            return
        try:
            await self._q(pg_nodes.unlock(conn))
            await self._q(pg_nodes.mark_stopped(conn, self.node.node_id))
        except Exception as exc:  # noqa: BLE001 - closing the session frees the lock anyway
            log.warning("leader.release_failed", error=str(exc))
        await _close(conn)


async def _close(conn) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), QUERY_TIMEOUT)


def for_settings(settings: Settings, port: int, on_change: Callable[[bool], None],
                 on_handover: Callable[[dict[str, Any]], None]) -> Leadership:
    url = str(settings.database) if postgres.is_url(settings.database) else None
    node = pg_nodes.NodeInfo(node_id(settings.data_dir), advertised_address(settings, port),
                             os.getpid(), __version__)
    return Leadership(url, node, on_change, on_handover)
