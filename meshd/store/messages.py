"""Message queries: direct messages, inboxes, statuses, retries, broadcasts, timeouts."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.clock import new_id, parse_time
from meshd.errors import Invalid, NotFound
from meshd.store.base import Reader, Row, Tx, small_read
from meshd.store.events import Event

MESSAGE_COLUMNS = (
    "id, from_agent, to_agent, content, message_type, read, status, timeout_ms, created_at,"
    " client_id"
)
RETRYABLE = ("failed", "timeout")
# A page of at most this many messages is a small read (served on the event loop's connection);
# a larger page, or a whole inbox (no limit), goes to the reader pool.
INLINE_PAGE = 100


def _small_page(limit: int) -> bool:
    return 0 <= limit <= INLINE_PAGE


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message as a sender asked for it, fields already converted to their stored text."""

    from_agent: str
    to_agent: str
    content: str
    message_type: str | None
    timeout_ms: int | None = None
    client_id: str | None = None


def send(tx: Tx, message: Outgoing, now: str) -> tuple[Row, bool]:
    """Store a message; (its row, replayed). A message whose (from, client id) is already
    stored is not stored again: the first one's row comes back with replayed=True."""
    if message.client_id is not None:
        earlier = by_client_id(tx, message.from_agent, message.client_id)
        if earlier is not None:
            return earlier, True
    message_id = new_id()
    tx.execute(
        "INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
        " timeout_ms, client_id, created_at) VALUES (?, ?, ?, ?, ?, 0, 'pending', ?, ?, ?)",
        (message_id, message.from_agent, message.to_agent, message.content,
         message.message_type, message.timeout_ms, message.client_id, now),
    )
    return get(tx, message_id), False


@small_read
def get(db: Reader, message_id: str) -> Row | None:
    return db.one(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))


@small_read
def by_client_id(db: Reader, from_agent: str, client_id: str) -> Row | None:
    return db.one(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE from_agent = ? AND client_id = ?",
        (from_agent, client_id),
    )


@small_read(when=lambda _agent, _since, _unread, limit=-1, _offset=0: _small_page(limit))
def inbox(
    db: Reader, agent_id: str, since: str | None, unread_only: bool,
    limit: int = -1, offset: int = 0,
) -> list[Row]:
    """Messages to an agent, newest first; `since` is in DB format (strictly later)."""
    sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE to_agent = ?"
    params: list = [agent_id]
    if since is not None:
        sql += " AND created_at > ?"
        params.append(since)
    if unread_only:
        sql += " AND read = 0"
    sql += " ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?"
    return db.query(sql, (*params, limit, offset))


@small_read(when=lambda _agent, limit, _offset=0: _small_page(limit))
def failed(db: Reader, agent_id: str, limit: int, offset: int = 0) -> list[Row]:
    return db.query(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE to_agent = ?"
        " AND status IN ('failed', 'timeout') ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?",
        (agent_id, limit, offset),
    )


def mark_read(tx: Tx, message_id: str) -> None:
    if tx.execute("UPDATE messages SET read = 1 WHERE id = ?", (message_id,)) == 0:
        raise NotFound("Message not found")


def set_status(tx: Tx, message_id: str, status: str, error: str | None) -> str:
    """Set a message's status (any status may follow any other), and its error when one is
    given; the recipient's id."""
    row = tx.one("SELECT to_agent FROM messages WHERE id = ?", (message_id,))
    if row is None:
        raise NotFound("Message not found")
    tx.execute("UPDATE messages SET status = ?, error = COALESCE(?, error) WHERE id = ?",
               (status, error, message_id))
    return row["to_agent"]


def retry(tx: Tx, message_id: str, now: str) -> str:
    """Put a failed or timed-out message back to pending and unread, so polling recipients
    see it again (the Node server left it read, RB-16); the recipient's id.

    A message with a timeout gets a fresh deadline: its timeout is extended by the time
    already gone, or the sweeper would time it out again at once."""
    row = tx.one("SELECT to_agent, status, timeout_ms, created_at FROM messages WHERE id = ?",
                 (message_id,))
    if row is None:
        raise NotFound("Message not found")
    if row["status"] not in RETRYABLE:
        raise Invalid("Only failed or timeout messages can be retried")
    timeout_ms = row["timeout_ms"]
    created, moment = parse_time(row["created_at"] or ""), parse_time(now)
    if timeout_ms is not None and created and moment:
        timeout_ms += max(0, int((moment - created).total_seconds() * 1000))
    tx.execute("UPDATE messages SET status = 'pending', read = 0, timeout_ms = ? WHERE id = ?",
               (timeout_ms, message_id))
    return row["to_agent"]


def broadcast(tx: Tx, from_agent: str, content: str, now: str) -> list[str]:
    """One pending `broadcast` message to every agent but the sender, all in this one
    transaction (the Node server inserted them one by one, RB-18); the new message ids."""
    recipients = [r["id"] for r in tx.query(
        "SELECT id FROM agents WHERE id != ? ORDER BY rowid", (from_agent,))]
    ids = [new_id() for _ in recipients]
    tx.executemany(
        "INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
        " created_at) VALUES (?, ?, ?, ?, 'broadcast', 0, 'pending', ?)",
        [(message_id, from_agent, to_agent, content, now)
         for message_id, to_agent in zip(ids, recipients, strict=True)],
    )
    return ids


def time_out_expired(tx: Tx, now: str) -> list[Row]:
    """Messages still pending or processing past `created_at + timeout_ms` become `timeout`
    (the Node sweeper compared ISO text with DB text and ignored timeout_ms, RB-03/RB-04)."""
    rows = tx.query(
        "SELECT id, from_agent, to_agent, created_at FROM messages"
        " WHERE status IN ('pending', 'processing') AND timeout_ms IS NOT NULL"
        " AND julianday(created_at) + timeout_ms / 86400000.0 <= julianday(?)",
        (now,),
    )
    if rows:
        tx.executemany("UPDATE messages SET status = 'timeout' WHERE id = ?",
                       [(r["id"],) for r in rows])
    for row in rows:
        tx.emit(Event("message_timeout", {
            "messageId": row["id"], "toAgent": row["to_agent"], "fromAgent": row["from_agent"],
            "createdAt": row["created_at"]}, [row["to_agent"]]))
    return rows
