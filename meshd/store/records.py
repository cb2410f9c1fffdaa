"""Records the supervisor queues for the worker to write: catastrophe events it observed
(crashes, restores) while it could not write SQL itself, applied idempotently by id."""

from __future__ import annotations

from typing import Any

import orjson

from meshd.clock import iso_time, parse_time
from meshd.errors import Invalid
from meshd.store.base import Reader, Tx

EVENT_FIELDS = ("id", "event_type", "severity", "title", "occurred_at", "status")


def counts(db: Reader) -> dict[str, int]:
    row = db.one(
        "SELECT (SELECT COUNT(*) FROM agents) AS agents,"
        " (SELECT COUNT(*) FROM catastrophe_events WHERE status != 'resolved') AS open_events"
    )
    return dict(row)


def alert(row: dict[str, Any]) -> dict[str, Any]:
    """The WebSocket `catastrophe_alert` of an event row."""
    occurred = parse_time(row["occurred_at"]) if row.get("occurred_at") else None
    affected = row.get("affected_agents")
    return {"type": "catastrophe_alert", "catastrophe": {
        "id": row["id"], "eventType": row["event_type"], "severity": row["severity"],
        "title": row["title"], "description": row.get("description"),
        "recoveryProtocol": row.get("recovery_protocol"),
        "occurredAt": iso_time(occurred) if occurred else None,
        "status": row["status"], "resolvedAt": row.get("resolved_at"),
        "affectedAgents": orjson.loads(affected) if affected else [],
    }}


def upsert_event(tx: Tx, record: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in EVENT_FIELDS if not record.get(f)]
    if missing:
        raise Invalid(f"event record lacks {', '.join(missing)}")
    affected = orjson.dumps(record.get("affected_agents") or []).decode()
    tx.execute(
        "INSERT INTO catastrophe_events (id, event_type, severity, title, description,"
        " affected_agents, recovery_protocol, status, occurred_at, resolved_at,"
        " resolution_notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET severity = excluded.severity,"
        " description = excluded.description, status = excluded.status,"
        " resolved_at = excluded.resolved_at, resolution_notes = excluded.resolution_notes",
        (record["id"], record["event_type"], record["severity"], record["title"],
         record.get("description"), affected, record.get("recovery_protocol"),
         record["status"], record["occurred_at"], record.get("resolved_at"),
         record.get("resolution_notes")),
    )
    return tx.one("SELECT * FROM catastrophe_events WHERE id = ?", (record["id"],))


def apply_all(tx: Tx, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply every record; the WebSocket alerts to publish for them."""
    alerts = []
    for item in items:
        if not isinstance(item, dict) or item.get("kind") != "event":
            raise Invalid("each record must be an object with kind 'event'")
        alerts.append(alert(upsert_event(tx, item)))
    return alerts
