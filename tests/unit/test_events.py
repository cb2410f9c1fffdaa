"""Events are emitted in one place: declared by the write, encoded inside it (so an event that
cannot be encoded fails the write with a 400 and nothing is committed), and handed to the sink
after COMMIT in commit order; a write that rolls back emits nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshd.errors import Invalid
from meshd.store import agents as agents_store
from meshd.store.events import Encoded, Event, emitting


@pytest.fixture
def delivered(storage) -> list[Encoded]:
    got: list[Encoded] = []
    storage.set_event_sink(got.extend)
    return got


def register(name: str, payload: dict | None = None):
    """A write registering `name` that declares an event (payload defaults to the id)."""
    return emitting(agents_store.register, lambda result: [
        Event("agent_joined", payload if payload is not None else {"agent": result[0]},
              [name])])


async def names(storage) -> list[str]:
    return [r["name"] for r in await storage.read(agents_store.list_all, 100, 0)]


async def test_a_committed_write_delivers_its_encoded_event(storage, delivered):
    agent_id, _ = await storage.write(register("a"), "a", None, None, "2026-01-01 00:00:00")
    (event,) = delivered
    assert event.type == "agent_joined" and event.audience == frozenset({"a"})
    assert json.loads(event.data) == {"type": "agent_joined", "agent": agent_id}


async def test_an_unencodable_event_fails_its_write_before_commit(storage, delivered):
    with pytest.raises(Invalid) as refused:
        await storage.write(register("bad", {"value": object()}), "bad", None, None,
                            "2026-01-01 00:00:00")
    assert refused.value.status == 400 and "cannot be encoded" in refused.value.message
    assert "bad" not in await names(storage)  # rolled back, not committed then failed
    assert delivered == []


async def test_events_follow_commit_order_and_failed_writes_emit_nothing(storage, delivered):
    def fails(tx, *args):
        tx.emit(Event("never", {}))
        raise Invalid("refused")

    results = await asyncio.gather(
        storage.write(register("one"), "one", None, None, "2026-01-01 00:00:00"),
        storage.write(emitting(fails, list)),
        storage.write(register("two"), "two", None, None, "2026-01-01 00:00:00"),
        return_exceptions=True)
    assert isinstance(results[1], Invalid)
    assert [e.audience for e in delivered] == [frozenset({"one"}), frozenset({"two"})]
    assert sorted(await names(storage)) == ["one", "two"]


async def test_a_trial_write_emits_nothing(storage, delivered):
    await storage.trial(register("trial"), "trial", None, None, "2026-01-01 00:00:00")
    assert delivered == [] and "trial" not in await names(storage)


async def test_without_a_sink_writes_still_commit(storage):
    await storage.write(register("quiet"), "quiet", None, None, "2026-01-01 00:00:00")
    assert await names(storage) == ["quiet"]
