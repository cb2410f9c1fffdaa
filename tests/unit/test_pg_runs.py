"""Who drives a mesh-wide run on PostgreSQL (store/pg_runs.py, supervisor/takeover.py), on a real
database with the worker's real store and real lock connections: a new leader adopts the run
of a node that lost the lead, the old node's late writes are dropped and its copy superseded,
and a hand-over whose taker died is taken again and answered by exactly one run.

The nodes here are engines in this process (a toy protocol named like a mesh-wide one, whose
waiting step is an asyncio.Event); the same rules with real nodes and kill -9:
tests/process/test_nodes_takeover.py."""

from __future__ import annotations

import asyncio
import itertools

import psycopg
import pytest

from meshd import config
from meshd.errors import Invalid
from meshd.recovery.engine import Engine, Run, Transition
from meshd.store import pg_nodes, pg_runs, pg_schema, records
from meshd.supervisor import leader
from meshd.supervisor.takeover import RunTakeover, start_handed_over
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY
from tests.support import async_poll
from tests.unit.test_engine import FakeHost, ok, spec

_names = itertools.count(1)
MESH_WIDE_NAME = "network_partition"  # the toy protocol counts as mesh-wide by its name


@pytest.fixture
def url(pg_cluster):
    name = f"runs{next(_names)}"
    yield pg_cluster.clone_template(name)
    pg_cluster.drop_database(name)


@pytest.fixture
async def storage(tmp_path, url):
    settings = config.load({"data_dir": str(tmp_path / "worker"), "api_key": API_KEY,
                            "database": url, "access_log": "false", "log_format": "json"},
                           environ={})
    store = open_storage(settings)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def lock_conns(url):
    """Each node's lock connection, as its leadership loop opens it."""
    opened = {}

    async def conn(node: str):
        if node not in opened:
            opened[node] = await pg_nodes.connect(url, node, leader.IDLE_SESSION_TIMEOUT_MS)
        return opened[node]

    yield conn
    for made in opened.values():
        await made.close()


class Node:
    """One node's engine, its records as its supervisor would queue them, and what its worker
    does with them (writes them through the real store)."""

    def __init__(self, tmp_path, name: str, gate: asyncio.Event) -> None:
        self.name = name
        self.host = FakeHost()

        async def wait_for_gate(host, run: Run) -> str:
            await gate.wait()
            return "agents back"

        self.spec = spec({"detected": Transition(ok("recorded"), "recorded"),
                          "recorded": Transition(wait_for_gate, "agents_back", timeout=None),
                          "agents_back": Transition(ok("synced"), "resolved")},
                         name=MESH_WIDE_NAME)
        self.runs_dir = tmp_path / name / "protocols"
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        """The engine of a (re)started supervisor on this node's data dir."""
        engine = Engine(self.host, self.runs_dir, {self.spec.name: self.spec},
                        retry_pause=0.001)
        engine.driver = lambda run: self.name
        return engine

    def take_records(self) -> list[dict]:
        taken, self.host.records = self.host.records, []
        return taken

    async def flush(self, storage, batch: list[dict] | None = None) -> None:
        await storage.write_internal(records.apply_all,
                                     self.take_records() if batch is None else batch)


async def db_run(storage, run_id: str) -> dict | None:
    return await storage.read(lambda db: db.one(
        "SELECT r.state, r.outcome, r.reason, d.driver, d.adopted_from FROM protocol_runs r"
        " LEFT JOIN meshd_run_drivers d ON d.run_id = r.id WHERE r.id = ?", (run_id,)))


async def db_steps(storage, run_id: str) -> list[dict]:
    return await storage.read(lambda db: db.query(
        "SELECT state, next_state, outcome, detail FROM protocol_steps WHERE run_id = ?"
        " ORDER BY seq", (run_id,)))


async def test_a_new_leader_adopts_the_run_and_the_old_drivers_late_writes_are_dropped(
        tmp_path, storage, lock_conns):
    gate = asyncio.Event()
    a, b = Node(tmp_path, "node-a", gate), Node(tmp_path, "node-b", gate)
    run = a.engine.start(MESH_WIDE_NAME, "partition")
    await async_poll(lambda: run.state == "recorded", 5, "node A's run waiting")
    await a.flush(storage)
    assert (await db_run(storage, run.id))["driver"] == "node-a"
    # What `meshd status` shows on every node: the run, its state, the node driving it.
    watcher = await lock_conns("node-w")
    assert await pg_runs.running(watcher) == [{"id": run.id, "protocol": MESH_WIDE_NAME,
                                               "state": "recorded", "driver": "node-a",
                                               "adopted_from": None}]

    # Node A loses the lead: it stops driving. A write it had queued lands late.
    a.engine.suspend(lambda r: True, "lost the lead")
    run.reason = "a late write of node A"
    a.engine.save(run)
    late = a.take_records()

    # Node B leads: it adopts the run from the database's copy (not from A's files).
    await RunTakeover(b.engine, "node-b").tick(await lock_conns("node-b"), leads=True)
    adopted = b.engine.runs[run.id]
    assert adopted is not run and adopted.state == "recorded"
    assert adopted.steps[-1].detail.startswith("adopted from node node-a after it lost the lead")
    assert "adopted from node node-a" in adopted.event["description"]
    await a.flush(storage, late)  # A's late write, after the claim: dropped
    assert (await db_run(storage, run.id))["reason"] != "a late write of node A"
    assert [(r["id"], r["driver"], r["adopted_from"]) for r in await pg_runs.running(watcher)
            ] == [(run.id, "node-b", "node-a")]

    gate.set()
    finished = await b.engine.wait(run.id)
    assert finished.outcome == "completed"
    await b.flush(storage)
    row = await db_run(storage, run.id)
    assert (row["outcome"], row["driver"], row["adopted_from"]) == ("completed", "node-b",
                                                                    "node-a")
    assert await pg_runs.running(watcher) == []  # finished: no longer shown
    steps = await db_steps(storage, run.id)
    assert [s["state"] for s in steps] == ["detected", "recorded", "recorded", "agents_back"]
    assert steps[1]["detail"].startswith("adopted from node node-a")
    event = await storage.read(lambda db: db.one(
        "SELECT status, description FROM catastrophe_events WHERE id = ?", (run.event_id,)))
    assert event["status"] == "resolved" and "adopted from node node-a" in event["description"]

    # A's late write again (its outbox survives a restart): still dropped, nothing reopened.
    await a.flush(storage, late)
    assert (await db_run(storage, run.id))["outcome"] == "completed"
    event = await storage.read(lambda db: db.one(
        "SELECT status FROM catastrophe_events WHERE id = ?", (run.event_id,)))
    assert event["status"] == "resolved"

    # Node A restarts and even leads again: its copy is superseded, never driven.
    restarted = a.new_engine()
    held = restarted.resume_unfinished(hold=lambda r: True)
    assert held == [] and restarted.runs[run.id].outcome == "running"
    await RunTakeover(restarted, "node-a").tick(await lock_conns("node-a"), leads=True)
    assert run.id not in restarted.runs
    assert not (a.runs_dir / f"{run.id}.json").exists()
    assert (a.runs_dir / "superseded" / f"{run.id}.json").exists()
    assert a.host.records == []
    # Nothing left to adopt, for anyone.
    assert await pg_runs.orphans(await lock_conns("node-c"), "node-c", [MESH_WIDE_NAME]) == []


async def test_only_one_node_claims_a_run_and_only_from_its_current_driver(
        tmp_path, storage, lock_conns):
    gate = asyncio.Event()
    a = Node(tmp_path, "node-a", gate)
    run = a.engine.start(MESH_WIDE_NAME, "partition")
    await async_poll(lambda: run.state == "recorded", 5, "node A's run waiting")
    await a.flush(storage)
    b_conn, c_conn = await lock_conns("node-b"), await lock_conns("node-c")
    assert [r["run_id"] for r in await pg_runs.orphans(b_conn, "node-b",
                                                       [MESH_WIDE_NAME])] == [run.id]
    assert await pg_runs.orphans(b_conn, "node-a", [MESH_WIDE_NAME]) == []  # its own
    assert await pg_runs.claim(b_conn, run.id, "node-b", "node-a") is not None
    # C acting on what it read before B's claim: refused (the driver is not node-a now).
    assert await pg_runs.claim(c_conn, run.id, "node-c", "node-a") is None
    assert await pg_runs.drivers_of(c_conn, [run.id, "unknown"]) == {run.id: "node-b"}
    gate.set()
    await a.engine.wait(run.id)


async def test_a_handover_whose_taker_died_is_taken_again_and_answered_by_one_run(
        tmp_path, storage, lock_conns):
    never, done = asyncio.Event(), asyncio.Event()
    done.set()
    a, b = Node(tmp_path, "node-a", never), Node(tmp_path, "node-b", done)
    follower, a_conn, b_conn = (await lock_conns("node-f"), await lock_conns("node-a"),
                                await lock_conns("node-b"))
    handover = await pg_nodes.hand_over(follower, "node-f", MESH_WIDE_NAME, "met on F",
                                        {"agents": ["x"]})

    # Node A leads and takes it; once in its term only.
    taken = await pg_nodes.take_handovers(a_conn, "node-a", "term-a")
    assert [(t["id"], t["taken_before"]) for t in taken] == [(handover, None)]
    run_id = taken[0]["run_id"]
    assert run_id and await pg_nodes.take_handovers(a_conn, "node-a", "term-a") == []
    # A starts the run but dies before its row is written: its records are still queued.
    run_a = start_handed_over(a.engine, taken[0])
    assert run_a.id == run_id
    await async_poll(lambda: run_a.state == "recorded", 5, "A's run waiting")
    a.engine.suspend(lambda r: True, "died")
    late = a.take_records()

    # Node B leads: the hand-over is still open, taken again, with the same run id.
    again = await pg_nodes.take_handovers(b_conn, "node-b", "term-b")
    assert [(t["id"], t["taken_before"], t["run_id"]) for t in again] == [
        (handover, "node-a", run_id)]
    # A's late records land first: refused (B took the hand-over), so no row for A's run.
    await a.flush(storage, late)
    assert await db_run(storage, run_id) is None
    run_b = start_handed_over(b.engine, again[0])
    await b.engine.wait(run_b.id)
    await b.flush(storage)
    row = await db_run(storage, run_id)
    assert (row["outcome"], row["driver"]) == ("completed", "node-b")
    closed = await (await b_conn.execute(
        "SELECT run_id, closed_at IS NOT NULL AS closed FROM meshd_handovers WHERE id = %s",
        (handover,))).fetchone()
    assert closed == {"run_id": run_id, "closed": True}
    # Closed: no later leader takes it, and A's late records still change nothing.
    assert await pg_nodes.take_handovers(a_conn, "node-a", "term-a2") == []
    await a.flush(storage, late)
    count = await storage.read(lambda db: db.scalar(
        "SELECT COUNT(*) FROM protocol_runs WHERE protocol = ?", (MESH_WIDE_NAME,)))
    assert count == 1
    # Node A back (a follower now): its copy of the run is superseded by B's.
    restarted = a.new_engine()
    restarted.resume_unfinished(hold=lambda r: True)
    assert restarted.runs[run_id].outcome == "running"
    await RunTakeover(restarted, "node-a").tick(a_conn, leads=False)
    assert run_id not in restarted.runs and a.host.records == []


async def test_a_handover_met_while_a_run_is_under_way_is_closed_by_that_run(
        tmp_path, storage, lock_conns):
    gate = asyncio.Event()
    b = Node(tmp_path, "node-b", gate)
    follower, b_conn = await lock_conns("node-f"), await lock_conns("node-b")
    running = b.engine.start(MESH_WIDE_NAME, "detected on B")
    await async_poll(lambda: running.state == "recorded", 5, "B's run waiting")
    handover = await pg_nodes.hand_over(follower, "node-f", MESH_WIDE_NAME, "met on F", {})
    (start,) = await pg_nodes.take_handovers(b_conn, "node-b", "term-b")
    assert start_handed_over(b.engine, start) is running  # joined: one run of the protocol
    assert running.context["handovers"] == [handover]
    await b.flush(storage)
    closed = await (await b_conn.execute(
        "SELECT run_id FROM meshd_handovers WHERE id = %s AND closed_at IS NOT NULL",
        (handover,))).fetchone()
    assert closed == {"run_id": running.id}
    gate.set()
    await b.engine.wait(running.id)


async def test_a_node_whose_lease_ran_out_takes_no_further_step(tmp_path):
    """A stalled leader (its loop frozen past the lease) that thaws before it hears of the
    loss: the step under way may end, the next one is not started; the run stays running for
    whoever drives it now. No database here: the engine's own check."""
    gate, leads = asyncio.Event(), [True]
    a = Node(tmp_path, "node-a", gate)
    a.engine.may_drive = lambda run: leads[0]
    run = a.engine.start(MESH_WIDE_NAME, "partition")
    await async_poll(lambda: run.state == "recorded", 5, "the run waiting")
    leads[0] = False
    gate.set()
    await a.engine.wait(run.id)
    assert (run.outcome, run.state) == ("running", "agents_back")
    assert [s.state for s in run.steps] == ["detected", "recorded"]
    assert a.engine.held(lambda r: True) == [run]


async def test_a_run_the_database_never_saw_is_adopted_once_its_late_records_land(
        tmp_path, storage, lock_conns):
    """The leader died before any record of its run was written: the new leader cannot know
    it. When the old node is back as a follower its queued records land, naming it the driver;
    the leader then adopts the run and the old node drops its copy."""
    gate = asyncio.Event()
    a, b = Node(tmp_path, "node-a", gate), Node(tmp_path, "node-b", gate)
    a_conn, b_conn = await lock_conns("node-a"), await lock_conns("node-b")
    run = a.engine.start(MESH_WIDE_NAME, "partition")
    await async_poll(lambda: run.state == "recorded", 5, "node A's run waiting")
    a.engine.suspend(lambda r: True, "died")
    queued = a.take_records()

    leader_b = RunTakeover(b.engine, "node-b")
    await leader_b.tick(b_conn, leads=True)
    assert b.engine.runs == {}  # nothing to adopt yet

    restarted = a.new_engine()
    restarted.resume_unfinished(hold=lambda r: True)
    follower_a = RunTakeover(restarted, "node-a")
    await a.flush(storage, queued)  # its outbox, sent once its worker serves again
    await follower_a.tick(a_conn, leads=False)
    assert run.id in restarted.runs  # still its own: nobody else drives it

    await leader_b.tick(b_conn, leads=True)
    assert b.engine.runs[run.id].steps[-1].detail.startswith("adopted from node node-a")
    await follower_a.tick(a_conn, leads=False)
    assert run.id not in restarted.runs
    gate.set()
    assert (await b.engine.wait(run.id)).outcome == "completed"


def test_migrating_to_v5_closes_the_handovers_taken_before_and_keeps_the_new_ones_open(
        pg_cluster):
    """Version 4 marked a hand-over taken and nothing more: whether its run started cannot be
    known, so the migration closes it (taking it again could run it twice)."""
    name = f"v4to5_{next(_names)}"
    pg_cluster.create_database(name)
    try:
        with psycopg.connect(pg_cluster.url(name), autocommit=True) as conn:
            for number, migration in enumerate(pg_schema.MIGRATIONS[:4], start=1):
                with conn.transaction():
                    migration(conn)
                    conn.execute("INSERT INTO meshd_meta (key, value) VALUES"
                                 " ('schema_version', %s) ON CONFLICT (key) DO UPDATE"
                                 " SET value = excluded.value", (str(number),))
            conn.execute("INSERT INTO meshd_handovers (protocol, context, from_node, taken_by,"
                         " taken_at) VALUES ('breaking_api_update', '{}', 'f', 'l', now()),"
                         " ('breaking_api_update', '{}', 'f', NULL, NULL)")
            report = pg_schema.migrate(conn)
            assert (report.from_version, report.to_version) == (4, 5)
            rows = conn.execute("SELECT taken_by, closed_at IS NOT NULL FROM meshd_handovers"
                                " ORDER BY id").fetchall()
            assert rows == [("l", True), (None, False)]
    finally:
        pg_cluster.drop_database(name)


@pytest.mark.parametrize("fence", ["node-a", {"driver": "node-a"}, {"run_id": "r1", "driver": 5},
                                   {"run_id": "r1", "driver": "node-a", "handovers": "1"},
                                   {"run_id": "r1", "driver": "node-a", "handovers": ["1"]}],
                         ids=["not-an-object", "no-run-id", "driver-not-text",
                              "handovers-not-a-list", "handover-not-an-id"])
async def test_a_record_with_a_malformed_fence_is_refused_and_writes_nothing(storage, fence):
    run = {"id": "r1", "protocol": MESH_WIDE_NAME, "event_id": "e1", "state": "detected",
           "started_at": "2026-12-01 10:00:00", "updated_at": "2026-12-01 10:00:00",
           "outcome": "running", "steps": []}
    with pytest.raises(Invalid, match="fence needs run_id, driver"):
        await storage.write_internal(records.apply_all,
                                     [{"kind": "run", "id": "run-r1", "run": run, "fence": fence}])
    assert await db_run(storage, "r1") is None
