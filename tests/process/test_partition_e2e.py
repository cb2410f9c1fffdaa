"""Partition end to end: two SDK agents on one host keep messaging each other while a real
meshd is stopped for 10 s and started again on the same data dir and port.

During the outage they talk through the shared spool; afterwards every message has reached
its receiver exactly once and in order per sender, and the server stores each once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from meshd.client import Backoff, MeshClient, Message, Via
from tests.process.harness import API_KEY, MeshdProcess, api, async_poll

pytestmark = pytest.mark.process

OUTAGE = 10.0
SEND_EVERY = 0.1


@dataclass
class Agent:
    """One SDK agent with what it sent and what its handler got."""

    tag: str
    client: MeshClient
    sent: list[str] = field(default_factory=list)  # client ids, in sending order
    got: list[tuple[float, Message]] = field(default_factory=list)

    async def handle(self, message: Message) -> None:
        self.got.append((time.monotonic(), message))

    def from_peer(self, peer: Agent) -> list[Message]:
        return [m for _, m in self.got if m.from_agent == peer.client.agent_id]


def make_agent(proc: MeshdProcess, root: Path, tag: str) -> Agent:
    agent = Agent(tag, None)  # type: ignore[arg-type]
    agent.client = MeshClient(
        proc.url, API_KEY, f"partition-{tag}", state_dir=root / f"state-{tag}",
        spool_dir=root / "spool", on_message=agent.handle, heartbeat_interval=1.0,
        backoff=Backoff(base=0.1, cap=1.0), request_timeout=5.0, spool_poll_interval=0.05)
    return agent


async def keep_sending(sender: Agent, receiver: Agent, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        client_id = await sender.client.send(receiver.client.agent_id, f"{sender.tag}:{n}")
        sender.sent.append(client_id)
        n += 1
        await asyncio.sleep(SEND_EVERY)


async def test_messages_survive_a_server_outage_exactly_once_and_in_order(meshd_proc):
    proc: MeshdProcess = meshd_proc()
    proc.start()
    await asyncio.to_thread(proc.wait_healthy)
    a, b = make_agent(proc, proc.root, "a"), make_agent(proc, proc.root, "b")
    pairs = [(a, b), (b, a)]
    async with a.client, b.client:
        await async_poll(lambda: a.client.events.connected and b.client.events.connected,
                         10, "both WebSockets")
        stop = asyncio.Event()
        senders = [asyncio.create_task(keep_sending(s, r, stop)) for s, r in pairs]
        await asyncio.sleep(2.0)  # pacing: some messages go through the server first

        proc.signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait_exit, 15)
        down_at = time.monotonic()
        await async_poll(lambda: not a.client.online and not b.client.online, 5,
                         "both agents in offline mode")
        await asyncio.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))  # pacing
        up_at = time.monotonic()
        proc.start()
        await asyncio.to_thread(proc.wait_healthy)

        for receiver, sender in pairs:
            during = [m for t, m in receiver.got
                      if down_at < t < up_at and m.via == Via.SPOOL
                      and m.from_agent == sender.client.agent_id]
            assert during, f"{receiver.tag} got nothing through the spool during the outage"

        await async_poll(lambda: a.client.online and b.client.online, 10,
                         "both agents back online with their queues replayed")
        await asyncio.sleep(1.0)  # pacing: some messages go through the server again
        stop.set()
        await asyncio.gather(*senders)

        def all_delivered() -> bool:
            return all(len(r.from_peer(s)) >= len(s.sent) for s, r in pairs)

        await async_poll(all_delivered, 15, "every message delivered")
        await asyncio.sleep(0.5)  # a duplicate would arrive now

    for sender, receiver in pairs:
        got = receiver.from_peer(sender)
        counts = Counter(m.client_id for m in got)
        assert not [c for c, n in counts.items() if n > 1], "a message was delivered twice"
        assert [m.client_id for m in got] == sender.sent  # each once, in sending order
        assert [m.content for m in got] == [f"{sender.tag}:{n}" for n in range(len(got))]
        assert sender.client.link.outages >= 1
        assert {Via.SPOOL, Via.SERVER} <= {m.via for m in got}

    async with aiohttp.ClientSession() as session:
        for sender, receiver in pairs:
            status, rows = await api(session, proc, "GET",
                                     f"/api/messages/{receiver.client.agent_id}")
            assert status == 200, rows
            stored = [r["client_id"] for r in rows if r["from_agent"] == sender.client.agent_id]
            assert len(stored) == len(set(stored)), "the server stored a message twice"
            assert set(stored) == set(sender.sent)
