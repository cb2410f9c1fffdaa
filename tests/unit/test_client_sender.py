"""Sending against a scripted server: online sends, the switch to offline mode, the queue and
the spool (with the respool of recent messages), and the in-order replay."""

from __future__ import annotations

import pytest

from meshd.client.errors import Rejected, Unavailable
from meshd.client.link import Link
from meshd.client.queue import Outbox
from meshd.client.sender import Sender
from meshd.client.spool import Spool
from meshd.client.state import StateDB


class Server:
    """Answers POST /api/messages from a script: "ok", "down" or "refuse"."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.stored: list[dict] = []
        self.refuse: set[str] = set()

    async def request(self, method: str, path: str, *, json=None, params=None):
        assert (method, path) == ("POST", "/api/messages")
        if self.mode == "down":
            raise Unavailable("connection refused")
        if self.mode == "too old":
            raise Rejected("426 upgrade required", 426)
        if json["content"] in self.refuse:
            raise Rejected("400 bad", 400)
        self.stored.append(json)
        return {"success": True}


@pytest.fixture
async def parts(tmp_path):
    db = await StateDB.open(tmp_path / "state")
    server, link, spool = Server(), Link(), Spool(tmp_path / "spool")
    spool.open_mailbox("b")
    outbox = Outbox(db)
    link.mark_online()
    sender = Sender(server, outbox, link, spool, respool_window=60.0)  # type: ignore[arg-type]
    yield sender, server, link, outbox, spool
    await db.close()


def spooled(spool: Spool) -> list[tuple[str, str | None]]:
    return [(f.message.content, f.message.prev) for f in spool.pending("b")]


async def test_online_sends_go_straight_to_the_server_with_client_ids(parts):
    sender, server, link, outbox, spool = parts
    ids = [await sender.send("a", "b", f"m{n}") for n in range(3)]
    assert [m["clientId"] for m in server.stored] == ids
    assert len(set(ids)) == 3
    assert await outbox.count() == 0 and spool.pending("b") == []
    assert await outbox.last_sent("b") == ids[-1]


async def test_an_unreachable_server_switches_to_the_queue_and_the_spool(parts):
    sender, server, link, outbox, spool = parts
    first = await sender.send("a", "b", "m0")
    server.mode = "down"
    second = await sender.send("a", "b", "m1")
    third = await sender.send("a", "b", "m2")
    assert not link.online
    assert await outbox.count() == 2
    # m0 reached the server, but b may have lost its event with the server: spooled again.
    assert spooled(spool) == [("m0", None), ("m1", first), ("m2", second)]
    assert (await outbox.first()).client_id == second
    assert await outbox.last_sent("b") == third


async def test_no_spool_for_an_agent_without_a_mailbox_here(parts):
    sender, server, link, outbox, spool = parts
    server.mode = "down"
    await sender.send("a", "elsewhere", "m0")
    assert await outbox.count() == 1
    assert not (spool.root / "elsewhere").exists()


async def test_the_replay_is_in_order_and_goes_back_online(parts):
    sender, server, link, outbox, spool = parts
    server.mode = "down"
    ids = [await sender.send("a", "b", f"m{n}") for n in range(4)]
    assert await sender.replay() is False  # still down
    assert await outbox.count() == 4
    server.mode = "ok"
    assert await sender.replay() is True
    assert link.online
    assert [m["clientId"] for m in server.stored] == ids
    assert await outbox.count() == 0
    later = await sender.send("a", "b", "m4")  # online again: straight to the server
    assert server.stored[-1]["clientId"] == later


async def test_a_refused_message_is_set_aside_during_replay(parts):
    sender, server, link, outbox, spool = parts
    server.mode = "down"
    for n in range(3):
        await sender.send("a", "b", f"m{n}")
    server.mode = "ok"
    server.refuse.add("m1")
    assert await sender.replay() is True
    assert [m["content"] for m in server.stored] == ["m0", "m2"]
    assert [r["content"] for r in await outbox.rejected()] == ["m1"]


async def test_a_refused_online_send_raises_and_leaves_no_trace(parts):
    sender, server, link, outbox, spool = parts
    first = await sender.send("a", "b", "m0")
    server.refuse.add("bad")
    with pytest.raises(Rejected):
        await sender.send("a", "b", "bad")
    assert link.online
    assert await outbox.count() == 0
    assert await outbox.last_sent("b") == first  # the next message does not wait for it


async def test_a_version_refusal_keeps_the_queue_for_the_upgraded_agent(parts):
    sender, server, link, outbox, spool = parts
    server.mode = "down"
    await sender.send("a", "b", "m0")
    server.mode = "too old"
    assert await sender.replay() is False
    assert await outbox.count() == 1 and await outbox.rejected() == []
    assert not link.online
