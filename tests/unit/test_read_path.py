"""Which reads run on the event loop's own connection and which on the reader pool: a read
declared small (`store.base.small_read`) runs inline, with no thread hand-off, unless its
arguments say it is large; a small read that overruns the inline budget is interrupted by
SQLite and answered from the pool; every other read goes to the pool."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from meshd.errors import CorruptDatabase
from meshd.store import agents, messages
from meshd.store.base import runs_inline, small_read
from meshd.store.sqlite import SqliteStorage
from tests.support import async_poll, sqlite_store

NOW = "2026-01-01 00:00:00"


@pytest.fixture
async def store(tmp_path):
    async with sqlite_store(tmp_path) as storage:
        yield storage


def where(db) -> str:
    return threading.current_thread().name


small_where = small_read(lambda db: (threading.current_thread().name, db.scalar("SELECT 1")))


@small_read(when=lambda n: n <= 10)
def numbers(db, n: int) -> tuple[str, list[int]]:
    rows = db.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                    " WHERE x < ?) SELECT x FROM c", (n,))
    return threading.current_thread().name, [r["x"] for r in rows]


@small_read
def slow_count(db) -> tuple[str, int]:
    """Declared small, yet counts to two million: far past any inline budget."""
    total = db.scalar("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                      " WHERE x < 2000000) SELECT COUNT(*) FROM c")
    return threading.current_thread().name, total


async def test_a_small_read_runs_on_the_loop_thread_and_others_on_the_pool(store):
    loop_thread = threading.current_thread().name
    name, one = await store.read(small_where)
    assert (name, one) == (loop_thread, 1)
    assert (await store.read(where)).startswith("meshd-reader")


async def test_the_declared_rule_sends_a_large_page_to_the_pool(store):
    loop_thread = threading.current_thread().name
    assert await store.read(numbers, 10) == (loop_thread, list(range(1, 11)))
    name, rows = await store.read(numbers, 11)
    assert name.startswith("meshd-reader") and rows == list(range(1, 12))


async def test_a_small_read_past_its_budget_is_answered_from_the_pool(store):
    assert store.inline_overruns == 0
    name, total = await store.read(slow_count)
    assert name.startswith("meshd-reader")
    assert total == 2_000_000
    assert store.inline_overruns == 1
    # The loop's connection is usable again at once, and the interrupted read left no snapshot
    # open behind it: a write committed now is seen.
    assert (await store.read(small_where))[0] == threading.current_thread().name
    agent_id, _ = await store.write(agents.register, "after", None, None, NOW)
    assert runs_inline(agents.get, (agent_id,))
    assert (await store.read(agents.get, agent_id))["name"] == "after"


async def test_an_inline_read_sees_committed_writes_at_once(store):
    agent_id, _ = await store.write(agents.register, "a", None, None, NOW)
    assert (await store.read(agents.get, agent_id))["name"] == "a"
    await store.write(agents.register, "a", "http://x", None, NOW)
    assert (await store.read(agents.get, agent_id))["endpoint"] == "http://x"


def test_the_store_declares_its_one_row_and_one_page_reads_small():
    assert runs_inline(agents.get, ("id",))
    assert runs_inline(messages.inbox, ("id", None, False, 50, 0))
    assert not runs_inline(messages.inbox, ("id", None, False, -1, 0))  # a whole inbox
    assert not runs_inline(messages.inbox, ("id", None, False, messages.INLINE_PAGE + 1, 0))
    assert not runs_inline(agents.list_all, ())


async def test_corruption_met_by_an_inline_read_is_reported(tmp_path):
    reported: list[str] = []
    storage = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal", readers=1,
                            on_corruption=reported.append)
    await storage.start()
    try:
        ids = [(await storage.write(agents.register, f"a{i}", None, None, NOW))[0]
               for i in range(50)]
        damage_pages_of(tmp_path / "mesh.db", "agents")
        assert runs_inline(agents.get, (ids[0],))
        with pytest.raises(CorruptDatabase):
            await storage.read(agents.get, ids[0])
        assert storage._reader_conns == []  # met on the loop's connection, not the pool's
        await async_poll(lambda: reported, 10, "the corruption callback")
        assert "malformed" in reported[0]
    finally:
        await storage.close()


def damage_pages_of(path, table: str) -> None:
    """Overwrite the root pages of a table and its indexes with garbage, after moving the WAL
    into the database file (so the damaged pages are the ones SQLite reads)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [r[0] for r in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage > 1", (table,))]
    finally:
        conn.close()
    with path.open("r+b") as fh:
        for root in roots:
            fh.seek((root - 1) * page_size)
            fh.write(b"\xa5" * page_size)
