"""Leadership without a database: the role table, the lease a leader holds and the one its
worker is given (the election itself runs against real nodes: tests/process/test_nodes_leader.py)."""

from __future__ import annotations

import time

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
