"""Collective memory queries: one versioned row per (group, key), and its change history.

Every insert, update and delete appends a `memory_history` row in the same transaction. Rows
written by the Node server have no history; their current state is recorded before meshd
first changes them, so a key's history never starts in the middle.
"""

from __future__ import annotations

from meshd.clock import new_id
from meshd.errors import Forbidden, NotFound
from meshd.store import groups
from meshd.store.base import Reader, Row, Tx

MEMORY_COLUMNS = (
    "id, group_id, agent_id, key, value, memory_type, version, created_at, updated_at"
)
HISTORY_COLUMNS = "version, value, memory_type, agent_id, change, changed_at"
DEFAULT_TYPE = "shared"
READONLY = "readonly"


def _check_member(db: Reader, group_id: str, agent_id: str) -> list[str]:
    """The group's members, when `agent_id` is one of them."""
    if not groups.exists(db, group_id):
        raise NotFound("Group not found")
    members = groups.member_ids(db, group_id)
    if agent_id not in members:
        raise Forbidden("Agent is not a member of this group")
    return members


def _check_writable(row: Row, agent_id: str) -> None:
    if row["memory_type"] == READONLY and row["agent_id"] != agent_id:
        raise Forbidden("Memory key is read-only")


def _record(tx: Tx, row: Row, change: str, changed_at: str) -> None:
    tx.execute(
        "INSERT INTO memory_history (id, memory_id, group_id, key, version, value, memory_type,"
        " agent_id, change, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id(), row["id"], row["group_id"], row["key"], row["version"], row["value"],
         row["memory_type"], row["agent_id"], change, changed_at),
    )


def _record_baseline(tx: Tx, row: Row) -> None:
    """Record the current state of a row that has no history yet (written by Node)."""
    has_history = tx.one(
        "SELECT 1 AS x FROM memory_history WHERE memory_id = ? LIMIT 1", (row["id"],))
    if has_history is None:
        _record(tx, row, "created" if row["version"] == 1 else "updated", row["updated_at"])


def upsert(
    tx: Tx, group_id: str, agent_id: str, key: str, value: str, memory_type: str | None,
    now: str,
) -> tuple[str, int, list[str]]:
    """Create the key at version 1 or bump its version; (memory id, version, members).

    Check and write share one transaction on the single writer, so concurrent upserts of one
    key serialize into consecutive versions of one row (RB-06). An absent `memory_type` (None)
    keeps the stored type on update (the Node server reset it to "shared", RB-12)."""
    members = _check_member(tx, group_id, agent_id)
    row = get(tx, group_id, key)
    if row is None:
        row = {"id": new_id(), "group_id": group_id, "agent_id": agent_id, "key": key,
               "value": value, "memory_type": memory_type or DEFAULT_TYPE, "version": 1,
               "created_at": now, "updated_at": now}
        tx.execute(
            f"INSERT INTO collective_memory ({MEMORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tuple(row.values()),
        )
        _record(tx, row, "created", now)
        return row["id"], 1, members
    _check_writable(row, agent_id)
    _record_baseline(tx, row)
    row.update(agent_id=agent_id, value=value, version=row["version"] + 1, updated_at=now,
               memory_type=memory_type or row["memory_type"])
    tx.execute(
        "UPDATE collective_memory SET value = ?, agent_id = ?, memory_type = ?, version = ?,"
        " updated_at = ? WHERE id = ?",
        (value, agent_id, row["memory_type"], row["version"], now, row["id"]),
    )
    _record(tx, row, "updated", now)
    return row["id"], row["version"], members


def delete(tx: Tx, group_id: str, key: str, agent_id: str, now: str) -> list[str]:
    """Delete a key; the group's members. Checks run in the contract's order."""
    members = _check_member(tx, group_id, agent_id)
    row = get(tx, group_id, key)
    if row is None:
        raise NotFound("Memory key not found")
    _check_writable(row, agent_id)
    _record_baseline(tx, row)
    tx.execute("DELETE FROM collective_memory WHERE id = ?", (row["id"],))
    _record(tx, {**row, "agent_id": agent_id}, "deleted", now)
    return members


def list_for_group(
    db: Reader, group_id: str, keys: list[str] | None, memory_type: str | None,
    limit: int = -1, offset: int = 0,
) -> list[Row]:
    sql = f"SELECT {MEMORY_COLUMNS} FROM collective_memory WHERE group_id = ?"
    params: list = [group_id]
    if keys:
        sql += f" AND key IN ({', '.join('?' for _ in keys)})"
        params += keys
    if memory_type:
        sql += " AND memory_type = ?"
        params.append(memory_type)
    sql += " ORDER BY updated_at DESC, rowid LIMIT ? OFFSET ?"
    return db.query(sql, (*params, limit, offset))


def get(db: Reader, group_id: str, key: str) -> Row | None:
    return db.one(
        f"SELECT {MEMORY_COLUMNS} FROM collective_memory WHERE group_id = ? AND key = ?",
        (group_id, key),
    )


def history(db: Reader, group_id: str, key: str) -> tuple[Row, list[Row]] | None:
    """The current row and its changes by ascending version; None when the key is absent.

    A row the Node server wrote and meshd never changed has no history rows: its one
    version is built from the row itself."""
    row = get(db, group_id, key)
    if row is None:
        return None
    changes = db.query(
        f"SELECT {HISTORY_COLUMNS} FROM memory_history WHERE memory_id = ?"
        " ORDER BY version, rowid",
        (row["id"],),
    )
    if not changes:
        changes = [{"version": row["version"], "value": row["value"],
                    "memory_type": row["memory_type"], "agent_id": row["agent_id"],
                    "change": "created" if row["version"] == 1 else "updated",
                    "changed_at": row["updated_at"]}]
    return row, changes
