"""What protocols wait for and look up, read from the database on connections of their own.

Read-only SQL is allowed in the supervisor while a worker runs (the worker is the only
writer); these functions watch agents come back, adoption of an update, and recent updates.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from meshd import semver
from meshd.clock import db_time, parse_time
from meshd.config import Settings
from meshd.store import postgres


def read_sql(settings: Settings, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    """Read-only SQL on a connection of its own."""
    if postgres.is_url(settings.database):
        return postgres.read_sql(str(settings.database), sql, params)
    conn = sqlite3.connect(f"file:{settings.database}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


async def recent_update(settings: Settings, crashed_at: str | None) -> dict[str, Any] | None:
    moment = parse_time(crashed_at) if crashed_at else None
    if moment is None:
        return None
    since = db_time(moment - timedelta(seconds=settings.crash_update_window))
    rows = await asyncio.to_thread(
        read_sql, settings, "SELECT id, version, title, created_at FROM system_updates"
        " WHERE created_at >= ? AND created_at <= ? ORDER BY created_at DESC, rowid DESC"
        " LIMIT 1", (since, db_time(moment)))
    return rows[0] if rows else None


async def wait_for_agents(settings: Settings, last_seen: dict[str, str]) -> dict[str, str]:
    """Until every listed agent has been seen after its last heartbeat before the
    partition; agent -> the time it was back."""
    returned: dict[str, str] = {}
    agents = list(last_seen)
    while len(returned) < len(agents):
        marks = ",".join("?" * len(agents))
        rows = await asyncio.to_thread(
            read_sql, settings, f"SELECT id, last_seen FROM agents WHERE id IN ({marks})",
            tuple(agents))
        for row in rows:
            if row["id"] not in returned and (row["last_seen"] or "") > last_seen[row["id"]]:
                returned[row["id"]] = row["last_seen"]
        known = {r["id"] for r in rows}
        for gone in set(agents) - known:  # an agent no longer registered cannot return
            returned.setdefault(gone, last_seen[gone])
        if len(returned) < len(agents):
            await asyncio.sleep(min(2.0, settings.offline_check_interval))
    return returned


async def partition_summary(settings: Settings, returned: dict[str, str],
                            last_seen: dict[str, str]) -> list[dict[str, Any]]:
    """Per agent: how long it was away, and how many messages with a client id (queued by
    the SDK while offline) it delivered since it went silent."""
    summary = []
    for agent_id, back_at in returned.items():
        since = last_seen.get(agent_id, back_at)
        rows = await asyncio.to_thread(
            read_sql, settings, "SELECT COUNT(*) AS n FROM messages WHERE from_agent = ?"
            " AND client_id IS NOT NULL AND created_at >= ?", (agent_id, since))
        start, end = parse_time(since), parse_time(back_at)
        away = round((end - start).total_seconds()) if start and end else None
        summary.append({"agentId": agent_id, "awaySeconds": away, "backAt": back_at,
                        "syncedMessages": rows[0]["n"] if rows else 0})
    return summary


async def wait_update_grace(settings: Settings, created_at: str | None) -> str:
    created = parse_time(created_at) if created_at else None
    if created is not None:
        remaining = (created + timedelta(seconds=settings.update_grace)
                     - datetime.now(UTC)).total_seconds()
        if remaining > 0:
            await asyncio.sleep(remaining)
    return f"grace of {settings.update_grace:g} s over; enforcing"


async def wait_for_adoption(settings: Settings, update_id: str) -> str:
    """Until every active agent has acknowledged at or above the required version."""
    while True:
        rows = await asyncio.to_thread(
            read_sql, settings, "SELECT required_version FROM system_updates WHERE id = ?",
            (update_id,))
        if not rows:
            raise RuntimeError(f"update {update_id} no longer exists")
        required = rows[0]["required_version"]
        cutoff = db_time(datetime.now(UTC)
                         - timedelta(seconds=settings.heartbeat_timeout))
        agents = await asyncio.to_thread(
            read_sql, settings, "SELECT a.id, (SELECT k.agent_version FROM"
            " update_acknowledgments k WHERE k.agent_id = a.id AND k.agent_version IS NOT"
            " NULL ORDER BY k.acknowledged_at DESC, k.rowid DESC LIMIT 1) AS version"
            " FROM agents a WHERE a.last_seen >= ?", (cutoff,))
        behind = [a["id"] for a in agents
                  if not a["version"] or semver.compare(a["version"], required) < 0]
        if not behind:
            return f"{len(agents)} active agents at or above {required}"
        await asyncio.sleep(min(2.0, settings.offline_check_interval))
