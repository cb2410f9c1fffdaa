"""The SDK against the real app on a loopback server: identity, messages, heartbeats, files,
updates, and an outage of the server (stopped and started again on the same port)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshd.api.app import make_app
from meshd.api.keys import HUB
from meshd.client import Backoff, MeshClient, Message, Rejected, Via
from meshd.client.state import StateDB
from tests.conftest import API_KEY, call
from tests.support import async_poll

FAST = Backoff(base=0.05, cap=0.3)


class Inbox:
    """A handler that records what it got."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def contents(self) -> list[str]:
        return [m.content for m in self.messages]


@pytest.fixture
async def server(aiohttp_server, app):
    return await aiohttp_server(app)


def base_url(server) -> str:
    return str(server.make_url("")).rstrip("/")


def make_client(server, tmp_path: Path, name: str, **kwargs) -> MeshClient:
    kwargs.setdefault("heartbeat_interval", 0.2)
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("spool_poll_interval", 0.05)
    return MeshClient(base_url(server), API_KEY, name, state_dir=tmp_path / name, **kwargs)


async def test_identity_is_kept_by_name_and_in_the_state_dir(server, tmp_path):
    async with make_client(server, tmp_path, "alpha", capabilities=["x"]) as first:
        agent_id = first.agent_id
    fresh = make_client(server, tmp_path / "other", "alpha")
    async with fresh:
        assert fresh.agent_id == agent_id  # the server keeps the identity by name
    db = await StateDB.open(tmp_path / "alpha")
    try:
        assert await db.get("agent_id") == agent_id
        assert await db.get("name") == "alpha"
    finally:
        await db.close()


async def test_a_state_dir_belongs_to_one_agent(server, tmp_path):
    async with make_client(server, tmp_path, "alpha"):
        pass
    other = MeshClient(base_url(server), API_KEY, "beta", state_dir=tmp_path / "alpha")
    with pytest.raises(ValueError, match="alpha"):
        await other.start()
    await other.close()


async def test_messages_reach_the_handler_once_with_their_client_id(server, client, tmp_path):
    got = Inbox()
    async with make_client(server, tmp_path, "a") as a, \
            make_client(server, tmp_path, "b", on_message=got) as b:
        await async_poll(lambda: b.events.connected, 5, "b's WebSocket", 0.02)
        ids = [await a.send(b.agent_id, f"m{i}") for i in range(5)]
        await async_poll(lambda: len(got.messages) == 5, 5, "5 messages", 0.02)
        assert got.contents() == [f"m{i}" for i in range(5)]
        assert [m.client_id for m in got.messages] == ids
        assert {m.via for m in got.messages} == {Via.SERVER}
        status, rows = await call(client, "GET", f"/api/messages/{b.agent_id}")
        assert status == 200
        assert sorted(r["client_id"] for r in rows) == sorted(ids)


async def test_messages_sent_before_the_socket_opens_are_caught_up(server, tmp_path):
    got = Inbox()
    async with make_client(server, tmp_path, "b", on_message=got) as b:
        b_id = b.agent_id
    async with make_client(server, tmp_path, "a") as a:
        await a.send(b_id, "while b was away")
    async with make_client(server, tmp_path, "b", on_message=got):
        await async_poll(lambda: got.messages, 5, "the caught-up message", 0.02)
        await asyncio.sleep(0.2)  # a second delivery would come now
    assert [(m.content, m.via) for m in got.messages] == [("while b was away", Via.CATCHUP)]


async def test_a_restarted_receiver_does_not_get_a_message_twice(server, tmp_path):
    got = Inbox()
    async with make_client(server, tmp_path, "a") as a:
        async with make_client(server, tmp_path, "b", on_message=got) as b:
            await async_poll(lambda: b.events.connected, 5, "b's WebSocket", 0.02)
            await a.send(b.agent_id, "once")
            await async_poll(lambda: got.messages, 5, "the message", 0.02)
        async with make_client(server, tmp_path, "b", on_message=got) as b:
            await async_poll(lambda: b.events.connections, 5, "b's WebSocket", 0.02)
            await asyncio.sleep(0.2)
    assert got.contents() == ["once"]


async def test_heartbeats_carry_process_metrics(server, client, tmp_path):
    async with make_client(server, tmp_path, "a") as a:
        async def reported():
            status, body = await call(client, "GET", f"/api/agents/{a.agent_id}/health")
            return status == 200 and body["uptimeSeconds"] is not None and body

        await async_poll(reported, 5, "a health row with metrics", 0.02)
        body = await reported()
        assert body["status"] == "healthy"
        assert body["memoryUsage"] > 0
        assert body["cpuUsage"] >= 0


async def test_files_upload_and_raw_download(server, tmp_path):
    data = bytes(range(256)) * 10
    async with make_client(server, tmp_path, "a") as a:
        info = await a.upload(data, "blob.bin", file_type="application/octet-stream")
        assert info.size == len(data)
        assert await a.download(info.id) == data
        assert [f["id"] for f in await a.files(a.agent_id)] == [info.id]
        await a.delete_file(info.id)
        assert await a.files(a.agent_id) == []


async def test_updates_are_acknowledged_by_the_hook(server, client, tmp_path):
    seen: list[dict] = []

    async def on_update(update: dict) -> str:
        seen.append(update)
        return "accepted"

    async with make_client(server, tmp_path, "a", version="2.1.0", on_update=on_update) as a:
        await async_poll(lambda: a.events.connected, 5, "the WebSocket", 0.02)
        status, body = await call(client, "POST", "/api/updates",
                                  {"version": "2.1.0", "updateType": "feature", "title": "t"})
        assert status == 200, body
        update_id = body["updateId"]

        async def acknowledged():
            _, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments")
            return rows

        await async_poll(acknowledged, 5, "the acknowledgment", 0.02)
        (row,) = await acknowledged()
        assert (row["agent_id"], row["status"], row["agent_version"]) == (
            a.agent_id, "accepted", "2.1.0")
        assert [u["id"] for u in seen] == [update_id]


async def test_a_refused_message_raises_and_is_not_queued(server, tmp_path):
    async with make_client(server, tmp_path, "a") as a:
        with pytest.raises(TypeError):
            await a.send("someone", "")
        a.http.headers["X-API-Key"] = "wrong"
        a.http.token = None  # its token would still be good
        await a.http.close()  # the session carries the headers it was made with
        with pytest.raises(Rejected) as err:
            await a.send("someone", "hello")
        assert err.value.status == 401
        assert await a.pending() == 0


async def test_an_outage_queues_messages_and_replays_them_once(
        aiohttp_server, settings, storage, tmp_path):
    first = await aiohttp_server(make_app(settings, storage))
    port = first.port
    got = Inbox()
    async with make_client(first, tmp_path, "a") as a, \
            make_client(first, tmp_path, "b", on_message=got) as b:
        await async_poll(lambda: b.events.connected, 5, "b's WebSocket", 0.02)
        await a.send(b.agent_id, "before")
        await async_poll(lambda: len(got.messages) == 1, 5, "the first message", 0.02)
        await first.close()
        during = [await a.send(b.agent_id, f"during {i}") for i in range(3)]
        assert not a.online
        assert await a.pending() == 3
        await aiohttp_server(make_app(settings, storage), port=port)
        await asyncio.wait_for(a.wait_online(), 10)
        assert await a.pending() == 0
        await async_poll(lambda: len(got.messages) == 4, 5, "the queued messages", 0.02)
        await asyncio.sleep(0.2)
        assert got.contents() == ["before", "during 0", "during 1", "during 2"]
        assert [m.client_id for m in got.messages[1:]] == during
        rows = await b.inbox()
        assert len(rows) == len({m.client_id for m in rows}) == 4


async def drop_websocket(app, agent_id: str) -> None:
    """Close an agent's socket from the server side: the events it misses are lost."""
    hub = app[HUB]
    for ws_client in list(hub.clients):
        if ws_client.agent_id == agent_id:
            await ws_client.ws.close()
    await async_poll(lambda: all(c.agent_id != agent_id for c in hub.clients), 5, "the socket gone", 0.02)


@pytest.mark.parametrize("respool_window", [5.0, 0.0])
async def test_order_holds_when_the_spool_overtakes_a_lost_event(
        aiohttp_server, settings, storage, tmp_path, respool_window):
    """m1 reaches the server while b's socket is down; then the server stops and m2 goes
    through the spool. b must not handle m2 before m1: a respools m1 (recently sent), or,
    without that, b holds m2 until the inbox gives it m1."""
    app = make_app(settings, storage)
    server = await aiohttp_server(app)
    port = server.port
    got = Inbox()
    spool = tmp_path / "spool"
    # b's socket, once dropped, stays down until woken: the lost event is not caught up.
    async with make_client(server, tmp_path, "a", spool_dir=spool,
                           respool_window=respool_window) as a, \
            make_client(server, tmp_path, "b", spool_dir=spool, on_message=got,
                        backoff=Backoff(base=60, cap=60)) as b:
        await async_poll(lambda: b.events.connected, 5, "b's WebSocket", 0.02)
        await drop_websocket(app, b.agent_id)
        await a.send(b.agent_id, "m1")  # stored; b's event for it is lost
        await server.close()
        await a.send(b.agent_id, "m2")  # offline: queued and spooled
        if respool_window:
            await async_poll(lambda: len(got.messages) == 2, 5, "both messages through the spool", 0.02)
            assert [(m.content, m.via) for m in got.messages] == [
                ("m1", Via.SPOOL), ("m2", Via.SPOOL)]
            return
        await async_poll(lambda: b.held == 1, 5, "m2 held", 0.02)
        assert got.messages == []
        await aiohttp_server(make_app(settings, storage), port=port)
        b.events.wake()
        await async_poll(lambda: len(got.messages) == 2, 5, "both messages", 0.02)
        assert [(m.content, m.via) for m in got.messages] == [
            ("m1", Via.CATCHUP), ("m2", Via.SPOOL)]
        await asyncio.wait_for(a.wait_online(), 10)
        await asyncio.sleep(0.2)  # the replayed m2 would come now
        assert len(got.messages) == 2


async def test_the_agent_token_is_kept_with_the_state_and_sent(server, client, tmp_path):
    async with make_client(server, tmp_path, "alpha") as first:
        token = first.agent_token
        assert token and token.startswith("mat_")
        agent_id = first.agent_id
        beta = (await call(client, "POST", "/api/agents/register", {"name": "beta"}))[1]
        # Every request acts as alpha now: another agent's inbox is refused.
        with pytest.raises(Rejected) as err:
            await first.http.request("GET", f"/api/messages/{beta['agentId']}")
        assert err.value.status == 403
    db = await StateDB.open(tmp_path / "alpha")
    try:
        assert await db.get("agent_token") == token
    finally:
        await db.close()
    async with make_client(server, tmp_path, "alpha") as again:
        # The restart proves itself with the stored token; no new one is handed out.
        assert again.agent_id == agent_id and again.agent_token == token
        await async_poll(lambda: again.events.connected, 5, "the token's WebSocket", 0.02)


async def test_a_revoked_token_falls_back_to_the_shared_key(server, client, tmp_path):
    async with make_client(server, tmp_path, "alpha") as first:
        token = first.agent_token
        await first.http.request("DELETE", f"/api/agents/{first.agent_id}/token")
    async with make_client(server, tmp_path, "alpha") as again:
        assert again.agent_token is None  # revoked: only the admin key gives a new one
        status, _ = await call(client, "GET", "/api/agents",
                               headers={"Authorization": f"Bearer {token}"})
        assert status == 401
