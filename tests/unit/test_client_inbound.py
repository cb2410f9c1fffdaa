"""Delivery to the handler: once per (sender, client id), and a spooled message held until
its predecessor was delivered (or the hold times out)."""

from __future__ import annotations

import pytest

from meshd.client.dedupe import Delivered
from meshd.client.inbound import Inbound, Outcome
from meshd.client.records import Message, Via
from meshd.client.state import StateDB


def message(n: int, via: Via = Via.SPOOL, sender: str = "a") -> Message:
    return Message(client_id=f"{sender}{n}", from_agent=sender, to_agent="b",
                   content=f"{sender}{n}", message_type="direct", created_at=None, via=via)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    got: list[Message] = []

    async def handler(m: Message) -> None:
        got.append(m)

    clock = Clock()
    inbound = Inbound(Delivered(db), handler, hold_timeout=30.0, clock=clock)
    yield inbound, got, clock
    await db.close()


async def test_a_message_is_delivered_once_whichever_way_it_comes(setup):
    inbound, got, _ = setup
    settled = []
    assert await inbound.offer(message(1, Via.SPOOL), settle=lambda: settled.append(1)) \
        == Outcome.DELIVERED
    assert await inbound.offer(message(1, Via.SERVER)) == Outcome.DUPLICATE
    assert await inbound.offer(message(1, Via.CATCHUP), settle=lambda: settled.append(2)) \
        == Outcome.DUPLICATE
    assert [m.via for m in got] == [Via.SPOOL]
    assert settled == [1, 2]


async def test_the_delivered_set_is_per_sender(setup):
    inbound, got, _ = setup
    m = message(1)
    other = Message(client_id=m.client_id, from_agent="z", to_agent="b", content="z",
                    message_type="direct", created_at=None, via=Via.SERVER)
    await inbound.offer(m)
    assert await inbound.offer(other) == Outcome.DELIVERED
    assert len(got) == 2


async def test_messages_without_client_id_are_keyed_by_server_id(setup):
    inbound, got, _ = setup
    plain = Message(client_id=None, from_agent="curl", to_agent="b", content="x",
                    message_type="direct", created_at=None, via=Via.SERVER, id="srv-1")
    assert await inbound.offer(plain) == Outcome.DELIVERED
    assert await inbound.offer(plain) == Outcome.DUPLICATE


async def test_a_spooled_message_waits_for_its_predecessor(setup):
    inbound, got, _ = setup
    await inbound.offer(message(1, Via.SERVER))
    settled = []
    # a3 and a4 come through the spool before a2, which the WebSocket lost.
    assert await inbound.offer(message(4), prev="a3", settle=lambda: settled.append(4)) \
        == Outcome.HELD
    assert await inbound.offer(message(3), prev="a2", settle=lambda: settled.append(3)) \
        == Outcome.HELD
    assert inbound.held == 2 and [m.content for m in got] == ["a1"]
    assert await inbound.offer(message(2, Via.CATCHUP)) == Outcome.DELIVERED
    assert [m.content for m in got] == ["a1", "a2", "a3", "a4"]
    assert inbound.held == 0
    assert settled == [3, 4]


async def test_a_predecessor_already_delivered_releases_at_once(setup):
    inbound, got, _ = setup
    await inbound.offer(message(1, Via.SERVER))
    assert await inbound.offer(message(2), prev="a1") == Outcome.DELIVERED


async def test_a_held_message_that_arrives_another_way_is_not_delivered_twice(setup):
    inbound, got, _ = setup
    settled = []
    await inbound.offer(message(3), prev="a2", settle=lambda: settled.append("spool copy"))
    await inbound.offer(message(2, Via.CATCHUP))
    await inbound.offer(message(3, Via.CATCHUP))
    assert [m.content for m in got] == ["a2", "a3"]
    assert settled == ["spool copy"]


async def test_a_hold_ends_after_its_timeout(setup):
    inbound, got, clock = setup
    await inbound.offer(message(5), prev="a4")
    clock.now = 29.0
    assert await inbound.release_expired() == 0
    clock.now = 30.0
    assert await inbound.release_expired() == 1
    assert [m.content for m in got] == ["a5"]
    assert inbound.held == 0


async def test_a_failing_handler_does_not_stop_delivery(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    calls = []

    async def handler(m: Message) -> None:
        calls.append(m.content)
        raise RuntimeError("boom")

    inbound = Inbound(Delivered(db), handler)
    try:
        assert await inbound.offer(message(1)) == Outcome.DELIVERED
        assert await inbound.offer(message(1)) == Outcome.DUPLICATE  # not retried forever
        assert await inbound.offer(message(2), prev="a1") == Outcome.DELIVERED
        assert calls == ["a1", "a2"]
    finally:
        await db.close()
