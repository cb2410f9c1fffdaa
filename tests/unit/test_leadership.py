"""Leadership without a database: the role table, the lease a leader holds and the one its
worker is given (the election itself runs against real nodes: tests/process/test_nodes_leader.py)."""

from __future__ import annotations

import time

import psycopg
import pytest

from meshd.store import pg_nodes
from meshd.supervisor import leader
from meshd.supervisor.leader import TRANSITIONS, Leadership, Role
from meshd.worker.leadership import Lease

NODE = pg_nodes.NodeInfo("n1", "http://10.0.0.1:4000", 1, "0.1.0")


def test_every_role_has_its_moves_and_duties_need_the_wait():
    assert set(TRANSITIONS) == set(Role)
    # Nobody leads straight from the lock: the previous leader's lease is waited out first.
    assert Role.LEADER not in TRANSITIONS[Role.FOLLOWER]
    assert Role.LEADER not in TRANSITIONS[Role.CONNECTING]
    # A failed lock connection ends leading at once, from any connected role.
    for role in (Role.FOLLOWER, Role.ELECTED, Role.LEADER):
        assert Role.CONNECTING in TRANSITIONS[role]
    assert leader.TAKEOVER_WAIT > leader.LEASE
    assert leader.IDLE_SESSION_TIMEOUT_MS / 1000 > leader.LEASE


def test_sqlite_always_leads_and_postgresql_starts_connecting():
    assert Leadership(None, NODE).leads
    assert Leadership(None, NODE).lease()["leader"] is True
    pg = Leadership("postgresql://x/y", NODE)
    assert pg.role == Role.CONNECTING and not pg.leads
    with pytest.raises(RuntimeError):
        pg._move(Role.LEADER, "skipping the wait")


def test_a_leader_leads_only_while_its_lease_lasts_and_is_told_when_it_turns():
    turns: list[bool] = []
    pg = Leadership("postgresql://x/y", NODE, turns.append)
    pg._move(Role.FOLLOWER, "t")
    pg.valid_until = time.monotonic() + 5
    pg._move(Role.ELECTED, "t")
    assert not pg.leads and turns == []
    pg._move(Role.LEADER, "t")
    assert pg.leads and turns == [True]
    assert pg.lease()["until_monotonic"] == pg.valid_until
    pg.valid_until = time.monotonic() - 0.1  # no successful ping for LEASE seconds
    assert not pg.leads and pg.lease() == {"leader": False, "until_monotonic": None,
                                           "node_id": "n1"}
    pg.valid_until = time.monotonic() + 5
    pg._move(Role.CONNECTING, "lock connection failed")
    assert not pg.leads and turns == [True, False]


def test_a_follower_names_the_leader_in_its_refusal():
    pg = Leadership("postgresql://x/y", NODE)
    assert "no node leads right now" in pg.not_leader("network_partition")
    pg.nodes = [{"node_id": "n2", "address": "http://10.0.0.2:4000", "leader": True}]
    text = pg.not_leader("network_partition")
    assert "n2 at http://10.0.0.2:4000" in text and "(n1) is not the leader" in text


def test_the_workers_lease_runs_out_by_itself():
    lease = Lease(always=False)
    assert not lease.leads()
    lease.grant(time.monotonic() + 60)
    assert lease.leads() and lease.gained_at is not None
    first = lease.gained_at
    lease.grant(time.monotonic() + 60)
    assert lease.gained_at == first  # a renewal is not a new term
    lease.grant(time.monotonic() - 1)
    assert not lease.leads()
    lease.grant(time.monotonic() + 60)
    assert lease.gained_at > first  # leading again after a gap: a new term
    lease.revoke()
    assert not lease.leads()
    assert Lease(always=True).leads()


def test_the_node_id_is_stable_per_data_dir(tmp_path):
    first = leader.node_id(tmp_path)
    assert leader.node_id(tmp_path) == first
    assert leader.node_id(tmp_path / ".." / tmp_path.name) == first


def test_a_failure_noticed_after_stop_is_ignored():
    pg = Leadership("postgresql://x/y", NODE)
    pg._move(Role.STOPPED, "stopping")
    pg._lost("the connection stop() closed")
    assert pg.role == Role.STOPPED


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_two_supervisors_on_a_real_database_elect_one_and_the_lock_moves(
        pg_database, monkeypatch):
    """The election's SQL against a real PostgreSQL, two Leaderships in one process (the
    take-over wait set to 0 here; real nodes wait it out: tests/process/test_nodes_leader.py)."""
    monkeypatch.setattr(leader, "TAKEOVER_WAIT", 0.0)
    turns: dict[str, list[bool]] = {"a": [], "b": []}
    a, b = (Leadership(pg_database, pg_nodes.NodeInfo(n, f"http://{n}:4000", 1, "0.1.0"),
                       turns[n].append) for n in ("a", "b"))
    await a.tick()
    await b.tick()
    assert (a.role, b.role) == (Role.LEADER, Role.FOLLOWER) and a.leads and not b.leads
    assert [(n["node_id"], n["state"]) for n in b.nodes] == [("a", "leader"), ("b", "follower")]

    # The server ends the leader's session: it stops leading at its next tick, and the lock,
    # freed with the session, goes to the other node.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'meshd leader lock a'")
    await a.tick()
    assert a.role == Role.CONNECTING and turns["a"] == [True, False]
    await b.tick()
    assert b.role == Role.LEADER and turns["b"] == [True]
    await a.tick()
    assert a.role == Role.FOLLOWER
    assert [n["node_id"] for n in a.nodes if n["leader"]] == ["b"]

    # A start handed over by the follower is taken by the leader, once.
    taken: list[dict] = []
    b.on_handover = taken.append
    await a.hand_over("network_partition", "seen on a", {"agents": ["x"]})
    await b.tick()
    await b.tick()
    assert [(t["protocol"], t["context"], t["from_node"]) for t in taken] == [
        ("network_partition", {"agents": ["x"]}, "a")]

    # A clean stop releases the lock at once and marks the row gone.
    await b.stop()
    assert turns["b"] == [True, False]
    await a.tick()
    assert a.role == Role.LEADER
    rows = {n["node_id"]: n for n in a.nodes}
    assert rows["b"]["state"] == "gone" and not rows["b"]["leader"]
    await a.stop()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            ).fetchone()[0]
    assert held == 0


async def test_scheduled_backups_and_checks_run_only_on_the_leader(tmp_path):
    """A real Supervisor object on a real SQLite file: its scheduled maintenance is skipped
    while its Leadership does not lead, and runs once it does."""
    from meshd import config
    from meshd.supervisor.loop import State, Supervisor
    from meshd.worker.serve import open_storage

    settings = config.load({"data_dir": str(tmp_path / "data"),
                            "backup_dir": str(tmp_path / "backups")}, environ={})
    storage = open_storage(settings)  # a meshd database, made as the worker makes it
    await storage.start()
    await storage.close()
    sup = Supervisor(settings, {})
    sup.state = State.SERVING
    try:
        sup.leadership = Leadership("postgresql://x/y", NODE)  # connecting: not leading
        await sup.maintenance.scheduled_backup()
        await sup.maintenance.scheduled_check(full=False)
        assert sup.maintenance.last_backup_run is None and sup.maintenance.last_check is None

        sup.leadership = Leadership(None, NODE)  # SQLite: the only node, always leads
        await sup.maintenance.scheduled_backup()
        await sup.maintenance.scheduled_check(full=False)
        assert sup.maintenance.last_backup_run["ok"] and sup.maintenance.last_check["ok"]
    finally:
        sup.maintenance.stop()
