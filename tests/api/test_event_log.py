"""Events as a log: every event the hub sends has a row in the events table, written in the
transaction of the change; a WebSocket client resumes with `?since=<id>` and misses nothing,
in order, with no duplicate; a client that does not ask sees the frames as before."""

from __future__ import annotations

import pytest

from meshd.store import event_log
from meshd.store.events import Event, emit_only
from tests.conftest import call, next_event, no_event, ws_connect


async def register(client, name: str) -> str:
    status, body = await call(client, "POST", "/api/agents/register", {"name": name})
    assert status == 200, body
    return body["agentId"]


async def test_each_event_gets_a_row_and_an_id_in_commit_order(client, storage):
    a = await register(client, "log-a")
    b = await register(client, "log-b")
    status, body = await call(client, "POST", "/api/messages",
                              {"from": a, "to": b, "content": "hi"})
    assert status == 200, body
    rows = await storage.read(event_log.after, 0, 100)
    assert [e.type for e in rows] == ["agent_joined", "agent_joined", "new_message"]
    assert [e.id for e in rows] == sorted(e.id for e in rows) and len({e.id for e in rows}) == 3
    assert rows[-1].audience == frozenset({a, b}) and '"hi"' in rows[-1].data
    # A refused write adds no row.
    status, _ = await call(client, "POST", "/api/agents/nobody/heartbeat", {})
    assert status == 404
    assert await storage.read(event_log.latest_id) == rows[-1].id


async def test_a_client_resumes_after_the_last_id_it_saw_in_order(client):
    a = await register(client, "resume-a")
    ws = await ws_connect(client, "/ws?since=0")
    joined = await next_event(ws, "agent_joined")  # from the log, with its id
    assert joined["agent"]["id"] == a and isinstance(joined["eventId"], int)
    b = await register(client, "resume-b")
    live = await next_event(ws, "agent_joined")
    assert live["agent"]["id"] == b and live["eventId"] > joined["eventId"]
    await ws.close()

    # Offline: two messages go by; back with the last id seen, both arrive, in order, once.
    for n in range(2):
        status, _ = await call(client, "POST", "/api/messages",
                               {"from": a, "to": b, "content": f"missed {n}"})
        assert status == 200
    ws = await ws_connect(client, f"/ws?since={live['eventId']}")
    got = [await next_event(ws, "new_message") for _ in range(2)]
    assert [f["message"]["content"] for f in got] == ["missed 0", "missed 1"]
    assert got[0]["eventId"] < got[1]["eventId"]
    status, _ = await call(client, "POST", "/api/messages",
                           {"from": b, "to": a, "content": "live"})
    frame = await next_event(ws, "new_message")
    assert frame["message"]["content"] == "live" and frame["eventId"] > got[1]["eventId"]
    await no_event(ws, "new_message")  # nothing twice
    await ws.close()


async def test_frames_are_unchanged_for_a_client_that_does_not_resume(client):
    ws = await ws_connect(client)
    await register(client, "plain")
    frame = await next_event(ws, "agent_joined")
    assert "eventId" not in frame
    await ws.close()


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "9" * 30])
async def test_a_bad_since_is_a_400(client, since):
    status, body = await call(client, "GET", f"/ws?since={since}")
    assert (status, body) == (400, {"error": "since must be a non-negative event id"})


async def test_an_announced_transition_gets_a_row_and_old_rows_are_pruned(storage):
    for n in range(5):
        await storage.write(emit_only, Event("catastrophe_alert", {"n": n}))
    rows = await storage.read(event_log.after, 0, 100)
    assert [e.type for e in rows] == ["catastrophe_alert"] * 5
    assert await storage.write(event_log.prune, 2) == 3
    kept = await storage.read(event_log.after, 0, 100)
    assert [e.id for e in kept] == [e.id for e in rows[-2:]]
