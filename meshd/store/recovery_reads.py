"""What the recovery protocols look up while they wait: recent updates, agents coming back,
messages an agent synced, adoption of an update. Plain functions of a `Reader`, run through
the supervisor's read-only storage."""

from __future__ import annotations

from typing import Any

from meshd.store.base import Reader, Row


def latest_update_between(db: Reader, since: str, until: str) -> Row | None:
    """The newest update in the window that could have broken the server: a breaking one, or
    one of type api, schema or emergency (a `feature` or `security` update is not named)."""
    return db.one(
        "SELECT id, version, title, update_type, breaking_change, required_version,"
        " rollback_to, created_at FROM system_updates"
        " WHERE created_at >= ? AND created_at <= ?"
        " AND (breaking_change = 1 OR update_type IN ('api', 'schema', 'emergency'))"
        " ORDER BY created_at DESC, rowid DESC"
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
    """(the update exists and is still enforced, its required version)."""
    row = db.one("SELECT required_version, completed_at FROM system_updates WHERE id = ?",
                 (update_id,))
    return (row is not None and row["completed_at"] is None,
            row["required_version"] if row else None)


def latest_breaking_update(db: Reader) -> Row | None:
    """The newest breaking update that is not itself a roll-back (an operator's roll-back)."""
    return db.one(
        "SELECT id, version, title, update_type, breaking_change, required_version,"
        " rollback_to, created_at FROM system_updates WHERE breaking_change = 1"
        " AND rollback_to IS NULL ORDER BY created_at DESC, rowid DESC LIMIT 1")


def versions_before(db: Reader, created_at: str) -> list[str]:
    """Versions of the updates before `created_at` (roll-backs left out) and the versions
    agents report: where the previous stable version is looked for."""
    rows = db.query("SELECT version FROM system_updates WHERE created_at < ?"
                    " AND rollback_to IS NULL", (created_at,))
    reported = db.query("SELECT DISTINCT agent_version AS version FROM agents"
                        " WHERE agent_version IS NOT NULL")
    return [r["version"] for r in rows + reported]


def active_agent_versions(db: Reader, seen_since: str) -> list[dict[str, Any]]:
    """Agents heartbeating (HTTP, health post, WebSocket) since `seen_since`: registered and
    never heard from again is not active. With the version they last reported (heartbeat, health
    post, acknowledgment), else the one they last acknowledged (rows older than that column),
    else None."""
    return db.query(
        "SELECT a.id, COALESCE(a.agent_version, (SELECT k.agent_version"
        " FROM update_acknowledgments k WHERE k.agent_id = a.id AND k.agent_version IS NOT NULL"
        " ORDER BY k.acknowledged_at DESC, k.rowid DESC LIMIT 1)) AS version"
        " FROM agents a WHERE a.heartbeat_at >= ?", (seen_since,))
