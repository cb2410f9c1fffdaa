"""The four protocols by name, and the catalog `GET /api/catastrophe/protocols` serves,
generated from their state machines (the Node server's shape: trigger + numbered steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshd.recovery import breaking, corruption, crash, partition, unreachable
from meshd.recovery.engine import ProtocolSpec

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec for spec in (crash.SPEC, corruption.SPEC, partition.SPEC, breaking.SPEC,
                                 unreachable.SPEC)
}
# What `GET /api/catastrophe/protocols` lists: the Node server's four (the wire contract).
# Database Unreachable runs on PostgreSQL only and is listed by `meshd protocol list`.
CATALOG = ("server_crash_recovery", "database_corruption", "network_partition",
           "breaking_api_update")
# Protocols that act for the whole mesh: with several nodes, only the leader starts or
# drives them (docs/nodes.md). The others are about the node they run on: its worker crashed
# (server_crash_recovery), its connection to the database failed (database_unreachable), its
# SQLite file (database_corruption: a SQLite mesh has a single node).
MESH_WIDE = frozenset({"network_partition", "breaking_api_update"})
RUNBOOK_DIR = Path(__file__).resolve().parents[2] / "protocols"


def catalog(names: tuple[str, ...] = CATALOG) -> dict[str, Any]:
    """Key order is the order clients see; `steps` keep the numbered form old clients read."""
    result = {}
    for name in names:
        spec = PROTOCOLS[name]
        result[name] = {
            "trigger": spec.trigger,
            "steps": [f"{n}. {spec.summaries[s]}" for n, s in enumerate(spec.states, start=1)],
            "states": list(spec.states),
            "eventType": spec.event_type,
            "runbook": f"protocols/{name}.md",
        }
    return result


def dry_run(name: str) -> list[dict[str, str]]:
    """The steps a run would take, in order, without taking any."""
    spec = PROTOCOLS[name]
    return [{"state": s, "next": spec.table[s].next, "step": spec.table[s].step.__name__,
             "summary": spec.summaries[spec.table[s].next]}
            for s in spec.states if s in spec.table]
