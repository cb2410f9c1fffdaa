"""What the recovery protocols look up while they wait: recent updates, agents coming back,
messages an agent synced, adoption of an update. Plain functions of a `Reader`, run through
the supervisor's read-only storage."""

from __future__ import annotations

from typing import Any

from meshd.store.base import Reader, Row


def latest_update_between(db: Reader, since: str, until: str) -> Row | None:
    return db.one(
        "SELECT id, version, title, created_at FROM system_updates"
        " WHERE created_at >= ? AND created_at <= ? ORDER BY created_at DESC, rowid DESC"
        " LIMIT 1", (since, until))


def last_seen_of(db: Reader, agent_ids: list[str]) -> dict[str, str | None]:
    """agent id -> last_seen, for those still registered."""
    if not agent_ids:
        return {}
    marks = ",".join("?" * len(agent_ids))
    rows = db.query(f"SELECT id, last_seen FROM agents WHERE id IN ({marks})",
                    tuple(agent_ids))
    return {r["id"]: r["last_seen"] for r in rows}


def synced_messages(db: Reader, agent_id: str, since: str) -> int:
    """Messages with a client id (queued by the SDK while offline) sent since `since`."""
    return db.scalar("SELECT COUNT(*) FROM messages WHERE from_agent = ?"
                     " AND client_id IS NOT NULL AND created_at >= ?", (agent_id, since)) or 0


def required_version(db: Reader, update_id: str) -> tuple[bool, str | None]:
    """(the update exists, its required version)."""
    row = db.one("SELECT required_version FROM system_updates WHERE id = ?", (update_id,))
    return (row is not None, row["required_version"] if row else None)


def active_agent_versions(db: Reader, seen_since: str) -> list[dict[str, Any]]:
    """Agents seen since `seen_since` with the version they last acknowledged (or None)."""
    return db.query(
        "SELECT a.id, (SELECT k.agent_version FROM update_acknowledgments k"
        " WHERE k.agent_id = a.id AND k.agent_version IS NOT NULL"
        " ORDER BY k.acknowledged_at DESC, k.rowid DESC LIMIT 1) AS version"
        " FROM agents a WHERE a.last_seen >= ?", (seen_since,))
