"""Read-only snapshots for the web console and /metrics: everything one page shows, read in one
reader call so the figures agree with each other."""

from __future__ import annotations

from typing import Any

from meshd.store import health, updates
from meshd.store.base import Reader, Row

AGENTS_SHOWN = 200
MESSAGES_SHOWN = 50
SKILLS_SHOWN = 100
FILES_SHOWN = 50
RESOLVED_EVENTS_SHOWN = 5
UPDATES_SHOWN = 10


def health_counts(db: Reader, cutoff: str) -> dict[str, int]:
    """Agents by effective health state (offline when silent since `cutoff`)."""
    return health.dashboard(db, cutoff, 0, 0)["counts"]


def metric_figures(db: Reader, cutoff: str) -> dict[str, Any]:
    """What /metrics reads from the database: agents by health, pending messages, open
    catastrophe events by type."""
    return {
        "health": health_counts(db, cutoff),
        "messages_pending": db.scalar(
            "SELECT COUNT(*) AS n FROM messages WHERE status = 'pending'"),
        "open_events": {r["event_type"]: r["n"] for r in db.query(
            "SELECT event_type, COUNT(*) AS n FROM catastrophe_events"
            " WHERE status != 'resolved' GROUP BY event_type")},
    }


def _agents(db: Reader, cutoff: str) -> list[Row]:
    return db.query(
        f"SELECT a.id, a.name, a.endpoint, a.capabilities, a.last_seen,"
        f" {health._EFFECTIVE_STATUS} AS status"
        " FROM agents a LEFT JOIN agent_health_status h ON h.agent_id = a.id"
        " ORDER BY a.last_seen DESC, a.rowid LIMIT ?", (cutoff, AGENTS_SHOWN))


def _events(db: Reader) -> list[Row]:
    """Open events (all) and the few most recently resolved, each with its protocol runs and
    their steps: the timeline."""
    events = db.query(
        "SELECT * FROM catastrophe_events WHERE status != 'resolved'"
        " ORDER BY occurred_at DESC, rowid DESC")
    events += db.query(
        "SELECT * FROM catastrophe_events WHERE status = 'resolved'"
        " ORDER BY resolved_at DESC, rowid DESC LIMIT ?", (RESOLVED_EVENTS_SHOWN,))
    for event in events:
        event["runs"] = db.query(
            "SELECT * FROM protocol_runs WHERE event_id = ? ORDER BY started_at, id",
            (event["id"],))
        for run in event["runs"]:
            run["steps"] = db.query(
                "SELECT * FROM protocol_steps WHERE run_id = ? ORDER BY seq", (run["id"],))
    return events


def _pending_updates(db: Reader, active_since: str) -> list[Row]:
    rows = db.query(
        "SELECT id, version, title, required_version, breaking_change, created_at"
        " FROM system_updates WHERE completed_at IS NULL"
        " ORDER BY created_at DESC, rowid DESC LIMIT ?", (UPDATES_SHOWN,))
    for row in rows:
        row["adoption"] = updates.adoption(db, row["id"], active_since)
    return rows


def snapshot(db: Reader, cutoff: str) -> dict[str, Any]:
    """Everything the console shows from the database. `cutoff`: agents silent since then
    are offline (and not active for adoption)."""
    return {
        "agents": _agents(db, cutoff),
        "health": health_counts(db, cutoff),
        "messages": db.query(
            "SELECT id, from_agent, to_agent, substr(content, 1, 200) AS content,"
            " message_type, status, created_at FROM messages"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?", (MESSAGES_SHOWN,)),
        "messages_pending": db.scalar(
            "SELECT COUNT(*) AS n FROM messages WHERE status = 'pending'"),
        "skills": db.query(
            "SELECT s.id, s.name, s.description, s.agent_id, a.name AS agent_name"
            " FROM skills s LEFT JOIN agents a ON a.id = s.agent_id"
            " ORDER BY s.created_at DESC, s.rowid DESC LIMIT ?", (SKILLS_SHOWN,)),
        "files": db.query(
            "SELECT id, agent_id, filename, file_type, file_size, created_at FROM agent_files"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?", (FILES_SHOWN,)),
        "events": _events(db),
        "updates": _pending_updates(db, cutoff),
    }
