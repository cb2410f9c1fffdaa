"""Agent group queries: groups, memberships, and group broadcasts.

Write functions that emit a group event return the group's member ids, read inside the same
transaction, so the handler can address the event to exactly those agents.
"""

from __future__ import annotations

from typing import Any

from meshd.clock import new_id
from meshd.errors import Conflict, NotFound
from meshd.store.base import Reader, Row, Tx

GROUP_COLUMNS = "g.id, g.name, g.description, g.metadata, g.created_by, g.created_at"


def create(
    tx: Tx, name: str, description: str | None, metadata: str, created_by: str, now: str
) -> str:
    """Insert a group; names need not be unique and the creator is not made a member."""
    group_id = new_id()
    tx.execute(
        "INSERT INTO agent_groups (id, name, description, metadata, created_by, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (group_id, name, description, metadata, created_by, now),
    )
    return group_id


def list_all(db: Reader, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        f"SELECT {GROUP_COLUMNS}, (SELECT COUNT(*) FROM agent_group_members m"
        " WHERE m.group_id = g.id) AS member_count"
        " FROM agent_groups g ORDER BY g.created_at DESC, g.rowid LIMIT ? OFFSET ?",
        (limit, offset),
    )


def get(db: Reader, group_id: str) -> Row | None:
    return db.one(f"SELECT {GROUP_COLUMNS} FROM agent_groups g WHERE g.id = ?", (group_id,))


def detail(db: Reader, group_id: str) -> tuple[Row, list[Row]] | None:
    """The group and its members; None when there is no such group."""
    row = get(db, group_id)
    return None if row is None else (row, members(db, group_id))


def exists(db: Reader, group_id: str) -> bool:
    return db.one("SELECT 1 AS x FROM agent_groups WHERE id = ?", (group_id,)) is not None


def members(db: Reader, group_id: str) -> list[Row]:
    """Member rows joined to their agent, oldest membership first."""
    return db.query(
        "SELECT m.group_id, m.agent_id, m.role, m.joined_at, a.name, a.endpoint,"
        " a.capabilities, a.last_seen"
        " FROM agent_group_members m JOIN agents a ON a.id = m.agent_id"
        " WHERE m.group_id = ? ORDER BY m.joined_at, m.rowid",
        (group_id,),
    )


def member_ids(db: Reader, group_id: str) -> list[str]:
    rows = db.query(
        "SELECT agent_id FROM agent_group_members WHERE group_id = ? ORDER BY joined_at, rowid",
        (group_id,),
    )
    return [r["agent_id"] for r in rows]


def is_member(db: Reader, group_id: str, agent_id: str) -> bool:
    return db.one(
        "SELECT 1 AS x FROM agent_group_members WHERE group_id = ? AND agent_id = ?",
        (group_id, agent_id),
    ) is not None


def add_member(tx: Tx, group_id: str, agent_id: str, role: str, now: str) -> list[str]:
    """Add an agent to a group; the members afterwards. Checks run in the contract's order."""
    if not exists(tx, group_id):
        raise NotFound("Group not found")
    if tx.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is None:
        raise NotFound("Agent not found")
    if is_member(tx, group_id, agent_id):
        raise Conflict("Agent is already a member of this group")
    tx.execute(
        "INSERT INTO agent_group_members (group_id, agent_id, role, joined_at)"
        " VALUES (?, ?, ?, ?)",
        (group_id, agent_id, role, now),
    )
    return member_ids(tx, group_id)


def remove_member(tx: Tx, group_id: str, agent_id: str) -> list[str]:
    """Remove a membership; the members before removal (the removed agent included)."""
    before = member_ids(tx, group_id)
    removed = tx.execute(
        "DELETE FROM agent_group_members WHERE group_id = ? AND agent_id = ?",
        (group_id, agent_id),
    )
    if not removed:
        raise NotFound("Group member not found")
    return before


def groups_of_agent(db: Reader, agent_id: str, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        f"SELECT {GROUP_COLUMNS}, m.role FROM agent_groups g"
        " JOIN agent_group_members m ON m.group_id = g.id WHERE m.agent_id = ?"
        " ORDER BY g.created_at DESC, g.rowid LIMIT ? OFFSET ?",
        (agent_id, limit, offset),
    )


def agents_of_group(db: Reader, group_id: str, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        "SELECT a.id, a.name, a.endpoint, a.capabilities, a.last_seen, a.created_at, m.role"
        " FROM agents a JOIN agent_group_members m ON m.agent_id = a.id WHERE m.group_id = ?"
        " ORDER BY a.name, a.rowid LIMIT ? OFFSET ?",
        (group_id, limit, offset),
    )


def broadcast(
    tx: Tx, group_id: str, sender: str, content: str, message_type: Any, now: str
) -> tuple[list[str], list[str]]:
    """One `delivered` message per member other than the sender, all in this transaction
    (the Node server inserted them one by one outside any, RB-18); (message ids, members)."""
    everyone = member_ids(tx, group_id)
    recipients = [agent_id for agent_id in everyone if agent_id != sender]
    if not recipients:
        raise NotFound("No agents found in group")
    message_ids = [new_id() for _ in recipients]
    tx.executemany(
        "INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
        " created_at) VALUES (?, ?, ?, ?, ?, 0, 'delivered', ?)",
        [(mid, sender, to, content, message_type, now)
         for mid, to in zip(message_ids, recipients, strict=True)],
    )
    return message_ids, everyone
