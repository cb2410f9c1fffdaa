"""Reads never wait on the writer: while a write transaction holds SQLite's write lock (here,
parked mid-transaction), reads on the reader pool still answer, with the last committed
state."""

from __future__ import annotations

import asyncio
import threading

from meshd.store import agents, messages

NOW = "2026-01-01 00:00:00"


async def test_reads_answer_while_a_write_holds_the_lock(storage):
    await storage.write(agents.register, "before", None, None, NOW)
    entered, release = threading.Event(), threading.Event()

    def parked_write(tx):
        agents.register(tx, "during", None, None, NOW)
        entered.set()
        release.wait(30)

    write = asyncio.create_task(storage.write(parked_write))
    try:
        assert await asyncio.to_thread(entered.wait, 30)
        # Each read would hang until `release` if it waited on the writer (deadline only).
        listed = await asyncio.wait_for(storage.read(agents.list_all), 20)
        assert [a["name"] for a in listed] == ["before"]  # the open write is not visible
        inbox = await asyncio.wait_for(
            storage.read(messages.inbox, listed[0]["id"], None, False, 50, 0), 20)
        assert inbox == []
    finally:
        release.set()
        await write
    assert {a["name"] for a in await storage.read(agents.list_all)} == {"before", "during"}
