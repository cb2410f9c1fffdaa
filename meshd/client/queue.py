"""The offline queue: messages the server has not confirmed yet, replayed oldest first and
removed one by one after a 2xx. Also remembers, per recipient, the last message sent, which
each new message names as its predecessor (see `Outgoing.prev`)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

from meshd.client.records import Outgoing
from meshd.client.state import StateDB

_COLUMNS = "seq, client_id, from_agent, to_agent, content, message_type, created_at, prev"


class Outbox:
    def __init__(self, db: StateDB) -> None:
        self._db = db

    async def push(self, message: Outgoing) -> Outgoing:
        """Queue a message and make it its recipient's last sent one, in one transaction;
        the message with its queue position."""
        return await self._db.run(_push, message)

    async def first(self) -> Outgoing | None:
        """The oldest queued message, or None when the queue is empty."""
        return await self._db.run(_first)

    async def remove(self, seq: int) -> None:
        await self._db.run(_remove, seq)

    async def reject(self, message: Outgoing, status: int | None, error: str) -> None:
        """Move a message the server refused out of the queue, so it no longer blocks the
        ones behind it; it stays readable in `rejected()`."""
        await self._db.run(_reject, message, status, error)

    async def count(self) -> int:
        return await self._db.run(lambda c: c.execute("SELECT COUNT(*) FROM outbox")
                                  .fetchone()[0])

    async def rejected(self) -> list[dict]:
        return await self._db.run(
            lambda c: [dict(r) for r in c.execute("SELECT * FROM rejected ORDER BY seq")])

    async def last_sent(self, to_agent: str) -> str | None:
        """The client id of the last message sent (or queued) to `to_agent`."""
        return await self._db.run(_last_sent, to_agent)

    async def note_sent(self, to_agent: str, client_id: str) -> None:
        """Record a message the server accepted directly as its recipient's last sent one."""
        await self._db.run(_note_sent, to_agent, client_id)


def _from_row(row: sqlite3.Row) -> Outgoing:
    return Outgoing(client_id=row["client_id"], from_agent=row["from_agent"],
                    to_agent=row["to_agent"], content=row["content"],
                    message_type=row["message_type"], created_at=row["created_at"],
                    prev=row["prev"], seq=row["seq"])


def _push(conn: sqlite3.Connection, m: Outgoing) -> Outgoing:
    with conn:
        cursor = conn.execute(
            "INSERT INTO outbox (client_id, from_agent, to_agent, content, message_type,"
            " created_at, prev) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.client_id, m.from_agent, m.to_agent, m.content, m.message_type, m.created_at,
             m.prev))
        _note_sent_in(conn, m.to_agent, m.client_id)
    return replace(m, seq=cursor.lastrowid)


def _first(conn: sqlite3.Connection) -> Outgoing | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY seq LIMIT 1").fetchone()
    return _from_row(row) if row else None


def _remove(conn: sqlite3.Connection, seq: int) -> None:
    with conn:
        conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))


def _reject(conn: sqlite3.Connection, m: Outgoing, status: int | None, error: str) -> None:
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO rejected (seq, client_id, from_agent, to_agent, content,"
            " message_type, created_at, status, error, rejected_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (m.seq, m.client_id, m.from_agent, m.to_agent, m.content, m.message_type,
             m.created_at, status, error,
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        conn.execute("DELETE FROM outbox WHERE seq = ?", (m.seq,))


def _last_sent(conn: sqlite3.Connection, to_agent: str) -> str | None:
    row = conn.execute("SELECT client_id FROM last_sent WHERE to_agent = ?",
                       (to_agent,)).fetchone()
    return row["client_id"] if row else None


def _note_sent(conn: sqlite3.Connection, to_agent: str, client_id: str) -> None:
    with conn:
        _note_sent_in(conn, to_agent, client_id)


def _note_sent_in(conn: sqlite3.Connection, to_agent: str, client_id: str) -> None:
    conn.execute("INSERT INTO last_sent (to_agent, client_id) VALUES (?, ?)"
                 " ON CONFLICT (to_agent) DO UPDATE SET client_id = excluded.client_id",
                 (to_agent, client_id))
