"""The nodes of a mesh on PostgreSQL and the leader lock: the SQL of `meshd/supervisor/leader.py`.

Each node's supervisor keeps one dedicated connection (the "lock connection") on which it tries
a session advisory lock, `pg_try_advisory_lock(LEADER_LOCK)`. The session holding it is the
leader; PostgreSQL frees it when that session ends, however it ends: a clean unlock, the
process killed (the kernel closes the socket), or the server dropping a session that went
silent (`idle_session_timeout`, set on the lock connection: a partitioned or frozen leader's
session is ended by the server itself).

Who leads is read from the lock, never from a flag a node wrote: `pg_locks` names the backend
pid holding it, and each node records its lock connection's backend pid in its `meshd_nodes`
row. A dead leader's session is gone, so its row can never show as leading.

Times are the server's (`now()`), so ages compare across hosts whose clocks differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

# "mldr": the key of the leader lock; below 2**31, so pg_locks shows it as classid 0, objid KEY.
LEADER_LOCK = 0x6D6C6472
CONNECT_TIMEOUT = 5
# Rows unseen for this long are shown as gone; for PRUNE_AFTER they are deleted (by the leader).
GONE_AFTER = 15.0
PRUNE_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    pid: int
    version: str


async def connect(url: str, node_id: str, idle_timeout_ms: int) -> psycopg.AsyncConnection:
    """The lock connection: autocommit, named after the node (visible in pg_stat_activity),
    ended by the server when silent for `idle_timeout_ms` (PostgreSQL 14 and later)."""
    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, row_factory=dict_row,
        application_name=f"meshd leader lock {node_id}"[:63])
    # Before PostgreSQL 14 there is no such setting: a silent leader's session then lasts
    # until TCP gives up on it.
    with contextlib.suppress(psycopg.errors.UndefinedObject):
        await conn.execute(f"SET idle_session_timeout = {int(idle_timeout_ms)}")
    return conn


async def try_lock(conn: psycopg.AsyncConnection) -> bool:
    """Take the leader lock if nobody holds it (a session lock: held until released or the
    session ends). Taking it again while holding it is harmless but stacks, so only a node
    that does not hold it calls this."""
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS got",
                                    (LEADER_LOCK,))).fetchone()
    return bool(row["got"])


async def unlock(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT pg_advisory_unlock_all()")


async def register(conn: psycopg.AsyncConnection, node: NodeInfo) -> None:
    """This node's row, written at each (re)connection with the lock connection's backend pid."""
    await conn.execute(
        "INSERT INTO meshd_nodes (node_id, address, pid, version, started_at, last_seen,"
        " lock_backend_pid, stopped_at) VALUES (%s, %s, %s, %s, now(), now(),"
        " pg_backend_pid(), NULL)"
        " ON CONFLICT (node_id) DO UPDATE SET address = excluded.address,"
        " pid = excluded.pid, version = excluded.version,"
        " started_at = CASE WHEN meshd_nodes.pid = excluded.pid"
        "   AND meshd_nodes.stopped_at IS NULL THEN meshd_nodes.started_at ELSE now() END,"
        " last_seen = now(), lock_backend_pid = pg_backend_pid(), stopped_at = NULL",
        (node.node_id, node.address, node.pid, node.version))


async def touch(conn: psycopg.AsyncConnection, node_id: str) -> None:
    """The node is alive (and so is its lock connection: this doubles as its ping)."""
    await conn.execute("UPDATE meshd_nodes SET last_seen = now() WHERE node_id = %s",
                       (node_id,))


async def mark_stopped(conn: psycopg.AsyncConnection, node_id: str) -> None:
    await conn.execute("UPDATE meshd_nodes SET stopped_at = now(), last_seen = now(),"
                       " lock_backend_pid = NULL WHERE node_id = %s", (node_id,))


async def prune(conn: psycopg.AsyncConnection) -> int:
    cursor = await conn.execute(
        "DELETE FROM meshd_nodes WHERE last_seen < now() - make_interval(secs => %s)",
        (PRUNE_AFTER,))
    await conn.execute("DELETE FROM meshd_handovers WHERE closed_at < now() -"
                       " make_interval(secs => %s)", (PRUNE_AFTER,))
    return cursor.rowcount


async def hand_over(conn: psycopg.AsyncConnection, node_id: str, protocol: str, reason: str,
                    context: dict[str, Any]) -> int:
    """A mesh-wide protocol start met on a follower (a fault its worker detected), queued
    for the leader; its id."""
    cursor = await conn.execute(
        "INSERT INTO meshd_handovers (protocol, reason, context, from_node)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        (protocol, reason, orjson.dumps(context).decode(), node_id))
    return (await cursor.fetchone())["id"]


async def take_handovers(conn: psycopg.AsyncConnection, node_id: str,
                         term: str) -> list[dict[str, Any]]:
    """The starts handed over and still open, not taken in this leadership `term`, marked
    taken by this node (the leader) in the same statement: new ones, and ones a previous
    leader (this node before a restart too) took but whose run's row was never written
    (`meshd/store/pg_runs.py` closes a hand-over with that row). The first take names the
    run's id (`run_id`): whichever leader starts it, the run has that id, so a late write of
    an earlier taker's run is the same run, fenced out, never a second one.
    `taken_before` is the previous taker (None for a new start)."""
    cursor = await conn.execute(
        "WITH open AS (SELECT id, taken_by FROM meshd_handovers WHERE closed_at IS NULL"
        " AND taken_term IS DISTINCT FROM %s FOR UPDATE)"
        " UPDATE meshd_handovers h SET taken_by = %s, taken_term = %s, taken_at = now(),"
        " run_id = COALESCE(h.run_id, md5(h.id::text || clock_timestamp()::text"
        " || random()::text)) FROM open WHERE h.id = open.id"
        " RETURNING h.id, h.protocol, h.reason, h.context, h.from_node, h.run_id,"
        " open.taken_by AS taken_before",
        (term, node_id, term))
    rows = await cursor.fetchall()
    return [{**r, "context": orjson.loads(r["context"])} for r in sorted(rows,
                                                                        key=lambda r: r["id"])]


# The backend holding the leader lock in this database (none while nobody leads).
_HOLDER = ("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
           " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
           " AND classid = 0 AND objid = %s AND objsubid = 1")


async def list_nodes(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    """Every known node, oldest first: `leader` is true for the one whose lock connection holds
    the lock now (the newest row, should a reused backend pid match two), `gone` for a node
    stopped or unseen for GONE_AFTER seconds."""
    cursor = await conn.execute(
        "SELECT node_id, address, pid, version,"
        " to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS started_at,"
        " to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS last_seen,"
        " round(extract(epoch FROM now() - last_seen)::numeric, 1)::float AS seen_s_ago,"
        " stopped_at IS NOT NULL AS stopped,"
        f" lock_backend_pid IS NOT NULL AND lock_backend_pid IN ({_HOLDER}) AS holds_lock"
        " FROM meshd_nodes ORDER BY started_at, node_id", (LEADER_LOCK,))
    rows = await cursor.fetchall()
    holders = [r for r in rows if r["holds_lock"]]
    leader = max(holders, key=lambda r: r["last_seen"])["node_id"] if holders else None
    nodes = []
    for row in rows:
        gone = row["stopped"] or row["seen_s_ago"] > GONE_AFTER
        nodes.append({"node_id": row["node_id"], "address": row["address"], "pid": row["pid"],
                      "version": row["version"], "started_at": row["started_at"],
                      "last_seen": row["last_seen"], "seen_s_ago": row["seen_s_ago"],
                      "leader": row["node_id"] == leader,
                      "state": "leader" if row["node_id"] == leader
                      else ("gone" if gone else "follower")})
    return nodes
