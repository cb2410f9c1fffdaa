"""The SDK's SQLite state: the offline queue survives a reopen and keeps its order, refused
messages leave it, the last-sent chain, and the delivered set."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.client.dedupe import Delivered
from meshd.client.queue import Outbox
from meshd.client.records import Outgoing
from meshd.client.state import StateDB


def message(n: int, to: str = "b", prev: str | None = None) -> Outgoing:
    return Outgoing(client_id=f"c{n}", from_agent="a", to_agent=to, content=f"m{n}",
                    message_type="direct", created_at="2026-01-01T00:00:00.000Z", prev=prev)


@pytest.fixture
async def db(tmp_path):
    state = await StateDB.open(tmp_path / "state")
    yield state
    await state.close()


async def drain(outbox: Outbox) -> list[str]:
    taken = []
    while (first := await outbox.first()) is not None:
        taken.append(first.client_id)
        await outbox.remove(first.seq)
    return taken


async def test_the_queue_survives_a_reopen_in_order(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    outbox = Outbox(db)
    for n in range(5):
        queued = await outbox.push(message(n, prev=f"c{n - 1}" if n else None))
        assert queued.seq is not None
    await db.close()

    db = await StateDB.open(tmp_path / "state")
    try:
        outbox = Outbox(db)
        assert await outbox.count() == 5
        first = await outbox.first()
        assert first == replace(message(0), seq=first.seq)
        assert await drain(outbox) == [f"c{n}" for n in range(5)]
        assert await outbox.count() == 0
    finally:
        await db.close()


async def test_removing_one_message_keeps_the_others_in_order(db):
    outbox = Outbox(db)
    seqs = [(await outbox.push(message(n))).seq for n in range(4)]
    await outbox.remove(seqs[0])
    await outbox.remove(seqs[2])
    assert await drain(outbox) == ["c1", "c3"]


async def test_a_client_id_is_queued_once(db):
    outbox = Outbox(db)
    await outbox.push(message(1))
    with pytest.raises(Exception, match="UNIQUE"):
        await outbox.push(message(1))
    assert await outbox.count() == 1


async def test_a_refused_message_moves_to_rejected(db):
    outbox = Outbox(db)
    first = await outbox.push(message(1))
    await outbox.push(message(2))
    await outbox.reject(first, 400, "bad")
    assert await drain(outbox) == ["c2"]
    (row,) = await outbox.rejected()
    assert (row["client_id"], row["status"], row["error"]) == ("c1", 400, "bad")


async def test_the_last_sent_message_per_recipient(db):
    outbox = Outbox(db)
    assert await outbox.last_sent("b") is None
    await outbox.push(message(1, to="b"))
    await outbox.note_sent("c", "c9")
    await outbox.push(message(2, to="b"))
    assert await outbox.last_sent("b") == "c2"
    assert await outbox.last_sent("c") == "c9"


async def test_the_delivered_set_survives_a_reopen(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    delivered = Delivered(db)
    assert await delivered.add("a", "k1") is True
    assert await delivered.add("a", "k1") is False
    await db.close()

    db = await StateDB.open(tmp_path / "state")
    try:
        delivered = Delivered(db)
        assert await delivered.contains("a", "k1")
        assert not await delivered.contains("b", "k1")  # keys are per sender
        assert not await delivered.contains("a", "k2")
    finally:
        await db.close()


async def test_old_deliveries_are_pruned(db):
    delivered = Delivered(db)
    await delivered.add("a", "k1")
    assert await delivered.prune(retention=3600) == 0
    assert await delivered.prune(retention=-1) == 1
    assert not await delivered.contains("a", "k1")


async def test_settings_are_kept(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    await db.set("agent_id", "x")
    await db.set("agent_id", "y")
    await db.close()
    db = await StateDB.open(tmp_path / "state")
    try:
        assert await db.get("agent_id") == "y"
        assert await db.get("missing") is None
    finally:
        await db.close()
