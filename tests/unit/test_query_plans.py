"""Every list query is served by an index: `EXPLAIN QUERY PLAN` of the SQL the store functions
really run (captured by a reader that plans each statement before running it) shows no full
table scan and no temporary B-tree for ORDER BY, except the few named below with the reason
an index cannot or need not serve them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.store import (
    agents,
    catastrophe,
    files,
    groups,
    health,
    memory,
    messages,
    records,
    skills,
    updates,
)
from meshd.store.schema import migrate
from meshd.store.sqlite import connect

A, G, U = "agent-1", "group-1", "update-1"
NOW = "2026-01-01 00:00:00"

# (name, store function, arguments after the reader)
LIST_QUERIES = [
    ("agents.list_all", agents.list_all, (-1, 0)),
    ("agents.list_all paged", agents.list_all, (20, 40)),
    ("messages.inbox", messages.inbox, (A, None, False, 50, 0)),
    ("messages.inbox since", messages.inbox, (A, NOW, False, 50, 0)),
    ("messages.inbox unread", messages.inbox, (A, None, True, 50, 0)),
    ("messages.failed", messages.failed, (A, 50, 0)),
    ("files.list_files", files.list_files, (None, 50, 0)),
    ("files.list_files of an agent", files.list_files, (A, 50, 0)),
    ("groups.list_all", groups.list_all, (50, 0)),
    ("groups.members", groups.members, (G,)),
    ("groups.member_ids", groups.member_ids, (G,)),
    ("groups.groups_of_agent", groups.groups_of_agent, (A, 50, 0)),
    ("groups.agents_of_group", groups.agents_of_group, (G, 50, 0)),
    ("memory.list_for_group", memory.list_for_group, (G, None, None, 50, 0)),
    ("memory.list_for_group keys", memory.list_for_group, (G, ["k1", "k2"], None, 50, 0)),
    ("memory.history", memory.history, (G, "k1")),
    ("skills.list_all", skills.list_all, (50, 0)),
    ("updates.list_updates", updates.list_updates, (None, None, 50, 0)),
    ("updates.list_updates since", updates.list_updates, (NOW, NOW, 50, 0)),
    ("updates.acknowledgments", updates.acknowledgments, (U, 50, 0)),
    ("catastrophe.list_events", catastrophe.list_events, (None, None, 50, 0)),
    ("catastrophe.list_events status", catastrophe.list_events, ("active", None, 50, 0)),
    ("catastrophe.list_events severity", catastrophe.list_events, (None, "critical", 50, 0)),
    ("catastrophe.open_summary", catastrophe.open_summary, ()),
    ("records.open_events", records.open_events, ()),
    ("health.dashboard", health.dashboard, (NOW, -1, 0)),
    ("health.dashboard paged", health.dashboard, (NOW, 20, 0)),
]

# Plan lines allowed for one query, with why no index serves them.
ALLOWED = {
    # Sorted by a column of the other table of the join: the sort is over one agent's groups
    # or one group's members, never over the whole table.
    "groups.groups_of_agent": {"USE TEMP B-TREE FOR ORDER BY"},
    "groups.agents_of_group": {"USE TEMP B-TREE FOR ORDER BY"},
    # Counts by status over every agent read every agent by definition; a page of the
    # dashboard runs it (the whole list counts its own rows), and the dashboard is served
    # from a snapshot built once per change (meshd/api/snapshots.py).
    "health.dashboard paged": {"SCAN a", "USE TEMP B-TREE FOR GROUP BY"},
}


class PlanningReader:
    """A Reader that records the query plan of every statement before running it."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.plans: list[tuple[str, list[str]]] = []

    def _plan(self, sql: str, params) -> None:
        rows = self.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        self.plans.append((sql, [r["detail"] for r in rows]))

    def query(self, sql, params=()):
        self._plan(sql, params)
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql, params=()):
        self._plan(sql, params)
        return self.conn.execute(sql, params).fetchone()

    def scalar(self, sql, params=()):
        row = self.one(sql, params)
        return next(iter(row.values())) if row else None


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    path: Path = tmp_path_factory.mktemp("plans") / "mesh.db"
    setup = connect(path)
    setup.row_factory = None
    migrate(setup)
    setup.close()
    reader = connect(path, query_only=True)
    yield reader
    reader.close()


def bad_lines(plan: list[str]) -> list[str]:
    bad = []
    for line in plan:
        if line.startswith("SCAN ") and " USING " not in line:
            bad.append(line)  # every row of a table read
        elif "TEMP B-TREE" in line:
            bad.append(line)  # every matching row sorted before the first is returned
    return bad


@pytest.mark.parametrize(("name", "fn", "args"), LIST_QUERIES, ids=[q[0] for q in LIST_QUERIES])
def test_list_query_uses_an_index(conn, name, fn, args):
    reader = PlanningReader(conn)
    fn(reader, *args)
    assert reader.plans, f"{name} ran no query"
    for sql, plan in reader.plans:
        unexpected = [line for line in bad_lines(plan) if line not in ALLOWED.get(name, {})]
        assert not unexpected, f"{name}: {sql}\nplan: {plan}"


def test_the_checker_sees_a_scan_and_a_sort(conn):
    """The test above could not fail if bad_lines never matched: a query with no usable index
    and an ORDER BY on an unindexed column is caught."""
    reader = PlanningReader(conn)
    reader.query("SELECT id FROM messages WHERE content = ? ORDER BY message_type", ("x",))
    (_sql, plan), = reader.plans
    assert len(bad_lines(plan)) == 2, plan
