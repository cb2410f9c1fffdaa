"""A catastrophe event as meshd records it, and the `catastrophe_alert` agents get for it: each
built here once, for the supervisor (crashes, disk, unclean stops), the protocol engine (a
run's event), the worker (a failed baseline backup) and the records the worker applies.

(`POST /api/catastrophe` answers with its own alert: the Node contract has it echo the request's
fields as sent, which is a different object from a recorded event's alert.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from meshd.clock import db_time, iso_time, new_id, parse_time

Record = dict[str, Any]


def event_record(event_type: str, severity: str, title: str, description: str | None, *,
                 recovery_protocol: str | None = None,
                 affected_agents: Iterable[str] = (),
                 occurred_at: str | None = None) -> Record:
    """A new open event (`kind: event`, for the records outbox and `records.upsert_event`)."""
    return {"kind": "event", "id": new_id(), "event_type": event_type, "severity": severity,
            "title": title, "description": description,
            "affected_agents": list(affected_agents), "recovery_protocol": recovery_protocol,
            "status": "active", "occurred_at": occurred_at or db_time(), "resolved_at": None}


def resolved(record: Record, notes: str) -> Record:
    """The same event, resolved now (a new dict: queued records are copies)."""
    return {**record, "status": "resolved", "resolved_at": db_time(),
            "resolution_notes": notes}


def alert(event: Mapping[str, Any], run: Mapping[str, Any] | None = None,
          **extra: Any) -> Record:
    """The `catastrophe_alert` of an event (a record or a `catastrophe_events` row, where
    `affected_agents` is JSON text); with the run that drives it when there is one. `extra`
    adds fields to the `catastrophe` object (a suspect update, a title of the moment)."""
    occurred = parse_time(event["occurred_at"]) if event.get("occurred_at") else None
    affected = event.get("affected_agents")
    if isinstance(affected, str | bytes):
        affected = orjson.loads(affected) if affected else []
    catastrophe = {
        "id": event["id"], "eventType": event["event_type"], "severity": event["severity"],
        "title": event["title"], "description": event.get("description"),
        "recoveryProtocol": event.get("recovery_protocol"),
        "occurredAt": iso_time(occurred) if occurred else None,
        "status": event["status"], "resolvedAt": event.get("resolved_at"),
        "affectedAgents": affected or [],
        **extra,
    }
    payload: Record = {"type": "catastrophe_alert", "catastrophe": catastrophe}
    if run is not None:
        payload["run"] = {key: run.get(key) for key in ("id", "protocol", "state", "outcome",
                                                          "reason")}
    return payload
