"""System update queries: announcements, one acknowledgment per agent and update (an upsert,
RB-05), and adoption among active agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshd import semver
from meshd.clock import new_id
from meshd.errors import NotFound
from meshd.store.base import Reader, Row, Tx

UPDATE_COLUMNS = (
    "id, version, update_type, title, description, required_version, breaking_change,"
    " announcement, created_by, created_at, expires_at"
)
ACK_STATUSES = ("pending", "accepted", "rejected", "completed")
ADOPTED_STATUSES = ("accepted", "completed")
# Columns an acknowledgment may change; the handler names the ones the client sent.
ACK_FIELDS = ("status", "agent_version", "notes")


def create(tx: Tx, update: Mapping[str, Any]) -> str:
    """Insert an update given its column values (every UPDATE_COLUMNS but id); its id."""
    update_id = new_id()
    tx.execute(
        "INSERT INTO system_updates (id, version, update_type, title, description,"
        " required_version, breaking_change, announcement, created_by, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (update_id, update["version"], update["update_type"], update["title"],
         update["description"], update["required_version"], update["breaking_change"],
         update["announcement"], update["created_by"], update["created_at"],
         update["expires_at"]),
    )
    return update_id


def list_updates(
    db: Reader, since: str | None, active_at: str | None, limit: int = -1, offset: int = 0
) -> list[Row]:
    """Newest first; `since` and `active_at` (not expired at that time) combine (RB-14)."""
    clauses, params = [], []
    if since:
        clauses.append("created_at > ?")
        params.append(since)
    if active_at:
        clauses.append("(expires_at IS NULL OR expires_at > ?)")
        params.append(active_at)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return db.query(
        f"SELECT {UPDATE_COLUMNS} FROM system_updates {where}"
        " ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )


def get(db: Reader, update_id: str) -> Row | None:
    return db.one(f"SELECT {UPDATE_COLUMNS} FROM system_updates WHERE id = ?", (update_id,))


def acknowledge(
    tx: Tx, update_id: str, agent_id: str, changes: Mapping[str, Any], now: str
) -> str:
    """Record an agent's answer to an update; its acknowledgment id, the same on a repeat.

    `changes` holds the ACK_FIELDS the client sent: a repeat changes those and the time and
    keeps the others (the Node server's plain INSERT failed with a 500 instead, RB-05)."""
    if tx.one("SELECT 1 AS x FROM system_updates WHERE id = ?", (update_id,)) is None:
        raise NotFound("Update not found")
    if tx.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is None:
        raise NotFound("Agent not found")
    sets = {k: changes[k] for k in ACK_FIELDS if k in changes}
    row = tx.one(
        "SELECT id FROM update_acknowledgments WHERE update_id = ? AND agent_id = ?",
        (update_id, agent_id),
    )
    if row is not None:
        assignments = "".join(f", {column} = ?" for column in sets)
        tx.execute(
            f"UPDATE update_acknowledgments SET acknowledged_at = ?{assignments} WHERE id = ?",
            (now, *sets.values(), row["id"]),
        )
        return row["id"]
    ack_id = new_id()
    tx.execute(
        "INSERT INTO update_acknowledgments"
        " (id, update_id, agent_id, acknowledged_at, agent_version, status, notes)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ack_id, update_id, agent_id, now, sets.get("agent_version"),
         sets.get("status", "pending"), sets.get("notes")),
    )
    return ack_id


def acknowledgments(db: Reader, update_id: str, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        "SELECT a.id, a.update_id, a.agent_id, a.acknowledged_at, a.agent_version, a.status,"
        " a.notes, g.name AS agent_name, g.endpoint AS agent_endpoint"
        " FROM update_acknowledgments a LEFT JOIN agents g ON g.id = a.agent_id"
        " WHERE a.update_id = ? ORDER BY a.acknowledged_at DESC, a.rowid LIMIT ? OFFSET ?",
        (update_id, limit, offset),
    )


def adoption(db: Reader, update_id: str, active_since: str) -> Row | None:
    """Acknowledgment counts of an update and how many active agents (seen at or after
    `active_since`) accepted or completed it; None for an unknown update."""
    update = db.one(
        "SELECT id, version, required_version, breaking_change FROM system_updates"
        " WHERE id = ?",
        (update_id,),
    )
    if update is None:
        return None
    by_status = {
        r["status"]: r["n"]
        for r in db.query(
            "SELECT status, COUNT(*) AS n FROM update_acknowledgments WHERE update_id = ?"
            " GROUP BY status",
            (update_id,),
        )
    }
    active = db.scalar("SELECT COUNT(*) AS n FROM agents WHERE last_seen >= ?", (active_since,))
    adopted = db.scalar(
        "SELECT COUNT(*) AS n FROM update_acknowledgments a JOIN agents g ON g.id = a.agent_id"
        f" WHERE a.update_id = ? AND a.status IN ({', '.join('?' * len(ADOPTED_STATUSES))})"
        " AND g.last_seen >= ?",
        (update_id, *ADOPTED_STATUSES, active_since),
    )
    return {
        **update,
        "counts": {s: by_status.get(s, 0) for s in ACK_STATUSES},
        "acknowledged": sum(by_status.values()),
        "active": active,
        "adopted": adopted,
    }


def enforcement_state(db: Reader, enforce_before: str) -> tuple[dict | None, dict[str, str]]:
    """The breaking update in force (past its grace, not complete; the highest requirement
    wins) and every agent's last acknowledged version."""
    updates = db.query(
        "SELECT id, required_version, announcement, description FROM system_updates"
        " WHERE breaking_change = 1 AND required_version IS NOT NULL"
        " AND completed_at IS NULL AND created_at <= ?", (enforce_before,))
    best = None
    for row in updates:
        if semver.is_valid(row["required_version"]) and (
                best is None or semver.compare(row["required_version"],
                                               best["required_version"]) > 0):
            best = row
    versions: dict[str, str] = {}
    if best is not None:
        for row in db.query(
                "SELECT agent_id, agent_version FROM update_acknowledgments"
                " WHERE agent_version IS NOT NULL ORDER BY acknowledged_at, rowid"):
            versions[row["agent_id"]] = row["agent_version"]
    return best, versions
