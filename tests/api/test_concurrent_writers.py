"""Read-then-write logic under concurrent writers (register by name, idempotent send by
clientId, memory version bumps).

On SQLite one writer serializes them; on PostgreSQL writes run at once on several connections.
The HTTP tests fan out many identical requests on both backends. The forced-race tests hold two
PostgreSQL transactions between their read and their first write (a barrier), so both have read
before either writes: the interleaving that loses updates or inserts twice at READ COMMITTED.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from meshd.store import agents, groups, memory, messages
from tests.conftest import call, register

FAN_OUT = 24


async def rows(storage, sql: str, params=()) -> list[dict]:
    return await storage.read(lambda db: db.query(sql, params))


async def test_concurrent_first_registrations_make_one_agent(client, storage):
    results = await asyncio.gather(*(
        call(client, "POST", "/api/agents/register", {"name": "same", "endpoint": f"e{i}"})
        for i in range(FAN_OUT)))
    assert {status for status, _ in results} == {200}
    assert len({body["agentId"] for _, body in results}) == 1
    assert len(await rows(storage, "SELECT id FROM agents WHERE name = ?", ("same",))) == 1


async def test_concurrent_sends_with_one_client_id_store_one_message(client, storage):
    body = {"from": "a", "to": "b", "content": "once", "clientId": "c-1"}
    results = await asyncio.gather(*(call(client, "POST", "/api/messages", body)
                                     for _ in range(FAN_OUT)))
    assert {status for status, _ in results} == {200}, results
    assert len({b["messageId"] for _, b in results}) == 1
    assert len(await rows(storage, "SELECT id FROM messages")) == 1


async def test_concurrent_memory_writes_get_consecutive_versions(client, storage):
    _, created = await call(client, "POST", "/api/groups", {"name": "G", "createdBy": "c"})
    group_id = created["groupId"]
    agent_id = await register(client, "writer")
    await call(client, "POST", f"/api/groups/{group_id}/members", {"agentId": agent_id})
    results = await asyncio.gather(*(
        call(client, "POST", f"/api/groups/{group_id}/memory",
             {"agentId": agent_id, "key": "k", "value": i}) for i in range(FAN_OUT)))
    assert {status for status, _ in results} == {200}, results
    assert sorted(b["version"] for _, b in results) == list(range(1, FAN_OUT + 1))
    _, history = await call(client, "GET", f"/api/groups/{group_id}/memory/k/history")
    assert [v["version"] for v in history["versions"]] == list(range(1, FAN_OUT + 1))


# -- forced interleavings (PostgreSQL: SQLite has a single writer, nothing to interleave) -----


class _PauseBeforeFirstWrite:
    """A Tx whose first `execute` waits until the other racer has done its reads too."""

    def __init__(self, tx, barrier: threading.Barrier) -> None:
        self._tx = tx
        self._barrier: threading.Barrier | None = barrier

    def __getattr__(self, name):
        return getattr(self._tx, name)

    def execute(self, sql, params=()):
        if self._barrier is not None:
            barrier, self._barrier = self._barrier, None
            barrier.wait()
        return self._tx.execute(sql, params)


def racing(fn, barrier: threading.Barrier):
    """`fn` whose first attempt on each thread pauses between its reads and its first write;
    a retry (on a fresh snapshot) runs straight through."""
    attempted = threading.local()

    def run(tx, *args):
        if getattr(attempted, "done", False):
            return fn(tx, *args)
        attempted.done = True
        return fn(_PauseBeforeFirstWrite(tx, barrier), *args)

    return run


async def race(storage, fn, *args):
    if not hasattr(storage, "url"):
        pytest.skip("SQLite runs one write at a time: there is no interleaving to force")
    barrier = threading.Barrier(2, timeout=20)
    return await asyncio.gather(storage.write(racing(fn, barrier), *args),
                                storage.write(racing(fn, barrier), *args))


NOW = "2026-01-01 00:00:00"


async def test_forced_race_on_register_by_name(storage):
    (first, existed1), (second, existed2) = await race(
        storage, agents.register, "racer", "http://x", None, NOW)
    assert first == second and sorted([existed1, existed2]) == [False, True]
    assert len(await rows(storage, "SELECT id FROM agents WHERE name = 'racer'")) == 1


async def test_forced_race_on_idempotent_send(storage):
    message = messages.Outgoing("a", "b", "hello", None, client_id="c-9")
    (row1, replayed1), (row2, replayed2) = await race(storage, messages.send, message, NOW)
    assert row1["id"] == row2["id"] and sorted([replayed1, replayed2]) == [False, True]
    assert len(await rows(storage, "SELECT id FROM messages")) == 1


async def test_forced_race_on_first_memory_write(storage):
    agent_id, _ = await storage.write(agents.register, "w", None, None, NOW)
    group_id = await storage.write(
        lambda tx: groups.create(tx, "G", None, "{}", agent_id, NOW))
    await storage.write(lambda tx: groups.add_member(tx, group_id, agent_id, "member", NOW))
    results = await race(storage, memory.upsert, group_id, agent_id, "new", '"v"', None, NOW)
    assert sorted(version for _id, version, _members in results) == [1, 2]
    history = await rows(storage, "SELECT version FROM memory_history ORDER BY version")
    assert [r["version"] for r in history] == [1, 2]


async def test_forced_race_on_memory_version_bump(storage):
    agent_id, _ = await storage.write(agents.register, "w", None, None, NOW)
    group_id = await storage.write(
        lambda tx: groups.create(tx, "G", None, "{}", agent_id, NOW))
    await storage.write(lambda tx: groups.add_member(tx, group_id, agent_id, "member", NOW))
    await storage.write(memory.upsert, group_id, agent_id, "k", '"v1"', None, NOW)
    results = await race(storage, memory.upsert, group_id, agent_id, "k", '"v"', None, NOW)
    assert sorted(version for _id, version, _members in results) == [2, 3]
    history = await rows(storage, "SELECT version FROM memory_history ORDER BY version")
    assert [r["version"] for r in history] == [1, 2, 3]
