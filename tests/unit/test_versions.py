"""Per-table write counters: which table a statement writes, and the writer bumping them only
for what it committed."""

from __future__ import annotations

import pytest

from meshd.store.versions import EVERY_TABLE, TableVersions, written_table


@pytest.mark.parametrize(("sql", "table"), [
    ("INSERT INTO agents (id) VALUES (?)", "agents"),
    ("  insert or replace into Agent_Health_Status (agent_id) VALUES (?)", "agent_health_status"),
    ("INSERT OR IGNORE INTO meshd_meta (key, value) VALUES (?, ?)", "meshd_meta"),
    ("REPLACE INTO skills (id) VALUES (?)", "skills"),
    ("UPDATE agents SET last_seen = ? WHERE id = ?", "agents"),
    ("UPDATE OR ROLLBACK messages SET read = 1", "messages"),
    ('DELETE FROM "agent_files" WHERE id = ?', "agent_files"),
    ("CREATE INDEX x ON agents(name)", EVERY_TABLE),
    ("WITH t AS (SELECT 1) INSERT INTO agents SELECT * FROM t", EVERY_TABLE),
])
def test_written_table(sql, table):
    assert written_table(sql) == table


def test_counter_moves_only_for_the_tables_written():
    versions = TableVersions()
    dashboard = ("agents", "agent_health_status")
    before = versions.of(dashboard)
    versions.bump(["INSERT INTO messages (id) VALUES (?)"])
    assert versions.of(dashboard) == before
    versions.bump(["UPDATE agents SET last_seen = ?", "UPDATE agents SET name = ?"])
    assert versions.of(dashboard) == before + 1  # one bump per write, however many statements
    versions.bump(["ALTER TABLE files ADD COLUMN x"])  # unknown shape: everything is stale
    assert versions.of(("skills",)) == 1


def _touch(tx, agent_id, now):
    return tx.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (now, agent_id))


def _insert_then_fail(tx):
    tx.execute("INSERT INTO agents (id, name) VALUES ('x', 'x')")
    raise ValueError("no")


async def test_the_writer_bumps_after_commit_only(storage):
    agents = ("agents",)
    start = storage.versions.of(agents)
    await storage.write(_touch, "nobody", "2026-01-01 00:00:00")  # a statement ran: bumped
    assert storage.versions.of(agents) == start + 1
    with pytest.raises(ValueError):
        await storage.write(_insert_then_fail)  # rolled back: nothing committed, no bump
    assert storage.versions.of(agents) == start + 1
    await storage.trial(_touch, "nobody", "2026-01-01 00:00:00")  # a trial never commits
    assert storage.versions.of(agents) == start + 1
    assert storage.versions.of(("messages",)) == 0
