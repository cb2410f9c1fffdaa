"""Events across nodes on a real PostgreSQL database: two storages (two nodes' workers, in one
test process) on one database, each with its own LISTEN connection and event pump.

Every event committed through either reaches both sinks exactly once and in id order; event
ids are taken in commit order under the events lock, which writes without events never take;
a LISTEN connection that is cut catches up with what it missed.
"""

from __future__ import annotations

import asyncio
import itertools

import psycopg
import pytest

from meshd.store import agents as agents_store
from meshd.store import event_log, pg_events
from meshd.store.events import Encoded, Event, emit_only
from meshd.worker.serve import open_storage
from tests.conftest import make_settings
from tests.support import async_poll

_names = itertools.count(1)


@pytest.fixture
async def two_nodes(tmp_path, pg_cluster):
    """Two started storages on one fresh database, each recording what its sink gets."""
    name = f"events{next(_names)}"
    url = pg_cluster.clone_template(name)
    nodes = []
    for n in range(2):
        store = open_storage(make_settings(tmp_path, f"data-{n}", database=url))
        await store.start()
        got: list[Encoded] = []
        store.set_event_sink(got.extend)
        nodes.append((store, got))
    yield url, nodes
    for store, _got in nodes:
        await store.close()
    pg_cluster.drop_database(name)


def ids(events: list[Encoded]) -> list[int]:
    return [e.id for e in events]


async def test_every_event_reaches_every_node_once_in_id_order(two_nodes):
    _url, [(a, got_a), (b, got_b)] = two_nodes

    async def writer(store, who: str, count: int) -> None:
        for n in range(count):
            await store.write(emit_only, Event("broadcast", {"from": who, "n": n}))

    await asyncio.gather(*(writer(store, f"{label}{w}", 40) for w in range(3)
                           for store, label in ((a, "a"), (b, "b"))))
    table = await a.read(event_log.after, 0, 10_000)
    assert len(table) == 240
    await async_poll(lambda: len(got_a) >= 240 and len(got_b) >= 240, 15,
                     "both sinks to get every event")
    assert ids(got_a) == ids(table) == ids(got_b)  # once each, in id order, on both nodes
    for who in ("a0", "a1", "a2", "b0", "b1", "b2"):  # each writer's own order kept
        mine = [e.data for e in got_b if f'"from":"{who}"' in e.data]
        assert mine == [f'{{"type":"broadcast","from":"{who}","n":{n}}}' for n in range(40)]
    # Most of a node's own events went straight through; the other node's were read.
    assert a.event_pump.reads > 0 and b.event_pump.reads > 0


async def test_a_cut_listen_connection_catches_up_with_what_it_missed(two_nodes):
    url, [(a, got_a), (b, got_b)] = two_nodes
    listener = b._listener
    await async_poll(lambda: listener.connected.is_set(), 10, "B listening")
    with psycopg.connect(url, autocommit=True) as admin:
        cut = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE query = %s AND datname = current_database()",
                            (f"LISTEN {pg_events.CHANNEL}",)).fetchall()
        assert len(cut) == 2  # both nodes' LISTEN connections
    for n in range(20):
        await a.write(emit_only, Event("broadcast", {"n": n}))
    await async_poll(lambda: listener.connections >= 2, 15, "B listening again")
    await async_poll(lambda: len(got_b) >= 20, 15, "B to catch up")
    assert ids(got_b) == ids(got_a) == ids(await a.read(event_log.after, 0, 100))


async def test_ids_wait_for_the_events_lock_and_writes_without_events_do_not(two_nodes):
    url, [(a, got_a), (_b, _got_b)] = two_nodes
    await a.write(emit_only, Event("broadcast", {"n": 0}))
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (pg_events.EVENTS_LOCK,))
        waiting = asyncio.create_task(a.write(emit_only, Event("broadcast", {"n": 1})))

        def blocked_on_the_lock() -> bool:
            return bool(holder.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND objid = %s", (pg_events.EVENTS_LOCK & 0xFFFFFFFF,)).fetchall())

        await async_poll(blocked_on_the_lock, 10, "the event write waiting on the lock")
        # A write that emits nothing (the store's bare registration) is not held up.
        agent_id, existed = await a.write(agents_store.register, "lock-probe", None, "[]",
                                          "2026-01-01 00:00:00")
        assert agent_id and not existed
        assert not waiting.done() and len(got_a) == 1
        holder.execute("SELECT pg_advisory_unlock(%s)", (pg_events.EVENTS_LOCK,))
    await waiting
    await async_poll(lambda: len(got_a) >= 2, 10, "the event after the lock")
    assert ids(got_a) == ids(await a.read(event_log.after, 0, 100))


async def test_a_reader_resuming_after_its_last_id_never_skips_one(two_nodes):
    """The `?since=` bug this fixes: with ids taken before COMMIT, a higher id could commit
    first, a reader resuming after it would never see the lower one. Concurrent writers on
    both nodes; a reader polls "after the last id I saw" as fast as it can."""
    _url, [(a, _got_a), (b, _got_b)] = two_nodes
    done = asyncio.Event()
    seen: list[int] = []

    async def writer(store, n: int) -> None:
        for i in range(30):
            await store.write(emit_only, Event("broadcast", {"w": n, "i": i}))

    async def reader() -> None:
        while True:
            finished = done.is_set()
            batch = await b.read(event_log.after, seen[-1] if seen else 0, 10_000)
            seen.extend(e.id for e in batch)
            if finished:
                return

    polling = asyncio.create_task(reader())
    await asyncio.gather(*(writer(store, n) for n in range(8) for store in (a, b)))
    done.set()
    await polling
    assert seen == ids(await a.read(event_log.after, 0, 10_000))
    assert len(seen) == 480
