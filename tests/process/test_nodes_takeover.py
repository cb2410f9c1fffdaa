"""A new leader continues the mesh-wide run of a leader whose whole process tree was killed, and
runs a hand-over that leader had taken; the killed node, back, never drives the run again
(real nodes on one throwaway PostgreSQL cluster; docs/nodes.md "Runs that outlive their
leader"). The ownership rules themselves: tests/unit/test_pg_runs.py.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import psycopg
import pytest

from meshd import cli_render
from tests.process.harness import api, meshd_cli, poll, register_agent
from tests.process.nodes import pg_cluster  # noqa: F401 - the fixture
from tests.process.test_nodes_leader import (
    TAKEOVER_DEADLINE,
    agreed_leader,
    by_id,
    console_service_panel,
    events,
    log_time,
    nodes_with_a_leader,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

# The run waits for its agents far longer than the test: only their heartbeats end the wait,
# and they are sent after the kill, so the step that ends it runs on the new leader. The
# default heartbeat timeout keeps the partition detector quiet meanwhile (no second run).
NODE_ARGS = ["--partition-max-wait", "10m"]


def run_row(conn: psycopg.Connection, run_id: str) -> dict | None:
    row = conn.execute(
        "SELECT r.state, r.outcome, d.driver, d.adopted_from, e.status, e.description"
        " FROM protocol_runs r LEFT JOIN meshd_run_drivers d ON d.run_id = r.id"
        " LEFT JOIN catastrophe_events e ON e.id = r.event_id WHERE r.id = %s",
        (run_id,)).fetchone()
    names = ("state", "outcome", "driver", "adopted_from", "event_status", "description")
    return dict(zip(names, row, strict=True)) if row else None


def steps_of(conn: psycopg.Connection, run_id: str) -> list[tuple]:
    return conn.execute("SELECT state, outcome, detail FROM protocol_steps WHERE run_id = %s"
                        " ORDER BY seq", (run_id,)).fetchall()


def run_events(node, run_id: str, *names: str, run: int = -1) -> list[dict]:
    return [e for e in node.log_events(run) if e["event"] in names and e.get("run_id") == run_id]


async def test_a_new_leader_adopts_the_killed_leaders_run_and_the_killed_node_never_drives_it(
        meshd_proc, pg_cluster):  # noqa: F811
    url = pg_cluster.url("mesh")
    nodes, leader_id = await nodes_with_a_leader(meshd_proc, url, 2, NODE_ARGS)
    ids = by_id(nodes)
    old = ids[leader_id]
    survivor_id, survivor = next((i, n) for i, n in ids.items() if i != leader_id)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        agents = [await register_agent(session, survivor, name) for name in ("cut-1", "cut-2")]
        done = await asyncio.to_thread(meshd_cli, old, "protocol", "run", "network_partition",
                                       "--agents", ",".join(agents))
        assert done.returncode == 0, done.stderr
        run_id = orjson.loads(done.stdout)["id"]

        with psycopg.connect(url, autocommit=True) as conn:
            # Written to the database, driven by the leader, waiting for the agents: kill it.
            await asyncio.to_thread(poll, lambda: (run_row(conn, run_id) or {}).get("driver")
                                    == leader_id and run_row(conn, run_id)["state"]
                                    == "recorded", 30, "the run waiting, its row written")
            killed_at = time.time()
            await asyncio.to_thread(old.kill_tree)

            adopted = await asyncio.to_thread(
                poll, lambda: next(iter(run_events(survivor, run_id, "protocol.adopted")), None),
                TAKEOVER_DEADLINE, "the survivor adopting the run")
            assert adopted["from_node"] == leader_id and adopted["by_node"] == survivor_id
            # The figure for docs/nodes.md (the poll's deadline is the bound, not this).
            print(f"run adopted {log_time(adopted) - killed_at:.2f} s after kill -9 of the "  # noqa: T201
                  "leader's tree")
            assert agreed_leader([survivor]) == survivor_id
            # `meshd status` on the survivor shows the run, driven there, adopted from the
            # killed leader (read from the database with the nodes, each tick).
            shown = await asyncio.to_thread(
                poll, lambda: next((r for r in survivor.status()["mesh_runs"]
                                    if r["id"] == run_id and r["driver"] == survivor_id), None),
                20, "status showing the adopted run")
            assert shown["adopted_from"] == leader_id and shown["protocol"] == "network_partition"
            text = cli_render.status(survivor.status())
            assert "MESH-WIDE RUNS" in text, text
            assert f"{survivor_id} (this node), adopted from {leader_id}" in text, text
            # So does the console's service panel.
            panel = await console_service_panel(survivor)
            row = panel[panel.index(f'data-run="{run_id}" data-driver="{survivor_id}"'):]
            assert f"(this node), adopted from {leader_id}" in row.split("</tr>")[0], panel
            # The agents come back (through the survivor): the adopted run sees it and ends.
            for agent in agents:
                status, body = await api(session, survivor, "POST",
                                         f"/api/agents/{agent}/heartbeat", {"status": "healthy"})
                assert status == 200, body
            await asyncio.to_thread(poll, lambda: run_row(conn, run_id)["outcome"]
                                    == "completed", 30, "the adopted run completed")
            row = run_row(conn, run_id)
            assert (row["driver"], row["adopted_from"]) == (survivor_id, leader_id)
            assert row["event_status"] == "resolved"
            assert f"adopted from node {leader_id} after it lost the lead" in row["description"]
            steps = steps_of(conn, run_id)
            states = [s[0] for s in steps]
            assert states == ["detected", "recorded", "recorded", "recorded", "agents_back",
                              "synced"], steps
            # The wait left running on the killed node is final, and ran again on the survivor.
            assert steps[1][1] == "aborted" and f"node {leader_id} lost the lead" in steps[1][2]
            assert steps[2][1] == "ok" and steps[2][2].startswith(
                f"adopted from node {leader_id} after it lost the lead")
            assert steps[3][1] == "ok" and steps[3][2] == "2 agents back"
            assert conn.execute("SELECT COUNT(*) FROM protocol_runs WHERE protocol ="
                                " 'network_partition'").fetchone()[0] == 1

            # The killed node comes back, and leads (the survivor dies in turn): it drops its
            # copy of the run before it leads, drives nothing, and writes nothing to the run.
            before = steps_of(conn, run_id)
            await asyncio.to_thread(survivor.kill_tree)
            old.start(["--database", url, *NODE_ARGS])
            superseded = await asyncio.to_thread(
                poll, lambda: next(iter(run_events(old, run_id, "protocol.superseded")), None),
                30, "the restarted node superseding its copy")
            assert superseded["driver"] == survivor_id
            assert (old.data_dir / "protocols" / "superseded" / f"{run_id}.json").exists()
            await asyncio.to_thread(poll, lambda: agreed_leader([old]) == leader_id,
                                    TAKEOVER_DEADLINE, "the restarted node leading")
            assert not run_events(old, run_id, "protocol.resumed", "protocol.adopted",
                                  "protocol.transition")
            assert steps_of(conn, run_id) == before
            assert run_row(conn, run_id)["driver"] == survivor_id
            assert conn.execute("SELECT COUNT(*) FROM protocol_runs WHERE protocol ="
                                " 'network_partition'").fetchone()[0] == 1


async def test_a_handover_taken_by_a_leader_that_died_is_run_once_by_the_next(
        meshd_proc, pg_cluster):  # noqa: F811
    """The database as a leader leaves it when it dies between taking a hand-over and writing
    its run's row (a window too short to hit with a real kill): taken, not closed."""
    url = pg_cluster.url("mesh")
    nodes, leader_id = await nodes_with_a_leader(meshd_proc, url, 1, NODE_ARGS)
    (node,) = nodes
    with psycopg.connect(url, autocommit=True) as conn:
        handover, handover_run = conn.execute(
            "INSERT INTO meshd_handovers (protocol, reason, context, from_node, taken_by,"
            " taken_term, taken_at, run_id) VALUES ('network_partition', 'met on a follower',"
            " '{}', 'a-follower', 'a-dead-leader', 'its term', now(), 'run-of-a-handover')"
            " RETURNING id, run_id").fetchone()
        retaken = await asyncio.to_thread(
            poll, lambda: next((e for e in events(node, "leader.handover_retaken")
                                if e["id"] == handover), None), 15, "the hand-over retaken")
        assert retaken["taken_before"] == "a-dead-leader"
        await asyncio.to_thread(poll, lambda: conn.execute(
            "SELECT closed_at IS NOT NULL FROM meshd_handovers WHERE id = %s",
            (handover,)).fetchone()[0], 30, "the hand-over closed by its run's row")
        assert conn.execute("SELECT run_id, taken_by FROM meshd_handovers WHERE id = %s",
                            (handover,)).fetchone() == (handover_run, leader_id)
        await asyncio.to_thread(poll, lambda: (run_row(conn, handover_run) or {}).get(
            "outcome") == "completed", 30, "the hand-over's run completed")
        assert run_row(conn, handover_run)["driver"] == leader_id
        # Closed: never taken again (taken in this term already before), one run.
        assert len(events(node, "leader.handover_retaken")) == 1
        assert not events(node, "leader.handover_taken")
        assert conn.execute("SELECT COUNT(*) FROM protocol_runs").fetchone()[0] == 1
