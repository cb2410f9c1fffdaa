"""The events table: every event the hub sends, in commit order, so a WebSocket client that
lost its connection (or a worker that was not running) misses nothing: it resumes after the
last id it saw. Rows are written in the write's transaction: by `Tx.emit` on SQLite (one
writer: ids are in commit order), at pre-commit time under a mesh-wide lock on PostgreSQL
(`meshd.store.pg_events`); the newest `event_log_keep` are kept."""

from __future__ import annotations

import orjson

from meshd.store.base import Reader, Tx
from meshd.store.events import Encoded

INSERT = "INSERT INTO events (type, data, audience, created_at) VALUES (?, ?, ?, ?)"


def row_values(event: Encoded, now: str) -> tuple:
    audience = orjson.dumps(sorted(event.audience)).decode() if event.audience is not None \
        else None
    return (event.type, event.data, audience, now)


def with_id(event: Encoded, event_id: int) -> Encoded:
    # Built directly: dataclasses.replace introspects the fields on every call (once per event
    # on the writer thread).
    return Encoded(event.type, event.data, event.audience, event_id)


def after(db: Reader, since: int, limit: int) -> list[Encoded]:
    """Events with an id above `since`, oldest first, at most `limit`."""
    rows = db.query("SELECT id, type, data, audience FROM events WHERE id > ? ORDER BY id"
                    " LIMIT ?", (since, limit))
    return [from_row(r) for r in rows]


def latest_id(db: Reader) -> int:
    return db.scalar("SELECT MAX(id) FROM events") or 0


def prune(tx: Tx, keep: int) -> int:
    """Delete all but the newest `keep` events; how many went."""
    newest = tx.scalar("SELECT MAX(id) FROM events") or 0
    if newest <= keep:
        return 0
    return tx.execute("DELETE FROM events WHERE id <= ?", (newest - keep,))


def from_row(row: dict) -> Encoded:
    """An event as its row holds it (id, type, data, audience as JSON text or NULL)."""
    return Encoded(row["type"], row["data"],
                   frozenset(orjson.loads(row["audience"])) if row["audience"] else None,
                   row["id"])
