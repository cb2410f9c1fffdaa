"""Events across real meshd nodes on one throwaway PostgreSQL cluster (issue 19).

Each node is a whole `meshd run` (supervisor, worker, standby) with the same `--database`.
What the WebSocket clients of every node receive is compared with the events table itself:
every event exactly once, in id order, whichever node wrote it; agents on different nodes
exchange messages in each sender's order; a catastrophe posted to any node reaches every
node's clients; a client that moves from one node to another with `?since=` misses nothing
and gets nothing twice while writes go on everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

import aiohttp
import pytest

from meshd.store import postgres
from tests.process.harness import MeshdProcess, api, async_poll
from tests.process.nodes import pg_cluster, start_nodes  # noqa: F401 - pg_cluster: a fixture

pytestmark = pytest.mark.process


def table_events(url: str, after: int = 0) -> list[dict]:
    return postgres.read_sql(url, "SELECT id, type, data, audience FROM events WHERE id > ?"
                                  " ORDER BY id", (after,))


@dataclass
class Stream:
    """One WebSocket client: every frame that carries an eventId, in arrival order."""

    node: MeshdProcess
    query: str
    frames: list[dict] = field(default_factory=list)
    task: asyncio.Task | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> list[int]:
        return [f["eventId"] for f in self.frames]

    async def _run(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(f"{self.node.url}/ws?{self.query}",
                                      headers=self.node.headers) as ws:
            self.ws = ws
            self.opened.set()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                if "eventId" in frame:
                    self.frames.append(frame)

    def start(self, session: aiohttp.ClientSession) -> Stream:
        self.task = asyncio.create_task(self._run(session))
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)


async def opened(streams: list[Stream]) -> None:
    for stream in streams:
        await asyncio.wait_for(stream.opened.wait(), 15)


async def register(session, node: MeshdProcess, name: str) -> str:
    status, body = await api(session, node, "POST", "/api/agents/register", {"name": name})
    assert status == 200, body
    return body["agentId"]


async def test_three_nodes_deliver_every_event_once_in_order_to_every_node(
        meshd_proc, pg_cluster):  # noqa: F811 - the fixture of tests.process.nodes
    url = pg_cluster.url("mesh")
    a, b, c = await start_nodes(meshd_proc, url, 3)
    senders_per_node, messages_each = 3, 25
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        receiver = await register(session, b, "receiver")
        senders = {node_name: [await register(session, node, f"sender-{node_name}{n}")
                               for n in range(senders_per_node)]
                   for node_name, node in (("a", a), ("c", c))}
        # The receiver's socket is on B; an observer of the whole stream sits on each node.
        inbox = Stream(b, f"since=0&agentId={receiver}&onlyMine=true").start(session)
        observers = [Stream(node, "since=0").start(session) for node in (a, b, c)]
        await opened([inbox, *observers])

        acked: dict[str, list[str]] = {}

        async def sender(node: MeshdProcess, agent: str) -> None:
            acked[agent] = []
            for n in range(messages_each):
                status, body = await api(session, node, "POST", "/api/messages", {
                    "from": agent, "to": receiver, "content": f"{agent}#{n}"})
                assert status == 200, body
                acked[agent].append(body["messageId"])

        nodes = {"a": a, "c": c}
        writes = [sender(nodes[name], agent) for name, agents in senders.items()
                  for agent in agents]
        # Meanwhile a catastrophe is posted to each node: every node's clients get all three.
        catastrophes = [api(session, node, "POST", "/api/catastrophe", {
            "eventType": "server_down", "severity": "critical", "title": f"down on {name}"})
            for name, node in (("a", a), ("b", b), ("c", c))]
        results = await asyncio.gather(*writes, *catastrophes)
        assert all(r[0] == 200 for r in results if r is not None), results

        table = table_events(url)
        total = len(senders) * senders_per_node * messages_each
        assert sum(1 for e in table if e["type"] == "new_message") == total
        last = table[-1]["id"]
        for stream in (inbox, *observers):
            await async_poll(lambda s=stream: s.frames and s.ids()[-1] >= last, 30,
                             f"the stream on {stream.node.url} to reach event {last}")
        # Every node's observer: exactly the table's ids, in order, each once.
        for stream in observers:  # (events after the table was read are left out)
            assert [i for i in stream.ids() if i <= last] == [e["id"] for e in table], \
                stream.node.url
            alerts = [f["catastrophe"]["title"] for f in stream.frames
                      if f["type"] == "catastrophe_alert"]
            assert sorted(alerts) == ["down on a", "down on b", "down on c"]
        # The receiver's socket on B: every message to it, once, in id order, and each
        # sender's messages in the order they were acknowledged.
        to_receiver = [e["id"] for e in table if e["type"] == "new_message"
                       and receiver in json.loads(e["audience"])]
        got = [f for f in inbox.frames if f["type"] == "new_message"]
        assert [f["eventId"] for f in got if f["eventId"] <= last] == to_receiver
        for agent, message_ids in acked.items():
            assert [f["message"]["id"] for f in got if f["message"]["from"] == agent] \
                == message_ids
        # The inbox read on node C agrees.
        status, rows = await api(session, c, "GET", f"/api/messages/{receiver}")
        assert status == 200
        assert sorted(r["id"] for r in rows) == sorted(m for ids in acked.values() for m in ids)
        assert {r["id"]: r["content"] for r in rows} == {
            m: f"{agent}#{n}" for agent, ids in acked.items() for n, m in enumerate(ids)}
        for stream in (inbox, *observers):
            await stream.close()


async def test_a_client_moving_to_another_node_with_since_misses_nothing(
        meshd_proc, pg_cluster):  # noqa: F811 - the fixture of tests.process.nodes
    url = pg_cluster.url("mesh")
    a, b = await start_nodes(meshd_proc, url, 2)
    stop = asyncio.Event()
    acked: list[str] = []

    async def writer(session, node: MeshdProcess, name: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status, body = await api(session, node, "POST", "/api/agents/register",
                                     {"name": f"{name}-{n}"})
            assert status == 200, body
            acked.append(body["agentId"])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        first = Stream(a, "since=0").start(session)
        await opened([first])
        load = asyncio.gather(*(writer(session, node, f"w{i}-{label}") for i in range(3)
                                for label, node in (("a", a), ("b", b))))
        await async_poll(lambda: len(first.frames) >= 60, 30, "events on node A")
        await first.close()
        resume_after = first.ids()[-1]
        # Writes go on while the client is away...
        await async_poll(lambda: table_events(url, resume_after)[40:], 30,
                         "writes while the client is away")
        second = Stream(b, f"since={resume_after}").start(session)
        await opened([second])
        await async_poll(lambda: len(second.frames) >= 100, 30, "events on node B")
        stop.set()
        await load
        table = table_events(url)
        await async_poll(lambda: second.ids()[-1] >= table[-1]["id"], 30,
                         "node B's stream to reach the last event")
        await second.close()
    # ...and the two connections together are the whole table, in order, each event once.
    # (Events after the table was read, such as a sweep's, are left out of the comparison.)
    last = table[-1]["id"]
    assert first.ids() + [i for i in second.ids() if i <= last] == [e["id"] for e in table]
    assert sum(1 for e in table if e["type"] == "agent_joined") == len(acked)
    joined = [f["agent"]["id"] for f in first.frames + second.frames
              if f["type"] == "agent_joined"]
    assert sorted(joined) == sorted(acked)
