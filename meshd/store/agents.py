"""Agent registry queries: identity persistence by name, listing, heartbeats."""

from __future__ import annotations

from typing import Any

from meshd.clock import new_id
from meshd.store.base import Reader, Row, Tx, small_read

AGENT_COLUMNS = "id, name, endpoint, capabilities, last_seen, created_at"


def register(
    tx: Tx, name: str, endpoint: Any, capabilities: str | None, now: str
) -> tuple[str, bool]:
    """Insert a new agent or refresh the one with this name; (agent id, existed).

    The lookup and the write share one transaction, so two concurrent first registrations of
    a name cannot both insert (RB-06). Absent `capabilities` (None) keeps the stored ones."""
    row = tx.one("SELECT id FROM agents WHERE name = ?", (name,))
    if row:
        tx.execute(
            "UPDATE agents SET endpoint = COALESCE(?, endpoint),"
            " capabilities = COALESCE(?, capabilities), last_seen = ? WHERE id = ?",
            (endpoint, capabilities, now, row["id"]),
        )
        return row["id"], True
    agent_id = new_id()
    tx.execute(
        "INSERT INTO agents (id, name, endpoint, capabilities, last_seen, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (agent_id, name, endpoint, capabilities if capabilities is not None else "[]", now, now),
    )
    return agent_id, False


def list_all(db: Reader, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY last_seen DESC, rowid LIMIT ? OFFSET ?",
        (limit, offset),
    )


@small_read
def get(db: Reader, agent_id: str) -> Row | None:
    return db.one(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?", (agent_id,))


@small_read
def exists(db: Reader, agent_id: str) -> bool:
    return db.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is not None


def touch(tx: Tx, agent_id: str, now: str, version: str | None = None) -> bool:
    """A heartbeat: refresh last_seen and heartbeat_at (the evidence partition detection
    reads) and the version it reported, if any; False when no such agent."""
    return tx.execute("UPDATE agents SET last_seen = ?, heartbeat_at = ?,"
                      " agent_version = COALESCE(?, agent_version) WHERE id = ?",
                      (now, now, version, agent_id)) > 0
