"""The storage's event and table-counter contract, on both backends: events a write emits
reach the sink once, after COMMIT, in commit order; a write that rolls back emits nothing
and moves no counter; on PostgreSQL a write retried after a serialization failure hands on
only its committing attempt's events.
"""

from __future__ import annotations

import threading

from meshd.errors import Invalid
from meshd.store import agents
from meshd.store.events import Event
from tests.api.test_concurrent_writers import race, rows

NOW = "2026-01-01 00:00:00"


def collect(storage) -> list[dict]:
    """Install a sink that records each delivered event."""
    seen: list[dict] = []

    def sink(events) -> None:
        for event in events:
            seen.append({"data": event.data, "type": event.type})

    storage.set_event_sink(sink)
    return seen


def register_and_emit(tx, name: str):
    agent_id, existed = agents.register(tx, name, None, None, NOW)
    tx.emit(Event("agent_registered", {"name": name, "existed": existed}))
    return agent_id, existed


async def test_committed_writes_deliver_their_events_in_order(storage):
    seen = collect(storage)
    before = storage.versions.of(["agents"])
    untouched = storage.versions.of(["messages"])
    for name in ("one", "two", "three"):
        await storage.write(register_and_emit, name)
    assert [e["type"] for e in seen] == ["agent_registered"] * 3
    assert [e["data"] for e in seen] == [
        f'{{"type":"agent_registered","name":"{n}","existed":false}}'
        for n in ("one", "two", "three")]
    assert storage.versions.of(["agents"]) == before + 3
    assert storage.versions.of(["messages"]) == untouched


async def test_a_rolled_back_write_emits_nothing_and_moves_no_counter(storage):
    seen = collect(storage)
    before = storage.versions.of(["agents"])

    def fails_after_emitting(tx):
        register_and_emit(tx, "ghost")
        raise Invalid("refused after the insert")

    try:
        await storage.write(fails_after_emitting)
    except Invalid:
        pass
    else:
        raise AssertionError("the write should have failed")
    assert seen == []
    assert storage.versions.of(["agents"]) == before
    assert await rows(storage, "SELECT id FROM agents WHERE name = 'ghost'") == []


async def test_a_trial_write_emits_nothing(storage):
    seen = collect(storage)
    before = storage.versions.of(["agents"])
    await storage.trial(register_and_emit, "trial")
    assert seen == [] and storage.versions.of(["agents"]) == before


async def test_a_retried_write_delivers_only_its_committed_attempt(storage):
    """Two registrations of one name, both read before either writes: PostgreSQL aborts one
    (40001) and it runs again, finding the other's row. Three attempts, two commits: the sink
    sees exactly two events, and the retried one says `existed`."""
    seen = collect(storage)
    attempts = []
    lock = threading.Lock()

    def counted(tx, name):
        with lock:
            attempts.append(name)
        return register_and_emit(tx, name)

    results = await race(storage, counted, "racer")  # skips on SQLite: no interleaving
    assert len(attempts) == 3, "one of the two must have been retried"
    assert sorted(existed for _id, existed in results) == [False, True]
    assert sorted(e["data"] for e in seen) == [
        '{"type":"agent_registered","name":"racer","existed":false}',
        '{"type":"agent_registered","name":"racer","existed":true}']
