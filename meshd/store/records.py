"""Records the supervisor queues for the worker to write: catastrophe events it observed
(crashes, restores) while it could not write SQL itself, applied idempotently by id.

A record with a `fence` (a mesh-wide run's event or run, on PostgreSQL) is applied only while
its node drives that run (`meshd/store/pg_runs.py`); one that is not is dropped, not an error:
it is the late write of a node another one took the run over from."""

from __future__ import annotations

from typing import Any

import orjson

from meshd import incidents
from meshd import log as logging
from meshd.clock import iso_time, new_id, parse_time
from meshd.errors import Invalid
from meshd.store import pg_runs
from meshd.store.base import Reader, Tx
from meshd.store.events import Event

EVENT_FIELDS = ("id", "event_type", "severity", "title", "occurred_at", "status")

log = logging.get("meshd.records")


def counts(db: Reader) -> dict[str, int]:
    row = db.one(
        "SELECT (SELECT COUNT(*) FROM agents) AS agents,"
        " (SELECT COUNT(*) FROM catastrophe_events WHERE status != 'resolved') AS open_events"
    )
    return dict(row)


def self_test(tx: Tx, now: str) -> list[str]:
    """The critical write path, run by the self-test inside a transaction that is rolled back."""
    from meshd.store import agents

    agent_id, existed = agents.register(tx, f"meshd-selftest-{new_id()}", None, "[]", now)
    if existed or not agents.touch(tx, agent_id, now):
        raise RuntimeError("self-test agent was not written")
    checks = ["register", "heartbeat"]
    row = tx.one("SELECT name FROM agents WHERE id = ?", (agent_id,))
    if row is None:
        raise RuntimeError("self-test agent cannot be read back")
    checks.append("read-back")
    tx.execute(
        "INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
        " created_at) VALUES (?, ?, ?, ?, 'direct', 0, 'pending', ?)",
        (new_id(), agent_id, agent_id, "self-test", now),
    )
    checks.append("message")
    return checks


def open_events(db: Reader) -> list[dict[str, Any]]:
    """Unresolved catastrophe events, oldest first: what a WebSocket client is told first."""
    return db.query("SELECT * FROM catastrophe_events WHERE status != 'resolved'"
                    " ORDER BY occurred_at, rowid LIMIT 100")


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


def upsert_run(tx: Tx, run: dict[str, Any]) -> None:
    """A protocol run and its whole step log (the supervisor's run file is the source)."""
    tx.execute(
        "INSERT INTO protocol_runs (id, protocol, event_id, state, outcome, reason, dry_run,"
        " started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET state = excluded.state, outcome = excluded.outcome,"
        " reason = excluded.reason, updated_at = excluded.updated_at",
        (run["id"], run["protocol"], run.get("event_id"), run["state"], run["outcome"],
         run.get("reason"), int(bool(run.get("dry_run"))), run["started_at"],
         run["updated_at"]),
    )
    tx.execute("DELETE FROM protocol_steps WHERE run_id = ?", (run["id"],))
    tx.executemany(
        "INSERT INTO protocol_steps (run_id, seq, state, next_state, outcome, detail, attempts,"
        " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(run["id"], i, st["state"], st.get("next_state"), st["outcome"], st.get("detail"),
          st.get("attempts", 1), st["started_at"], st.get("finished_at"))
         for i, st in enumerate(run.get("steps", []))],
    )


def rollback_update(tx: Tx, update: dict[str, Any]) -> None:
    """Write a roll-back (a non-breaking emergency update naming `rollback_to`) once, and
    announce it as a `system_update` with the added key `rollbackTo`."""
    inserted = tx.execute(
        "INSERT OR IGNORE INTO system_updates (id, version, update_type, title, description,"
        " required_version, breaking_change, announcement, created_by, created_at, expires_at,"
        " rollback_to) VALUES (?, ?, 'emergency', ?, ?, NULL, 0, NULL, 'meshd', ?, NULL, ?)",
        (update["id"], update["version"], update["title"], update["description"],
         update["created_at"], update["rollback_to"]))
    if inserted:
        tx.emit(Event("system_update", {"update": {
            "id": update["id"], "version": update["version"], "updateType": "emergency",
            "title": update["title"], "description": update["description"],
            "breakingChange": False, "rollbackTo": update["rollback_to"],
            "createdAt": iso_time(parse_time(update["created_at"]))}}))


def apply_all(tx: Tx, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply every record; each event among them emits its `catastrophe_alert`."""
    alerts = []
    for item in items:
        kind = item.get("kind") if isinstance(item, dict) else None
        fence = pg_runs.fence_of(item) if kind in ("event", "run") else None
        if fence is not None and not pg_runs.admits(tx, fence):
            log.warning("records.fenced", kind=kind, id=item.get("id"), run_id=fence["run_id"],
                        driver=fence["driver"], detail="another node drives this run now")
            continue
        if kind == "event":
            alert = incidents.alert(upsert_event(tx, item))
            tx.emit(Event(alert.pop("type"), alert))
            alerts.append(alert)
        elif kind == "run":
            upsert_run(tx, item["run"])
            if fence is not None:
                if not isinstance(item.get("document"), dict):
                    raise Invalid("a fenced run record needs its document")
                pg_runs.record(tx, fence, item["document"])
        elif kind == "publish":
            # A transition announced while no worker served: sent now, in queue order.
            event = item.get("event")
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise Invalid("a publish record needs an event object with a type")
            tx.emit(Event(event["type"], {k: v for k, v in event.items() if k != "type"}))
        elif kind == "rollback_update":
            rollback_update(tx, item["update"])
        elif kind == "update_complete":
            tx.execute("UPDATE system_updates SET completed_at = COALESCE(completed_at, ?)"
                       " WHERE id = ?", (item["completed_at"], item["update_id"]))
        else:
            raise Invalid("each record must be an object with kind event, run, publish or "
                          "update_complete")
    return alerts
