"""The supervisor as a watchdog, with real processes: a killed or hung worker is replaced, a
crash loop stops restarting and says why, the worker never outlives its supervisor, crashes and
unclean stops are recorded, SIGHUP reloads, and operator commands find (or miss) the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from typing import Any

import aiohttp
import psutil
import pytest

from tests.process.harness import (
    MeshdProcess,
    WriteLoad,
    api,
    async_poll,
    clean_env,
    free_port,
    meshd_on_tty,
    meshd_status,
    poll,
    short_tmp_dir,
)

pytestmark = pytest.mark.process

QUIET = ("--access-log", "false")


# -- helpers ----------------------------------------------------------------------------------

async def agent_names(proc: MeshdProcess) -> set[str]:
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/api/agents")
    assert status == 200, body
    return {agent["name"] for agent in body}


async def get_health(proc: MeshdProcess) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return await api(session, proc, "GET", "/health")


def kill_worker(pid: int) -> float:
    """SIGKILL the worker; the moment it was sent."""
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def gone(process: psutil.Process) -> bool:
    """True once `process` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def events_in_database(proc: MeshdProcess) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(proc.database)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM catastrophe_events")]


async def find_event(proc: MeshdProcess, title: str, status: str | None = None,
                     timeout: float = 10) -> dict[str, Any]:
    """The catastrophe event titled `title` (with `status`, if given).

    Polled through GET /api/catastrophe while that answers 200 with a list; otherwise (or if
    the event does not show up there) meshd is stopped with SIGTERM and the SQLite file read."""
    def match(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((r for r in rows if r.get("title") == title
                     and (status is None or r.get("status") == status)), None)

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            code, body = await api(session, proc, "GET", "/api/catastrophe")
            if code != 200 or not isinstance(body, list):
                break  # the route is not usable here: read the database instead
            found = match(body)
            if found:
                return found
            await asyncio.sleep(0.1)
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait_exit, 20) == 0, proc.log_tail()
    rows = events_in_database(proc)
    found = match(rows)
    assert found, (f"no event {title!r} (status {status}) in the database: "
                   f"{[(r['title'], r['status']) for r in rows]}")
    return found


# -- kill -9 and hangs ------------------------------------------------------------------------

async def test_kill_9_of_the_worker_under_write_load_loses_no_acknowledged_write(meshd_proc):
    proc = meshd_proc().start(QUIET)
    first = await asyncio.to_thread(proc.wait_serving)
    load = WriteLoad(proc, prefix=f"kill-{uuid.uuid4().hex[:8]}")
    async with load.running(writers=8):
        await async_poll(lambda: len(load.acked) >= 200, 15,
                         f"200 acknowledged writes (failures: {load.failures[:3]})")
        killed = kill_worker(first["worker_pid"])
        after = await asyncio.to_thread(proc.wait_serving, first["worker_pid"])
        await asyncio.to_thread(proc.wait_healthy)
        recovered = time.monotonic()
        acked_then = len(load.acked)
        await async_poll(lambda: len(load.acked) >= acked_then + 100, 15,
                         f"100 writes acknowledged by the new worker ({load.failures[-3:]})")

    assert after["restarts"] == 1, after
    assert after["worker_pid"] != first["worker_pid"]
    assert psutil.pid_exists(after["worker_pid"])
    assert load.failures_before(killed) == [], load.failures_before(killed)[:5]
    statuses = [f for f in load.failures if isinstance(f[2], int)]
    assert not [f for f in statuses if f[2] == 500], statuses[:5]
    # Only the supervisor's fallback may answer an HTTP error, and only with 503.
    assert all(f[2] == 503 for f in statuses), statuses[:5]
    late = [f for f in load.failures if f[0] > recovered]
    assert late == [], f"failures after the new worker was serving: {late[:5]}"
    missing = set(load.acked) - await agent_names(proc)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"
    crashed = next(e for e in proc.log_events() if e["event"] == "worker.crashed")
    assert crashed["pid"] == first["worker_pid"]
    assert "SIGKILL" in crashed["reason"]


async def test_a_hung_worker_is_detected_and_replaced(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--probe-interval", "200ms", "--probe-timeout", "300ms",
                               "--probe-failures", "3"))
    first = await asyncio.to_thread(proc.wait_serving)
    hung = first["worker_pid"]
    stopped = time.monotonic()
    os.kill(hung, signal.SIGSTOP)
    try:
        after = await asyncio.to_thread(proc.wait_serving, hung, 15)
        replaced_after = time.monotonic() - stopped
        killing = await asyncio.to_thread(proc.wait_log_event, "worker.killing_unresponsive", 5)
        status, body = await get_health(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)

    assert killing["pid"] == hung
    assert after["worker_pid"] != hung
    assert status == 200, body
    await asyncio.to_thread(poll, lambda: not psutil.pid_exists(hung)
                            or gone(psutil.Process(hung)), 5, f"hung worker {hung} to be gone")
    crashed = next(e for e in proc.log_events() if e["event"] == "worker.crashed")
    assert crashed["pid"] == hung and "unresponsive" in crashed["reason"], crashed
    failed = [e for e in proc.log_events() if e["event"] == "worker.probe_failed"]
    assert len(failed) >= 3, failed
    # 3 probes of at most 0.3 s, 0.2 s apart, then a restart: well under the deadline.
    assert replaced_after < 10, replaced_after


async def test_a_crash_loop_stops_restarting_and_says_why(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--crash-loop-limit", "2", "--crash-loop-window", "60s"))
    data = await asyncio.to_thread(proc.wait_serving)
    kills = 0
    while data["state"] != "crash-loop":
        assert kills < 5, f"no crash loop after {kills} kills: {data}"
        pid = data["worker_pid"]
        kill_worker(pid)
        kills += 1

        def next_state(pid: int = pid) -> dict[str, Any] | None:
            state = proc.status()
            if state["state"] == "crash-loop":
                return state
            if state["state"] == "serving" and state["worker_pid"] not in (None, pid):
                return state
            return None

        data = await asyncio.to_thread(poll, next_state, 15,
                                       f"a new worker or a crash loop after kill {kills}", 0.1)

    # limit 2: the third crash within the window is one too many.
    assert kills == 3, kills
    assert data["worker_pid"] is None, data
    assert "crash loop" in data["reason"], data
    assert data["mode"] == "unavailable"
    assert data["open_events"] >= 1, data  # the crashes, queued until a worker can write them
    assert proc.running(), "in a terminal the supervisor stays up in a crash loop"

    status, body = await get_health(proc)
    assert status == 503, body
    assert isinstance(body, dict) and data["reason"] in body["error"], body

    # The supervisor does not restart anything by itself afterwards.
    await asyncio.sleep(1.5)
    later = await asyncio.to_thread(proc.status)
    assert later["state"] == "crash-loop" and later["worker_pid"] is None, later
    assert [e for e in proc.log_events() if e["event"] == "supervisor.crash_loop"]

    code, text, _ = await asyncio.to_thread(
        meshd_on_tty, ["status", "--data-dir", str(proc.data_dir)], timeout=15)
    assert code == 0, text
    assert not text.lstrip().startswith("{"), f"expected the human-readable form:\n{text}"
    assert "crash-loop" in text and "crash loop" in text, text


# -- the worker's life is bound to the supervisor's -------------------------------------------

def test_the_worker_exits_when_its_supervisor_is_killed(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--drain-timeout", "2s"))
    worker = psutil.Process(proc.wait_serving()["worker_pid"])

    proc.signal(signal.SIGKILL)  # the supervisor alone, not the group
    assert proc.wait_exit(5) == -signal.SIGKILL

    poll(lambda: gone(worker), 10, f"orphaned worker {worker.pid} to exit by itself")
    assert not proc.healthy()


def test_a_starting_worker_exits_when_its_supervisor_is_killed(meshd_proc):
    # The race: the supervisor dies after forking a worker but before the worker asked for
    # PR_SET_PDEATHSIG, so only a check of the parent pid it was given can tell. Without the
    # standby: a promoted standby set PR_SET_PDEATHSIG long before the crash.
    proc = meshd_proc().start((*QUIET, "--drain-timeout", "2s", "--standby", "false"))
    old = proc.wait_serving()["worker_pid"]
    supervisor = psutil.Process(proc.pid)

    kill_worker(old)  # the first crash restarts at once: catch the new worker starting up

    def new_child() -> psutil.Process | None:
        return next((c for c in supervisor.children() if c.pid != old), None)

    starting = poll(new_child, 5, "the replacement worker to be spawned", interval=0.001)
    proc.signal(signal.SIGKILL)
    assert proc.wait_exit(5) == -signal.SIGKILL

    poll(lambda: gone(starting), 8, f"orphaned starting worker {starting.pid} to exit")


async def test_an_unclean_stop_is_detected_and_recorded_at_the_next_start(meshd_proc):
    proc = meshd_proc().start(QUIET)
    await asyncio.to_thread(proc.wait_serving)
    proc.signal(signal.SIGKILL, group=True)
    await asyncio.to_thread(proc.wait_exit, 5)
    assert (proc.data_dir / "meshd.pid").exists()

    proc.start(QUIET)
    detected = await asyncio.to_thread(proc.wait_log_event, "supervisor.unclean_stop_detected")
    assert detected["quick_check"] == "ok", detected
    await asyncio.to_thread(proc.wait_serving)

    event = await find_event(proc, "Unclean shutdown detected")
    assert event["event_type"] == "server_down", event


async def test_a_worker_crash_is_recorded_and_resolved_once_it_is_back(meshd_proc):
    proc = meshd_proc().start(QUIET)
    first = await asyncio.to_thread(proc.wait_serving)
    kill_worker(first["worker_pid"])
    await asyncio.to_thread(proc.wait_serving, first["worker_pid"])

    event = await find_event(proc, "API worker crashed", status="resolved")
    assert event["event_type"] == "server_down", event
    assert str(first["worker_pid"]) in event["description"], event


# -- reload -----------------------------------------------------------------------------------

async def test_sighup_reloads_the_config_with_a_new_worker_and_loses_no_write(meshd_proc):
    proc = meshd_proc()
    proc.root.mkdir(parents=True, exist_ok=True)
    config = proc.root / "meshd.toml"
    config.write_text("probe_failures = 3\n")
    proc.start((*QUIET, "--config", str(config)))
    first = await asyncio.to_thread(proc.wait_serving)
    big = {"name": "big-before", "padding": "x" * 8192}
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "POST", "/api/agents/register", big)
    assert status == 200, body

    load = WriteLoad(proc, prefix=f"hup-{uuid.uuid4().hex[:8]}")
    async with load.running(writers=4):
        await async_poll(lambda: len(load.acked) >= 50, 15,
                         f"50 acknowledged writes (failures: {load.failures[:3]})")
        config.write_text('probe_failures = 5\nmax_body_size = "4KiB"\n')
        proc.signal(signal.SIGHUP)
        await asyncio.to_thread(proc.wait_log_event, "supervisor.reloaded")
        after = await asyncio.to_thread(proc.wait_serving, first["worker_pid"])
        acked_then = len(load.acked)
        await async_poll(lambda: len(load.acked) >= acked_then + 50, 15,
                         f"50 writes acknowledged after the reload ({load.failures[-3:]})")

    assert after["worker_pid"] != first["worker_pid"]
    assert after["restarts"] == 0, "a reload is not a crash"
    status, body = await get_health(proc)
    assert status == 200, body
    assert load.server_errors() == [], load.server_errors()[:5]
    assert all(not isinstance(f[2], int) for f in load.failures), load.failures[:5]
    missing = set(load.acked) - await agent_names(proc)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"
    events = [e["event"] for e in proc.log_events()]
    assert "worker.crashed" not in events
    # The new worker runs with the new settings.
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "POST", "/api/agents/register",
                                 {**big, "name": "big-after"})
    assert status == 413, body


# -- operator commands ------------------------------------------------------------------------

def test_a_second_supervisor_on_the_same_data_dir_is_refused(meshd_proc):
    proc = meshd_proc().start(QUIET)
    first = proc.wait_serving()

    second = subprocess.run(proc.command((*QUIET, "--port", str(free_port()))),
                            capture_output=True, text=True, timeout=20, cwd=proc.root,
                            env=clean_env(), stdin=subprocess.DEVNULL)

    assert second.returncode != 0, second
    assert "another meshd is running" in second.stderr, second.stderr
    assert str(proc.data_dir) in second.stderr, second.stderr
    # The first one is untouched: same processes, still serving, still found by `meshd status`.
    again = proc.status()
    assert (again["supervisor_pid"], again["worker_pid"]) == (first["supervisor_pid"],
                                                              first["worker_pid"])
    assert again["state"] == "serving"
    assert (proc.data_dir / "meshd.pid").read_text().strip() == str(proc.pid)
    assert proc.healthy()


def test_status_without_a_running_daemon_exits_3():
    root = short_tmp_dir()
    try:
        done = meshd_status(root / "data")
        assert done.returncode == 3, done
        assert "no running daemon" in done.stderr, done.stderr
        assert done.stdout == ""

        # A control socket left behind by a daemon that died: nobody answers on it.
        (root / "data").mkdir()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(str(root / "data" / "meshd.sock"))
        done = meshd_status(root / "data")
        assert done.returncode == 3, done
        assert "did not answer" in done.stderr, done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
