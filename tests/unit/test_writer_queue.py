"""The writer thread's queue (meshd.store.writer) on a real SQLite store: writes run in order,
in batches that grow with the queue, each batch answered with one wake-up of the event loop;
one failing write in a batch fails alone; closing runs and answers everything queued."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from meshd.errors import Conflict, Unavailable
from meshd.store import agents
from meshd.store import journal as jr
from meshd.store.events import Event
from meshd.store.sqlite import SqliteStorage
from tests.support import sqlite_store

NOW = "2026-01-01 00:00:00"


@pytest.fixture
async def store(tmp_path):
    async with sqlite_store(tmp_path) as storage:
        yield storage


class Parked:
    """A write that holds the writer thread until released, so that the writes queued behind
    it form one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, tx) -> str:
        self.entered.set()
        assert self.release.wait(30), "the test never released the parked write"
        return "parked"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)


def named(name: str):
    def write(tx) -> str:
        agents.register(tx, name, None, None, NOW)
        tx.emit(Event("agent_joined", {"name": name}))
        return name
    write.__name__ = f"register_{name}"
    return write


def names_in_rowid_order(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM agents ORDER BY rowid")]
    finally:
        conn.close()


async def test_queued_writes_run_in_order_as_one_batch_answered_by_one_loop_wakeup(store):
    delivered: list[str] = []
    store.set_event_sink(lambda events: delivered.extend(e.data for e in events))
    batches: list[int] = []
    store.on_batch = lambda records, _fsync: batches.append(records)
    parked = Parked()
    first = asyncio.ensure_future(store.write(parked))
    await parked.wait_entered()

    loop = asyncio.get_running_loop()
    wakeups = 0
    plain = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        nonlocal wakeups
        wakeups += 1
        return plain(*args, **kwargs)

    loop.call_soon_threadsafe = counting
    try:
        names = [f"agent-{i:02d}" for i in range(20)]
        pending = [asyncio.ensure_future(store.write(named(n))) for n in names]
        await asyncio.sleep(0)  # every write is on the writer's queue behind the parked one
        batches_before = store._writer.batches
        parked.release.set()
        assert await first == "parked"
        assert await asyncio.gather(*pending) == names
    finally:
        loop.call_soon_threadsafe = plain

    assert store._writer.batches == batches_before + 2  # the parked write, then all 20
    assert batches == [20]  # one journal append (the parked write wrote nothing)
    assert wakeups == 2  # one per batch, not one per write
    assert names_in_rowid_order(store.path) == names
    assert [f'{{"type":"agent_joined","name":"{n}"}}' for n in names] == delivered


async def test_one_failing_write_in_a_batch_fails_alone(store):
    parked = Parked()
    first = asyncio.ensure_future(store.write(parked))
    await parked.wait_entered()

    def broken(tx) -> None:
        agents.register(tx, "rolled-back", None, None, NOW)
        raise ValueError("this write fails")

    def duplicate(tx) -> None:  # same primary key twice: SQLite's IntegrityError
        tx.execute("INSERT INTO meshd_meta (key, value) VALUES ('k', '1')")
        tx.execute("INSERT INTO meshd_meta (key, value) VALUES ('k', '2')")

    writes = [named("before"), broken, duplicate, named("after")]
    pending = [asyncio.ensure_future(store.write(w)) for w in writes]
    await asyncio.sleep(0)
    parked.release.set()
    await first
    outcomes = await asyncio.gather(*pending, return_exceptions=True)

    assert outcomes[0] == "before" and outcomes[3] == "after"
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], Conflict)
    assert names_in_rowid_order(store.path) == ["before", "after"]
    # The acknowledged writes are in the journal (what a restore replays), the failed not.
    journaled = [sql_params for record in jr.read_all(store.journal_dir, store.journal_epoch)
                 for sql_params in record.statements]
    registered = [params[1] for sql, params in journaled if sql.startswith("INSERT INTO agents")]
    assert registered == ["before", "after"]
    assert not any("meshd_meta (key, value)" in sql for sql, _ in journaled)


async def test_close_runs_and_answers_every_queued_write_and_refuses_new_ones(tmp_path):
    storage = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal", readers=1)
    await storage.start()
    parked = Parked()
    first = asyncio.ensure_future(storage.write(parked))
    await parked.wait_entered()
    names = [f"queued-{i}" for i in range(10)]
    pending = [asyncio.ensure_future(storage.write(named(n))) for n in names]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(storage.close())
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):
        await storage.write(named("too-late"))
    parked.release.set()
    await closing
    assert await first == "parked"
    assert await asyncio.gather(*pending) == names
    assert names_in_rowid_order(tmp_path / "mesh.db") == names

    reopened = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal", readers=1)
    await reopened.start()
    try:
        assert reopened.replayed == 0  # everything acknowledged was committed, not only journaled
        assert sorted(a["name"] for a in await reopened.read(agents.list_all)) == names
    finally:
        await reopened.close()


async def test_a_write_function_that_raises_stop_iteration_is_answered(store):
    def odd(tx):
        raise StopIteration("not a generator")

    with pytest.raises(RuntimeError, match="StopIteration"):
        await store.write(odd)
    assert await store.write(named("next")) == "next"


async def test_a_store_that_failed_to_open_leaves_no_writer_thread(tmp_path):
    (tmp_path / "mesh.db").write_bytes(b"this is not a database" * 100)
    storage = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal", readers=1)
    threads_before = {t.name for t in threading.enumerate()}
    with pytest.raises(sqlite3.DatabaseError):
        await storage.start()
    assert not storage._writer.running
    assert "meshd-writer" not in {t.name for t in threading.enumerate()} - threads_before
    with pytest.raises(Unavailable):
        await storage.write(named("never"))


async def test_writes_submitted_in_one_pass_of_the_loop_reach_the_writer_together(store):
    """One hand-over (one `put`, one wake-up of the thread at most) for all the writes that
    one pass of the loop submits, and they run as one batch."""
    batches: list[int] = []
    store.on_batch = lambda records, _fsync: batches.append(records)
    queue = store._writer._queue
    puts = []

    class Counting:  # the writer's queue, counting what is put on it
        def put(self, item) -> None:
            puts.append(item)
            queue.put(item)

        def __getattr__(self, name):
            return getattr(queue, name)

    store._writer._queue = Counting()
    before = store._writer.batches
    names = [f"together-{i}" for i in range(12)]
    # gather starts every write in the same pass of the loop.
    assert await asyncio.gather(*(store.write(named(n)) for n in names)) == names
    assert len(puts) == 1 and len(puts[0]) == 12
    assert store._writer.batches == before + 1
    assert batches == [12]
    assert names_in_rowid_order(store.path) == names
