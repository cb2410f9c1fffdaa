"""The four recovery protocols as runbook summaries: a trigger and ordered steps each.

Served by `GET /api/catastrophe/protocols` in the Node server's shape (numbered step strings);
the step texts are kept unnumbered here so a state machine can supply them later.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Runbook:
    trigger: str
    steps: tuple[str, ...]

    def summary(self) -> dict:
        return {"trigger": self.trigger,
                "steps": [f"{n}. {step}" for n, step in enumerate(self.steps, start=1)]}


# Key order is the order clients see.
PROTOCOLS: dict[str, Runbook] = {
    "server_crash_recovery": Runbook(
        "Server process dies unexpectedly",
        (
            "Detect crash via watchdog process",
            "Attempt graceful restart (preserve database)",
            "Broadcast crash to all agents",
            "Roll agents to previous stable version if needed",
            "Monitor for database corruption",
            "If DB corrupted: restore from backup",
            "Broadcast recovery status",
        ),
    ),
    "database_corruption": Runbook(
        "SQLite database errors or corruption detected",
        (
            "Detect corruption via error logs",
            "Mark catastrophe event",
            "Stop server process",
            "Restore database from last backup",
            "Verify database integrity",
            "Start server in read-only mode",
            "Test all critical endpoints",
            "Broadcast recovery complete",
        ),
    ),
    "network_partition": Runbook(
        "Agents cannot reach server",
        (
            "Agents detect offline status (heartbeat timeout)",
            "Switch to offline mode (file-based coordination)",
            "Queue messages locally",
            "Monitor for server recovery",
            "When server back: sync queued messages",
            "Mark catastrophe resolved",
        ),
    ),
    "breaking_api_update": Runbook(
        "API version change with breaking changes",
        (
            "Broadcast update announcement",
            "Mark as breaking change",
            "Require minimum version from agents",
            "Wait for acknowledgments",
            "Reject messages from incompatible agents",
            "Provide upgrade instructions",
            "Monitor adoption rate",
            "Mark update complete",
        ),
    ),
}


def runbook_summary() -> dict[str, dict]:
    """`{protocol: {trigger, steps: ["1. ...", ...]}}` for every protocol."""
    return {name: book.summary() for name, book in PROTOCOLS.items()}
