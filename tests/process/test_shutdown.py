"""`meshd run` as a real process: SIGTERM/SIGINT drain under write load and lose no
acknowledged write; unsafe or too-new starts are refused with a clear message."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid

import aiohttp
import pytest

from tests.process.harness import MeshdProcess, WriteLoad, api, async_poll, free_port

pytestmark = pytest.mark.process

QUIET = ("--access-log", "false")


async def stop_under_load(proc: MeshdProcess, sig: int, *, group: bool, writes: int
                          ) -> tuple[WriteLoad, float]:
    """Start 8 writers, wait for `writes` acknowledged writes, send `sig`, and wait for exit 0.

    Returns the load and the moment the signal was sent."""
    load = WriteLoad(proc, prefix=f"load-{uuid.uuid4().hex[:8]}")
    async with load.running(writers=8):
        await async_poll(lambda: len(load.acked) >= writes, 15,
                         f"{writes} acknowledged writes (failures: {load.failures[:3]})")
        signalled = time.monotonic()
        proc.signal(sig, group=group)
        code = await asyncio.to_thread(proc.wait_exit, 15)
    assert code == 0, f"exit code {code}:\n{proc.log_tail()}"
    return load, signalled


async def agent_names(proc: MeshdProcess) -> set[str]:
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/api/agents")
    assert status == 200, body
    return {agent["name"] for agent in body}


def assert_drained(proc: MeshdProcess, run: int) -> None:
    events = [e["event"] for e in proc.log_events(run)]
    assert "worker.draining" in events, proc.log_tail(run=run)
    assert "worker.stopped" in events, proc.log_tail(run=run)
    assert events.index("worker.draining") < events.index("worker.stopped")


async def stop_keeps_acknowledged_writes(proc, sig: int, group: bool, writes: int) -> None:
    """Stop meshd with `sig` under write load: no write failed before the signal, none
    answered 5xx, the drain was clean (exit 0), and every acknowledged write is there after a
    restart."""
    proc.start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)

    load, signalled = await stop_under_load(proc, sig, group=group, writes=writes)

    assert load.failures_before(signalled) == [], load.failures_before(signalled)[:5]
    assert load.server_errors() == [], load.server_errors()[:5]
    assert_drained(proc, run=0)

    proc.start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    missing = set(load.acked) - await agent_names(proc)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"


async def test_sigterm_under_write_load_exits_0_and_keeps_every_acknowledged_write(meshd_proc):
    await stop_keeps_acknowledged_writes(meshd_proc(), signal.SIGTERM, group=False, writes=300)


async def test_sigint_to_the_process_group_exits_0_and_keeps_every_acknowledged_write(
        meshd_proc):
    # Ctrl-C in a terminal signals the whole foreground group, worker included.
    await stop_keeps_acknowledged_writes(meshd_proc(), signal.SIGINT, group=True, writes=50)


def test_default_key_on_a_non_loopback_address_is_refused(meshd_proc):
    proc = meshd_proc(host="0.0.0.0", port=free_port("0.0.0.0"), key=None).start()
    code = proc.wait_exit(15)
    assert code != 0
    assert "--allow-default-key" in proc.log_text(), proc.log_tail()
    assert not proc.healthy()


def test_allow_default_key_starts_on_a_non_loopback_address(meshd_proc):
    proc = meshd_proc(host="0.0.0.0", port=free_port("0.0.0.0"), key=None)
    proc.start(("--allow-default-key", "--ws-auth", "off", *QUIET))
    proc.wait_healthy()
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(15) == 0, proc.log_tail()


def test_an_unchosen_ws_auth_on_a_non_loopback_address_is_refused(meshd_proc):
    proc = meshd_proc(host="0.0.0.0", port=free_port("0.0.0.0"))
    proc.start(QUIET)
    assert proc.wait_exit(15) == 2
    assert "ws_auth" in proc.log_text() and "public" in proc.log_text(), proc.log_tail()
    assert not proc.healthy()


def test_database_with_a_newer_schema_version_is_refused(meshd_proc):
    proc = meshd_proc()
    proc.data_dir.mkdir(parents=True)
    with sqlite3.connect(proc.database) as db:
        db.execute("PRAGMA user_version = 999")
    db.close()

    code = proc.start(QUIET).wait_exit(15)

    assert code != 0
    assert "newer" in proc.log_text(), proc.log_tail()
    with sqlite3.connect(proc.database) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 999
    db.close()


async def test_sigterm_delivers_the_events_of_every_acknowledged_message(meshd_proc):
    """Shutdown waits for requests in flight and flushes each socket before closing it, so a
    listener gets `new_message` for every message that got a 200."""
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_healthy)
    acked: set[str] = set()
    seen: set[str] = set()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(proc.url.replace("http", "ws") + "/ws")

        async def listen() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = msg.json()
                    if frame.get("type") == "new_message":
                        seen.add(frame["message"]["id"])

        async def send(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, body = await api(session, proc, "POST", "/api/messages",
                                             {"from": f"s{n}", "to": "r", "content": str(i)})
                except (aiohttp.ClientError, OSError):
                    return
                if status == 200:
                    acked.add(body["messageId"])

        listener = asyncio.create_task(listen())
        senders = [asyncio.create_task(send(n)) for n in range(4)]
        await async_poll(lambda: len(acked) >= 200, 15, "200 acknowledged messages")
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait_exit, 15) == 0
        stop.set()
        await asyncio.gather(*senders)
        await asyncio.wait_for(listener, 5)
    assert acked <= seen, f"{len(acked - seen)} acknowledged messages had no event"
