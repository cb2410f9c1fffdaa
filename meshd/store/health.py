"""Agent health: metric upserts from health posts and heartbeats, offline marking, dashboard.

An agent's effective status is `offline` once its last_seen is older than the heartbeat
timeout, else its health row's status, else `unknown` (it never reported any).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

from meshd.errors import NotFound
from meshd.store import agents as agents_store
from meshd.store import catastrophe as catastrophe_store
from meshd.store.base import Reader, Row, Tx, small_read
from meshd.store.events import Event

STATUSES = ("healthy", "degraded", "unhealthy", "offline")
DEFAULT_STATUS = "healthy"
OFFLINE = "offline"
# Request-side metric fields and the columns they are stored in.
METRIC_COLUMNS = {"uptimeSeconds": "uptime_seconds", "cpuUsage": "cpu_usage",
                  "memoryUsage": "memory_usage", "customMetrics": "custom_metrics"}
HEALTH_COLUMNS = ("agent_id, status, last_heartbeat, uptime_seconds, cpu_usage, memory_usage,"
                  " custom_metrics, last_updated")

_UPSERT = (
    "INSERT INTO agent_health_status (agent_id, status, last_heartbeat, uptime_seconds,"
    " cpu_usage, memory_usage, custom_metrics, last_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (agent_id) DO UPDATE SET status = excluded.status,"
    " last_heartbeat = excluded.last_heartbeat, uptime_seconds = excluded.uptime_seconds,"
    " cpu_usage = excluded.cpu_usage, memory_usage = excluded.memory_usage,"
    " custom_metrics = excluded.custom_metrics, last_updated = excluded.last_updated"
)


# What `record` returns as (old, new) when the status stayed what it was without being read.
KEPT = "kept"
_SETTABLE = frozenset(("status", *METRIC_COLUMNS.values()))


@lru_cache(maxsize=64)
def _refresh_sql(columns: tuple[str, ...], status_given: bool) -> str:
    """The one-statement heartbeat: an UPDATE of a row whose status it will not change,
    setting the heartbeat time and the given metric columns (and then last_updated)."""
    sets = ["last_heartbeat = ?", *(f"{c} = ?" for c in columns)]
    if columns:
        sets.append("last_updated = ?")
    unchanged = "status = ?" if status_given else "status <> 'offline'"
    return f"UPDATE agent_health_status SET {', '.join(sets)} WHERE agent_id = ? AND {unchanged}"


def _refresh(tx: Tx, agent_id: str, fields: dict[str, Any], now: str, create: bool) -> bool:
    """The common case in one statement, no read: the agent's row exists and its status stays
    (the given status is the stored one; or, with none given, a heartbeat of an agent not
    offline). True when it applied; False leaves the row untouched for the general path."""
    status = fields.get("status")
    if status is None and create:
        return False  # a health post without a status reports the stored one: it is read
    columns = tuple(c for c in fields if c != "status")
    if not _SETTABLE.issuperset(columns):
        raise ValueError(f"not a health column: {columns}")
    params: list[Any] = [now, *(fields[c] for c in columns)]
    if columns:
        params.append(now)
    params.append(agent_id)
    if status is not None:
        params.append(status)
    return tx.execute(_refresh_sql(columns, status is not None), params) > 0


@small_read
def get(db: Reader, agent_id: str) -> Row | None:
    return db.one(f"SELECT {HEALTH_COLUMNS} FROM agent_health_status WHERE agent_id = ?",
                  (agent_id,))


def record(
    tx: Tx, agent_id: str, fields: dict[str, Any], now: str, create: bool = True,
    version: str | None = None,
) -> tuple[str | None, str | None]:
    """Refresh the agent's last_seen and merge `fields` into its health row; (old status, new
    status), both None when no row was written.

    `fields` maps columns (`status`, `uptime_seconds`, `cpu_usage`, `memory_usage`,
    `custom_metrics` as JSON text) to validated values; a column left out keeps its stored
    value. Without `status`, a new row is `healthy` and an `offline` one comes back `healthy`
    (the agent is evidently alive); any other stored status is kept. With `create` False and
    no fields (a bare heartbeat) no row is created, but an existing one is still revived.

    Two statements in the common case (the touch, then `_refresh`); the status unchanged and
    not read then comes back as (KEPT, KEPT), or as the given status twice. Otherwise the row
    is read and merged, as the first report or a revival needs."""
    if not agents_store.touch(tx, agent_id, now, version):
        raise NotFound("Agent not found")
    if _refresh(tx, agent_id, fields, now, create):
        status = fields.get("status", KEPT)
        return status, status
    row = get(tx, agent_id)
    if row is None and not fields and not create:
        return None, None
    old = row["status"] if row else None
    merged = dict(row) if row else {"uptime_seconds": None, "cpu_usage": None,
                                    "memory_usage": None, "custom_metrics": "{}"}
    merged.update(fields)
    if "status" not in fields:
        merged["status"] = old if old is not None and old != OFFLINE else DEFAULT_STATUS
    changed = merged["status"] != old
    if row is not None and not fields and not create:
        # A bare heartbeat: metrics stay, only the heartbeat time (and a revived status) move.
        merged["last_updated"] = now if changed else row["last_updated"]
    else:
        merged["last_updated"] = now
    tx.execute(_UPSERT, (agent_id, merged["status"], now, merged["uptime_seconds"],
                         merged["cpu_usage"], merged["memory_usage"],
                         merged["custom_metrics"], merged["last_updated"]))
    return old, merged["status"]


def changed(agent_id: str, status: str | None, metrics: dict[str, Any]) -> Event:
    return Event("agent_health_change", {"agentId": agent_id, "status": status,
                                         "metrics": metrics})


def change_events(agent_id: str, metrics: dict[str, Any], *, always: bool):
    """The events of a `record` write, from its (old, new) status: one
    `agent_health_change` when the status changed (`always`: on every health post)."""

    def events(result: tuple[str | None, str | None]) -> list[Event]:
        old, new = result
        if not always and (new is None or new == old):
            return []
        return [changed(agent_id, new, metrics)]

    return events


def mark_offline(tx: Tx, cutoff: str, now: str) -> list[Row]:
    """Agents silent since before `cutoff` and not already `offline` (those with no health
    row included) become `offline`; those agents, `{agent_id, last_seen}`, in rowid order.
    Each is returned once: the next round finds them already offline."""
    rows = tx.query(
        "SELECT a.id AS agent_id, a.last_seen, a.heartbeat_at FROM agents a"
        " LEFT JOIN agent_health_status h ON h.agent_id = a.id"
        " WHERE (a.last_seen IS NULL OR a.last_seen < ?)"
        " AND (h.status IS NULL OR h.status <> ?) ORDER BY a.rowid",
        (cutoff, OFFLINE),
    )
    if rows:
        tx.executemany(
            "INSERT INTO agent_health_status (agent_id, status, custom_metrics, last_updated)"
            " VALUES (?, ?, '{}', ?) ON CONFLICT (agent_id) DO UPDATE SET"
            " status = excluded.status, last_updated = excluded.last_updated",
            [(r["agent_id"], OFFLINE, now) for r in rows],
        )
    for row in rows:
        tx.emit(changed(row["agent_id"], OFFLINE, {}))
    return rows


def count_online(db: Reader, cutoff: str) -> int:
    """Agents heartbeating since `cutoff`: the rest of the population a partition is a share
    of (agents only registered, never heartbeating, count on neither side)."""
    return db.scalar("SELECT COUNT(*) FROM agents WHERE heartbeat_at >= ?", (cutoff,)) or 0


_EFFECTIVE_STATUS = (
    "CASE WHEN a.last_seen IS NULL OR a.last_seen < ? THEN 'offline'"
    " ELSE COALESCE(h.status, 'unknown') END"
)


def dashboard(db: Reader, cutoff: str, limit: int = -1, offset: int = 0) -> dict[str, Any]:
    """Counts by effective status over every agent, one page of agents (newest last_seen
    first) with their health, the open catastrophes, and `next_offline`: the oldest last_seen
    still within the timeout (None when no agent is online), from which the caller knows
    when the clock alone will change the answer. At most five queries whatever the number of
    agents, in one read so the numbers agree; the whole list (no paging) is counted from its
    own rows instead of a second pass over the agents."""
    agent_list = db.query(
        f"SELECT a.id AS agent_id, a.name, a.endpoint, {_EFFECTIVE_STATUS} AS status,"
        " h.uptime_seconds, h.cpu_usage, h.memory_usage, a.last_seen, h.last_updated"
        " FROM agents a LEFT JOIN agent_health_status h ON h.agent_id = a.id"
        " ORDER BY a.last_seen DESC, a.rowid LIMIT ? OFFSET ?",
        (cutoff, limit, offset),
    )
    if limit < 0 and offset == 0:
        counts = dict(Counter(r["status"] for r in agent_list))
    else:
        counts = {r["status"]: r["n"] for r in db.query(
            f"SELECT {_EFFECTIVE_STATUS} AS status, COUNT(*) AS n FROM agents a"
            " LEFT JOIN agent_health_status h ON h.agent_id = a.id GROUP BY 1",
            (cutoff,),
        )}
    next_offline = db.scalar("SELECT MIN(last_seen) FROM agents WHERE last_seen >= ?",
                             (cutoff,))
    critical, newest = catastrophe_store.open_summary(db)
    return {"counts": counts, "agents": agent_list, "critical_events": critical,
            "last_catastrophe": newest, "next_offline": next_offline}
