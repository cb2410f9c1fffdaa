"""Catastrophe events: report, look up, list, and move through active -> recovering -> resolved.

The routes and (later) the protocol engine share these functions, so an event row means the
same thing whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from meshd.clock import new_id
from meshd.errors import Conflict, NotFound
from meshd.store.base import Reader, Row, Tx

EVENT_TYPES = ("server_down", "db_corruption", "network_partition", "api_crash",
               "breaking_update")
SEVERITIES = ("critical", "major", "minor")
ACTIVE, RECOVERING, RESOLVED = "active", "recovering", "resolved"
STATUSES = (ACTIVE, RECOVERING, RESOLVED)
OPEN = f"status <> '{RESOLVED}'"

EVENT_COLUMNS = (
    "id, event_type, severity, title, description, affected_agents, recovery_protocol,"
    " status, occurred_at, resolved_at, resolution_notes"
)


def create_event(
    tx: Tx,
    *,
    event_type: str,
    severity: str,
    title: str,
    now: str,
    description: str | None = None,
    affected_agents: Sequence[str] = (),
    recovery_protocol: str | None = None,
) -> str:
    """Insert an `active` event occurring at `now`; its id."""
    event_id = new_id()
    tx.execute(
        "INSERT INTO catastrophe_events (id, event_type, severity, title, description,"
        " affected_agents, recovery_protocol, status, occurred_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event_id, event_type, severity, title, description,
         orjson.dumps(list(affected_agents)).decode(), recovery_protocol, ACTIVE, now),
    )
    return event_id


def get_event(db: Reader, event_id: str) -> Row | None:
    return db.one(f"SELECT {EVENT_COLUMNS} FROM catastrophe_events WHERE id = ?", (event_id,))


def list_events(
    db: Reader,
    status: str | None = None,
    severity: str | None = None,
    limit: int = -1,
    offset: int = 0,
) -> list[Row]:
    """Newest first; `status` and `severity` both apply when both are given (RB-14)."""
    where, params = [], []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if severity is not None:
        where.append("severity = ?")
        params.append(severity)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return db.query(
        f"SELECT {EVENT_COLUMNS} FROM catastrophe_events{clause}"
        " ORDER BY occurred_at DESC, rowid LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )


def runs_for_event(db: Reader, event_id: str) -> list[Row]:
    """The protocol runs (dry runs left out) that work on an event, oldest first, so an
    agent can follow its recovery; the step logs stay operator data."""
    return db.query(
        "SELECT id, protocol, state, outcome, reason, started_at, updated_at"
        " FROM protocol_runs WHERE event_id = ? AND dry_run = 0 ORDER BY started_at, id",
        (event_id,),
    )


def set_status(
    tx: Tx, event_id: str, status: str, now: str, resolution_notes: str | None = None
) -> Row:
    """Move an event to `status` (`resolved` also sets resolved_at and the notes); the row as
    it was before. A resolved event is final: changing it raises Conflict. Setting the status
    an event already has changes nothing, so a recovery step can run twice."""
    if status not in STATUSES:
        raise ValueError(f"unknown catastrophe status {status!r}")
    row = get_event(tx, event_id)
    if row is None:
        raise NotFound("Catastrophe event not found")
    if row["status"] == RESOLVED:
        raise Conflict("Catastrophe event already resolved")
    if status == RESOLVED:
        tx.execute(
            "UPDATE catastrophe_events SET status = ?, resolved_at = ?, resolution_notes = ?"
            " WHERE id = ?",
            (status, now, resolution_notes, event_id),
        )
    elif status != row["status"]:
        tx.execute("UPDATE catastrophe_events SET status = ? WHERE id = ?", (status, event_id))
    return row


def open_summary(db: Reader) -> tuple[int, Row | None]:
    """(unresolved critical events, the newest unresolved event or None) for the dashboard."""
    # `status <> 'resolved'` as a literal: only then can SQLite use the partial index of
    # open events (idx_catastrophe_events_open), whose WHERE clause says exactly that.
    critical = db.scalar(
        f"SELECT COUNT(*) FROM catastrophe_events WHERE {OPEN} AND severity = 'critical'")
    newest = db.one(
        f"SELECT {EVENT_COLUMNS} FROM catastrophe_events WHERE {OPEN}"
        " ORDER BY occurred_at DESC, rowid DESC LIMIT 1")
    return critical, newest
