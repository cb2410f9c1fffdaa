"""Message queries: direct messages, inboxes, statuses, retries, broadcasts, timeouts."""

from __future__ import annotations

from meshd.store.base import Row, Tx

MESSAGE_COLUMNS = (
    "id, from_agent, to_agent, content, message_type, read, status, timeout_ms, created_at"
)


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
    return rows
