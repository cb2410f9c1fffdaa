"""`meshd run --database postgresql://...`: the real supervisor and worker on a real cluster.

The cluster stops (`pg_ctl -m immediate`, a crash) under write load: the worker answers 503
with the reason, the supervisor stays up, the same worker resumes by itself when the cluster
is back, and every acknowledged registration is in the database afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from meshd.store import postgres
from tests.process.harness import WriteLoad, api, async_poll

pytestmark = pytest.mark.process


async def test_daemon_on_postgresql_survives_a_cluster_stop(meshd_proc, own_pg_cluster):
    cluster = own_pg_cluster
    url = cluster.url("mesh")
    proc = meshd_proc().start(["--database", url])
    await asyncio.to_thread(proc.wait_healthy, 30)
    status = await asyncio.to_thread(proc.wait_serving)
    assert status["database"] == postgres.redact(url)
    worker = status["worker_pid"]

    load = WriteLoad(proc, "pg")
    running = asyncio.create_task(load.run(writers=4))
    await async_poll(lambda: len(load.acked) >= 30, 30, "writes before the stop")
    await asyncio.to_thread(cluster.stop, "immediate")
    stopped_at = time.monotonic()

    async with aiohttp.ClientSession() as session:
        async def refusing():
            code, body = await api(session, proc, "GET", "/readyz")
            return (code, body) if code == 503 else None

        code, body = await async_poll(refusing, 30, "/readyz 503 while the cluster is down")
        assert body["reason"].startswith("the database is unreachable")
        await async_poll(lambda: [f for f in load.failures if f[0] >= stopped_at
                                  and f[2] == 503], 30, "503 answers to writes")
        acked_while_down = len(load.acked)

        await asyncio.to_thread(cluster.start)

        async def ready():
            return (await api(session, proc, "GET", "/readyz"))[0] == 200

        await async_poll(ready, 30, "/readyz 200 after the cluster restart")
        await async_poll(lambda: len(load.acked) >= acked_while_down + 30, 30,
                         "writes after the restart")
        load.stop.set()
        await running
        assert (await asyncio.to_thread(proc.status))["worker_pid"] == worker  # no restart
        assert [f for f in load.server_errors() if f[2] != 503] == []

        names = {r["name"] for r in await asyncio.to_thread(
            postgres.read_sql, url, "SELECT name FROM agents")}
        assert set(load.acked) <= names  # no acknowledged write lost

    # The supervisor ran Database Unreachable (not Database Corruption) to its end, and its
    # event reached the database once it was back.
    def unreachable_runs():
        return [json.loads(p.read_text()) for p in (proc.data_dir / "protocols").glob("*.json")
                if json.loads(p.read_text())["protocol"] == "database_unreachable"]

    # (Under load a request can still meet a connection the restart broke just after the
    # first run resolved: that is a second, short run of its own, resolved the same way.)
    await async_poll(lambda: unreachable_runs() and all(
        r["outcome"] == "completed" for r in unreachable_runs()), 30,
        "database_unreachable runs completed")
    for run in unreachable_runs():
        assert run["state"] == "resolved"
        assert [s["next_state"] for s in run["steps"]] == [
            "recorded", "refusing", "reconnected", "verified", "resolved"]
    assert not [p for p in (proc.data_dir / "protocols").glob("*.json")
                if json.loads(p.read_text())["protocol"] == "database_corruption"]

    def event_resolved():
        return postgres.read_sql(url, "SELECT status FROM catastrophe_events"
                                      " WHERE event_type = 'database_unreachable'")

    await async_poll(lambda: len(event_resolved()) == len(unreachable_runs()) and all(
        r["status"] == "resolved" for r in event_resolved()), 30, "events resolved")
    # A backup through the running daemon: pg_dump, verified in a scratch database.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "meshd", "backup", "--json", "--data-dir",
                         str(proc.data_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["verified"] and manifest["row_counts"]["agents"] >= len(load.acked)
    assert (proc.backup_dir / manifest["file"]).exists()
    assert (await asyncio.to_thread(proc.status))["last_backup"]["file"] == manifest["file"]
    # Database Corruption restores a SQLite file: refused on PostgreSQL, with the way to go.
    refused = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "meshd", "restore", "--yes", "--json", "--data-dir",
                         str(proc.data_dir)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "meshd restore --database" in refused.stderr, refused
    proc.signal(15)
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0


async def test_worker_kill_9_on_postgresql_runs_crash_recovery(meshd_proc, own_pg_cluster):
    """Server Crash Recovery is backend-neutral but checks the database and reads recent
    updates on connections of its own: on PostgreSQL, a connection check and PostgreSQL SQL."""
    cluster = own_pg_cluster
    url = cluster.url("mesh")
    proc = meshd_proc().start(["--database", url])
    await asyncio.to_thread(proc.wait_healthy, 30)
    status = await asyncio.to_thread(proc.wait_serving)
    load = WriteLoad(proc, "crash")
    running = asyncio.create_task(load.run(writers=4))
    await async_poll(lambda: len(load.acked) >= 30, 30, "writes before the kill")
    os.kill(status["worker_pid"], signal.SIGKILL)
    await asyncio.to_thread(proc.wait_serving, status["worker_pid"], 30)
    acked_at_restart = len(load.acked)
    await async_poll(lambda: len(load.acked) >= acked_at_restart + 30, 30,
                     "writes on the new worker")
    load.stop.set()
    await running

    def runs(protocol):
        return [json.loads(p.read_text()) for p in (proc.data_dir / "protocols").glob("*.json")
                if json.loads(p.read_text())["protocol"] == protocol]

    [run] = await async_poll(lambda: [r for r in runs("server_crash_recovery")
                                      if r["outcome"] == "completed"], 30, "crash run done")
    steps = {s["state"]: s["detail"] for s in run["steps"]}
    assert steps["announced"] == "quick_check ok", steps  # the connection check passed
    assert steps["database_checked"] == "no breaking, api, schema or emergency update before the crash", steps
    assert runs("database_corruption") == [] and runs("database_unreachable") == []
    names = {r["name"] for r in await asyncio.to_thread(
        postgres.read_sql, url, "SELECT name FROM agents")}
    assert set(load.acked) <= names  # no acknowledged write lost to the kill
    proc.signal(15)
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0
