"""The warm standby worker (issue 14): a real `meshd run`, real kill -9, real write load.

The standby waits imported, holding only the listening socket; a crash promotes it (and still
counts as a crash); a corruption exit or a protocol holding the worker never promotes it; a
reload replaces it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.process.harness import MeshdProcess, WriteLoad, api, async_poll, meshd_cli, poll
from tests.process.test_corruption import checkpoint, overwrite_middle

QUIET = ("--access-log", "false")


def ready_standby(proc: MeshdProcess, other_than: int | None = None) -> dict[str, Any]:
    """Poll `meshd status` until a standby (other than pid `other_than`) says it is ready."""
    def ready() -> dict[str, Any] | None:
        standby = proc.status().get("standby")
        if standby and standby["ready"] and standby["pid"] != other_than:
            return standby
        return None

    return poll(ready, 30, f"a ready standby other than {other_than}", 0.1)


def opened_files(pid: int) -> set[str]:
    return {Path(f.path).name for f in psutil.Process(pid).open_files()}


def stored_names(database: Path) -> set[str]:
    conn = sqlite3.connect(database)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM agents")}
    finally:
        conn.close()


def events(proc: MeshdProcess, name: str) -> list[dict[str, Any]]:
    """The supervisor's log events named `name`."""
    return [e for e in proc.log_events()
            if e["event"] == name and e.get("process") == "supervisor"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_kill_9_under_write_load_promotes_the_standby_and_loses_nothing(meshd_proc):
    proc = meshd_proc().start(QUIET)
    first = (await asyncio.to_thread(proc.wait_serving))["worker_pid"]
    standby = await asyncio.to_thread(ready_standby, proc)
    # Waiting, it has opened neither the database nor the writer lock, nor its private socket.
    assert not opened_files(standby["pid"]) & {"mesh.db", "mesh.db-wal", "writer.lock"}
    assert standby["rss_mb"] and standby["rss_mb"] > 5, standby
    print("standby", standby)

    load = WriteLoad(proc, prefix=f"sb-{uuid.uuid4().hex[:6]}")
    async with load.running(writers=6), aiohttp.ClientSession() as session:
        await async_poll(lambda: len(load.acked) >= 300, 20,
                         f"300 acknowledged writes (failures: {load.failures[:3]})")
        os.kill(first, signal.SIGKILL)

        async def answered() -> bool:
            try:
                code, _ = await api(session, proc, "GET", "/api/agents?limit=1")
            except (aiohttp.ClientError, OSError):
                return False
            return code == 200

        await async_poll(answered, 15, "an answered API read after the kill", 0.005)
        status = await asyncio.to_thread(proc.wait_serving, first)
        acked = len(load.acked)
        await async_poll(lambda: len(load.acked) >= acked + 100, 15,
                         "writes acknowledged by the promoted worker")

    assert status["worker_pid"] == standby["pid"], (status, standby)
    assert status["restarts"] == 1 and status["promotions"] == 1, status  # the crash counts
    (crash,) = events(proc, "worker.crashed")
    assert crash["pid"] == first and crash["code"] == -signal.SIGKILL, crash
    assert events(proc, "worker.promoted")[0]["pid"] == standby["pid"]
    # The promoted worker holds the writer role now, and a new standby is made ready.
    assert "writer.lock" in opened_files(standby["pid"])
    await asyncio.to_thread(ready_standby, proc, standby["pid"])

    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0
    missing = set(load.acked) - stored_names(proc.database)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"
    await async_poll(lambda: not proc.tree(), 10, "no worker or standby left running")


async def test_a_corruption_exit_never_promotes_the_standby(meshd_proc):
    proc = meshd_proc().start(QUIET)
    worker = (await asyncio.to_thread(proc.wait_serving))["worker_pid"]
    standby = await asyncio.to_thread(ready_standby, proc)
    # With the supervisor's control socket out of reach, a worker that meets corruption can
    # only say so by exiting with the reserved code 86.
    control = proc.data_dir / "meshd.sock"
    away = proc.data_dir / "meshd.sock.away"
    load = WriteLoad(proc, prefix=f"cx-{uuid.uuid4().hex[:6]}")
    async with load.running(writers=4):
        await async_poll(lambda: len(load.acked) >= 300, 20, "300 acknowledged writes")
        checkpoint(proc.database)
        acked = len(load.acked)
        await async_poll(lambda: len(load.acked) >= acked + 100, 20, "writes after it")
        os.rename(control, away)
        try:
            overwrite_middle(proc.database)
            await async_poll(lambda: gone(worker), 30, "the worker to exit on corruption")
        finally:
            os.rename(away, control)

    (crash,) = [e for e in events(proc, "worker.crashed") if e["pid"] == worker]
    assert crash["code"] == 86, crash
    await async_poll(lambda: gone(standby["pid"]), 15, "the standby to be retired")
    retired = events(proc, "standby.retired")
    assert retired and "database-corrupt" in retired[0]["reason"], retired
    # The Database Corruption protocol restores and starts a fresh worker, not the standby.
    status = await asyncio.to_thread(proc.wait_serving, worker, 60)
    assert status["worker_pid"] != standby["pid"], status
    assert not events(proc, "worker.promoted"), proc.log_tail()
    assert status["promotions"] == 0, status


async def test_no_promotion_while_a_protocol_holds_the_worker(meshd_proc):
    proc = meshd_proc().start(QUIET)
    worker = (await asyncio.to_thread(proc.wait_serving))["worker_pid"]
    standby = await asyncio.to_thread(ready_standby, proc)
    done = await asyncio.to_thread(meshd_cli, proc, "protocol", "run", "database_corruption",
                                   "--reason", "drill")
    assert done.returncode == 0, done.stderr

    def finished() -> bool:
        status = proc.status()
        return not status["protocol_runs"] and status["state"] == "serving"

    await asyncio.to_thread(poll, finished, 60, "the run to finish and a worker to serve")
    status = proc.status()
    assert status["worker_pid"] not in (worker, standby["pid"]), (status, standby)
    assert gone(standby["pid"])
    assert not events(proc, "worker.promoted"), proc.log_tail()
    (retired,) = [e for e in events(proc, "standby.retired") if e["pid"] == standby["pid"]]
    assert retired["reason"] == "a protocol owns the worker", retired
    # Once nothing holds the worker, a new standby is kept again.
    await asyncio.to_thread(ready_standby, proc, standby["pid"])


async def test_sighup_replaces_the_standby_with_one_on_the_new_settings(meshd_proc):
    proc = meshd_proc().start(QUIET)
    worker = (await asyncio.to_thread(proc.wait_serving))["worker_pid"]
    standby = await asyncio.to_thread(ready_standby, proc)
    proc.signal(signal.SIGHUP)
    await asyncio.to_thread(proc.wait_serving, worker)
    await async_poll(lambda: gone(standby["pid"]), 15, "the old standby to be retired")
    (retired,) = events(proc, "standby.retired")
    assert retired["reason"].startswith("reload"), retired
    new = await asyncio.to_thread(ready_standby, proc, standby["pid"])
    # The new worker came from a cold start, not from the retired standby.
    assert proc.status()["worker_pid"] != standby["pid"]
    assert not events(proc, "worker.promoted")
    assert new["pid"] != standby["pid"]


async def test_without_the_standby_option_a_crash_cold_starts(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--standby", "false"))
    worker = (await asyncio.to_thread(proc.wait_serving))["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    status = await asyncio.to_thread(proc.wait_serving, worker)
    assert status["standby"] is None and status["promotions"] == 0, status
    assert status["restarts"] == 1, status
    assert not events(proc, "standby.started")
