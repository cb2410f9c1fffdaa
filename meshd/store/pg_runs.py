"""Who drives each mesh-wide protocol run on PostgreSQL (`meshd_run_drivers`, schema v5), so
that a new leader continues the run of a leader that died, and the old one never writes it again.

The rules (tests/unit/test_pg_runs.py):
- a run's rows are written only by its driver. The supervisor stamps its records with a
  fence (run id, its node id, the hand-overs the run answers); the worker applies a fenced
  record only if the run has no driver row yet or that row names the same node, checked under
  the row's lock in the write's own transaction (`admits`). The first write of a run makes its
  driver row and, for a run started from a hand-over, needs that hand-over taken by the same
  node: a hand-over taken again by a newer leader fences out the older taker's run;
- a leader adopts a running run another node drives by moving `driver` to itself in one
  compare-and-set (`claim`): a record of the old driver committed before it is in the document
  claimed, one after it is refused. Only the leader claims, and only after its take-over wait,
  so the old driver had stopped driving (its lease ran out); its late records (its outbox is
  kept across restarts) no longer land;
- a hand-over stays open until the row of the run answering it is written (`closed_at`, in
  the same transaction), so a leader that took it and died first leaves it to the next one.

The worker's half (`admits`, `record`) takes a store transaction; the supervisor's half runs
on its leader-lock connection (`meshd/supervisor/takeover.py`). SQLite has one node: no fence
is ever set there and this module is not used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from meshd.errors import Invalid

if TYPE_CHECKING:  # annotations only: records.py imports this module on SQLite too
    import psycopg

    from meshd.store.base import Tx

RUNNING = "running"


def fence_of(item: dict[str, Any]) -> dict[str, Any] | None:
    """The fence of a record, checked for shape (None: the record has none)."""
    fence = item.get("fence")
    if fence is None:
        return None
    if (not isinstance(fence, dict) or not isinstance(fence.get("run_id"), str)
            or not isinstance(fence.get("driver"), str)
            or not isinstance(fence.get("handovers", []), list)
            or not all(isinstance(h, int) for h in fence.get("handovers", []))):
        raise Invalid("a record's fence needs run_id, driver and a list of hand-over ids")
    return fence


def admits(tx: Tx, fence: dict[str, Any]) -> bool:
    """Whether the fence's node may write the run now (locks the rows it read until COMMIT)."""
    row = tx.one("SELECT driver FROM meshd_run_drivers WHERE run_id = ? FOR UPDATE",
                 (fence["run_id"],))
    if row is not None:
        return row["driver"] == fence["driver"]
    for handover in fence.get("handovers", []):
        taken = tx.one("SELECT taken_by, run_id, closed_at IS NOT NULL AS closed"
                       " FROM meshd_handovers WHERE id = ? FOR UPDATE", (handover,))
        if taken is None or taken["taken_by"] != fence["driver"]:
            return False
        if taken["closed"] and taken["run_id"] != fence["run_id"]:
            return False
    return True


def record(tx: Tx, fence: dict[str, Any], document: dict[str, Any]) -> None:
    """The run's driver row with its whole document (after `admits`), and the hand-overs it
    answers closed."""
    tx.execute(
        "INSERT INTO meshd_run_drivers (run_id, protocol, driver, outcome, document, updated_at)"
        " VALUES (?, ?, ?, ?, ?, now()) ON CONFLICT (run_id) DO UPDATE"
        " SET outcome = excluded.outcome, document = excluded.document, updated_at = now()"
        " WHERE meshd_run_drivers.driver = excluded.driver",
        (fence["run_id"], str(document.get("protocol")), fence["driver"],
         str(document.get("outcome")), orjson.dumps(document).decode()))
    if fence.get("handovers"):
        tx.execute("UPDATE meshd_handovers SET closed_at = now(), run_id = ?"
                   " WHERE id = ANY(?) AND closed_at IS NULL AND taken_by = ?",
                   (fence["run_id"], list(fence["handovers"]), fence["driver"]))


# -- the supervisor's half, on its leader-lock connection ------------------------------------

async def drivers_of(conn: psycopg.AsyncConnection, run_ids: Iterable[str]) -> dict[str, str]:
    """The driver of each of these runs the database knows."""
    cursor = await conn.execute("SELECT run_id, driver FROM meshd_run_drivers"
                                " WHERE run_id = ANY(%s)", (list(run_ids),))
    return {row["run_id"]: row["driver"] for row in await cursor.fetchall()}


async def orphans(conn: psycopg.AsyncConnection, node_id: str,
                  protocols: Iterable[str]) -> list[dict[str, Any]]:
    """Running runs of these protocols driven by another node, oldest first: on the leader,
    runs nobody drives (only the leader drives them, and it is this node)."""
    cursor = await conn.execute(
        "SELECT run_id, protocol, driver FROM meshd_run_drivers WHERE outcome = %s"
        " AND protocol = ANY(%s) AND driver <> %s ORDER BY updated_at, run_id",
        (RUNNING, sorted(protocols), node_id))
    return await cursor.fetchall()


async def claim(conn: psycopg.AsyncConnection, run_id: str, node_id: str,
                from_driver: str) -> str | None:
    """Make this node the run's driver if `from_driver` still is and the run still runs: the
    run's document as of that moment, or None (another node wrote or claimed it first)."""
    cursor = await conn.execute(
        "UPDATE meshd_run_drivers SET driver = %s, adopted_from = driver, adopted_at = now(),"
        " updated_at = now() WHERE run_id = %s AND driver = %s AND outcome = %s"
        " RETURNING document", (node_id, run_id, from_driver, RUNNING))
    row = await cursor.fetchone()
    return row["document"] if row else None


async def running(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    """Every running run the database has a driver for, oldest first, with the node driving
    it and the state of its last written step: what `meshd status` shows on every node, since
    a mesh-wide run lives on the leader (or on the node that adopts it) and not on the node an
    operator asks."""
    cursor = await conn.execute(
        "SELECT run_id, protocol, driver, adopted_from, document FROM meshd_run_drivers"
        " WHERE outcome = %s ORDER BY updated_at, run_id", (RUNNING,))
    runs = []
    for row in await cursor.fetchall():
        try:
            state = orjson.loads(row["document"]).get("state")
        except (orjson.JSONDecodeError, AttributeError):
            state = None  # shown as unknown; adoption reports the unreadable document
        runs.append({"id": row["run_id"], "protocol": row["protocol"], "state": state,
                     "driver": row["driver"], "adopted_from": row["adopted_from"]})
    return runs
