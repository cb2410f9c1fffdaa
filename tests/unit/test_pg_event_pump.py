"""The event pump's ordering (meshd.store.pg_events.EventPump), on a table held in a list.

The table stands for PostgreSQL's events table under the commit-order rule: `commit(ids)`
makes rows visible (an id never committed is a gap, as after an abort). The pump must hand on
every committed id above where it started exactly once, in id order, whatever order local
batches, notifications (its own included) and catch-ups arrive in; the real table and real
nodes are in tests/api/test_pg_events.py and tests/process/test_nodes_events.py.
"""

from __future__ import annotations

import asyncio

import pytest

from meshd.store import pg_events
from meshd.store.events import Encoded
from tests.support import async_poll


def event(event_id: int) -> Encoded:
    return Encoded("new_message", f'{{"type":"new_message","n":{event_id}}}', None, event_id)


class Table:
    def __init__(self) -> None:
        self.rows: dict[int, Encoded] = {}
        self.reads: list[tuple[int, int]] = []
        self.failing = False

    def commit(self, *ids: int) -> list[Encoded]:
        made = [event(i) for i in ids]
        self.rows.update((e.id, e) for e in made)
        return made

    async def read_range(self, after: int, upto: int, limit: int) -> list[Encoded]:
        await asyncio.sleep(0)  # a real read yields to the loop
        if self.failing:
            raise ConnectionError("the database is unreachable")
        self.reads.append((after, upto))
        return [self.rows[i] for i in sorted(self.rows) if after < i <= upto][:limit]

    async def latest(self) -> int:
        if self.failing:
            raise ConnectionError("the database is unreachable")
        return max(self.rows, default=0)


@pytest.fixture
async def setup():
    table = Table()
    delivered: list[int] = []
    pump = pg_events.EventPump(table.read_range, table.latest,
                               lambda events: delivered.extend(e.id for e in events))
    task = asyncio.create_task(pump.run())
    yield table, pump, delivered
    task.cancel()


async def settled(pump: pg_events.EventPump) -> None:
    await async_poll(lambda: not pump.pending(), 5, "the pump to hand on what it knows")


async def test_local_batches_in_sequence_go_straight_through_without_a_read(setup):
    table, pump, delivered = setup
    pump.local(table.commit(1, 2))
    pump.local(table.commit(3))
    assert delivered == [1, 2, 3]  # synchronously: no task switch, no read
    for own in (2, 3):
        pump.notified(own)  # its own notifications arrive afterwards: ignored
    await settled(pump)
    assert delivered == [1, 2, 3] and table.reads == []


async def test_a_gap_before_a_local_batch_is_read_first(setup):
    table, pump, delivered = setup
    table.commit(1, 2)  # another node's commits, notification not yet here
    pump.local(table.commit(3))
    await settled(pump)
    assert delivered == [1, 2, 3]
    assert table.reads == [(0, 2)]  # only the part not in hand
    pump.notified(2)  # the late notification: nothing twice
    await settled(pump)
    assert delivered == [1, 2, 3]


async def test_an_aborted_id_is_a_gap_read_once_then_passed(setup):
    table, pump, delivered = setup
    pump.local(table.commit(1))
    table.commit()  # id 2 was taken by a transaction that aborted at COMMIT
    pump.local(table.commit(3))
    await settled(pump)
    assert delivered == [1, 3] and table.reads == [(1, 2)]
    pump.local(table.commit(4))
    assert delivered == [1, 3, 4]  # in sequence again: straight through


async def test_local_batches_handed_over_out_of_commit_order(setup):
    """Writer threads hand their events over after COMMIT without a common lock, so a later
    commit's batch can come first: the pump reads the earlier one's rows and drops the late
    hand-over."""
    table, pump, delivered = setup
    first, second = table.commit(1), table.commit(2)
    pump.local(second)
    assert delivered == []  # not before id 1
    await settled(pump)
    pump.local(first)
    await settled(pump)
    assert delivered == [1, 2] and table.reads == [(0, 1)]


async def test_notifications_read_the_range_up_to_their_id(setup):
    table, pump, delivered = setup
    table.commit(1, 2, 3)
    pump.notified(3)
    await settled(pump)
    assert delivered == [1, 2, 3]
    table.commit(4, 5)
    pump.notified(5)
    pump.notified(4)  # out of order (two transactions' notifications): already covered
    await settled(pump)
    assert delivered == [1, 2, 3, 4, 5]


async def test_own_notification_before_the_local_hand_over(setup):
    """The LISTEN connection can be quicker than the hand-over after COMMIT: the pump reads
    the rows and the local batch, when it comes, adds nothing."""
    table, pump, delivered = setup
    committed = table.commit(1, 2)
    pump.notified(2)
    await settled(pump)
    pump.local(committed)
    await settled(pump)
    assert delivered == [1, 2]


async def test_interleaved_nodes_and_local_batches_in_any_arrival_order(setup):
    table, pump, delivered = setup
    batches = [table.commit(i) for i in range(1, 61)]
    mine = batches[::3]  # this node wrote every third; the others are other nodes'
    for n, batch in enumerate(batches):
        if batch in mine:
            pump.local(batch)
        if n % 7 == 0:
            pump.notified(batch[-1].id)
        if n % 11 == 0:
            await asyncio.sleep(0)  # let the pump run between some arrivals
    pump.notified(60)
    await settled(pump)
    assert delivered == list(range(1, 61))


async def test_more_than_a_page_behind_reads_page_by_page(setup):
    table, pump, delivered = setup
    count = pg_events.READ_PAGE * 2 + 5
    table.commit(*range(1, count + 1))
    pump.notified(count)
    await settled(pump)
    assert delivered == list(range(1, count + 1))
    assert len(table.reads) == 3


async def test_catch_up_after_a_reconnect_finds_what_was_never_notified(setup):
    table, pump, delivered = setup
    pump.local(table.commit(1))
    table.commit(2, 3)  # notified while the LISTEN connection was down: lost
    await pump.catch_up()
    await settled(pump)
    assert delivered == [1, 2, 3]


async def test_a_failed_read_is_retried_and_nothing_is_lost_or_doubled(setup):
    table, pump, delivered = setup
    table.commit(1)
    table.failing = True
    pump.local(table.commit(2))  # needs a read of id 1, which fails
    await async_poll(lambda: pump.pending() and not pump._busy, 5, "a failed attempt")
    assert delivered == []
    table.failing = False
    await settled(pump)
    assert delivered == [1, 2]


async def test_start_after_the_newest_id_skips_the_past():
    table = Table()
    table.commit(1, 2, 3)
    delivered: list[int] = []
    pump = pg_events.EventPump(table.read_range, table.latest,
                               lambda events: delivered.extend(e.id for e in events),
                               last_id=await table.latest())
    pump.local(table.commit(4))
    assert delivered == [4]
