"""Mesh-wide runs across leaders: a new leader continues the runs of a node that lost the lead,
and a node never drives a run another one adopted (PostgreSQL; the SQL is `store/pg_runs.py`).

Called by the leadership loop every tick, on its lock connection, before hand-overs are taken:
1. the local mesh-wide runs nothing drives here (held at start, suspended when the lead was
   lost) whose database row names another driver are superseded: dropped from the engine,
   their files moved aside, with a `protocol.superseded` line;
2. on the leader (after its take-over wait, so the old driver's lease has run out), every
   running mesh-wide run another node drives is claimed (a compare-and-set on its driver) and
   adopted from the database's copy of its run file;
3. on the leader, the local runs left (its own, or ones the database has not seen yet) are
   driven again.
A database error propagates: the leadership loop counts it as a failed lock connection.
"""

from __future__ import annotations

from typing import Any

import orjson

from meshd import log as logging
from meshd.recovery.engine import Engine, Run
from meshd.recovery.protocols import MESH_WIDE
from meshd.store import pg_runs

log = logging.get("meshd.takeover")


def mesh_wide(run: Run) -> bool:
    return run.protocol in MESH_WIDE


def start_handed_over(engine: Engine, start: dict[str, Any]) -> Run:
    """Run a start handed over (`pg_nodes.take_handovers`) with the id it names, or join the
    run already under way. Either way the run lists the hand-over, and its row, once written,
    closes it (store/pg_runs.py): one run per hand-over, however often it is taken."""
    handover = start["id"]
    run = engine.start(start["protocol"], str(start["reason"] or "handed over"),
                       {**start["context"], "handovers": [handover]}, run_id=start["run_id"])
    answered = run.context.setdefault("handovers", [])
    if handover not in answered:
        answered.append(handover)
        engine.save(run)
    return run


class RunTakeover:
    def __init__(self, engine: Engine, node_id: str) -> None:
        self.engine = engine
        self.node_id = node_id

    async def tick(self, conn: Any, leads: bool) -> None:
        held = self.engine.held(mesh_wide)
        if held:
            drivers = await pg_runs.drivers_of(conn, [run.id for run in held])
            for run in held:
                driver = drivers.get(run.id)
                if driver is not None and driver != self.node_id:
                    self.engine.supersede(run.id, driver)
        if not leads:
            return
        for row in await pg_runs.orphans(conn, self.node_id, MESH_WIDE):
            await self._adopt(conn, row)
        self.engine.drive_held(mesh_wide)

    async def _adopt(self, conn: Any, row: dict[str, Any]) -> None:
        if row["run_id"] in self.engine.runs:  # a copy of our own from before: the DB's wins
            self.engine.supersede(row["run_id"], row["driver"])
        document = await pg_runs.claim(conn, row["run_id"], self.node_id, row["driver"])
        if document is None:
            return  # it ended, or its driver's last write came first: seen next tick
        try:
            run = Run.from_json(document.encode())
        except (orjson.JSONDecodeError, TypeError) as exc:
            # Claimed but unreadable: left running under this node, for an operator to abort.
            log.error("protocol.adoption_failed", run_id=row["run_id"], from_node=row["driver"],
                      error=str(exc))
            return
        self.engine.adopt(run, row["driver"], self.node_id)
