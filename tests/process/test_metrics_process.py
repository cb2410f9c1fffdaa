"""/metrics on a real `meshd run`: after traffic, a kill -9 of the worker and a backup, each
family has the right value, the worker's and the supervisor's figures together pass
`promtool check metrics`; in a crash loop the supervisor's fallback serves /metrics itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys

import aiohttp
import pytest

from tests.api.test_metrics import samples, value  # one parser of the exposition
from tests.process.harness import api, async_poll, clean_env, poll, register_agents

pytestmark = pytest.mark.process

QUIET = ("--access-log", "false")




async def scrape(proc, expect: int = 200) -> str:
    async with aiohttp.ClientSession() as session, session.get(proc.url + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == expect, text
    return text


def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (make test installs Debian's prometheus)")
    done = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def backup_now(proc) -> None:
    done = subprocess.run([sys.executable, "-m", "meshd", "backup", "--data-dir",
                           str(proc.data_dir)], capture_output=True, text=True, timeout=60,
                          env=clean_env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr


def next_worker(proc, old_pid: int) -> dict:
    return proc.wait_serving(other_than=old_pid)


async def test_metrics_after_traffic_a_kill_and_a_backup(meshd_proc):
    proc = meshd_proc().start((*QUIET, "--crash-loop-limit", "1", "--crash-loop-window", "5m",
                               "--quick-check-interval", "1s"))
    first = await asyncio.to_thread(proc.wait_serving)
    before = samples(await scrape(proc))
    assert value(before, "meshd_supervisor_scrape_ok") == 1
    assert value(before, "meshd_worker_restarts_total") == 0
    backups_before = value(before, "meshd_backups_total", result="success")

    os.kill(first["worker_pid"], signal.SIGKILL)
    await asyncio.to_thread(next_worker, proc, first["worker_pid"])
    await asyncio.to_thread(backup_now, proc)
    async with aiohttp.ClientSession() as session:
        ids = await register_agents(session, proc, ("alpha", "beta"))
        for i in range(4):
            status, body = await api(session, proc, "POST", "/api/messages",
                                     {"from": ids[0], "to": ids[1], "content": f"m{i}"})
            assert status == 200, body
        status, _ = await api(session, proc, "POST", f"/api/agents/{ids[0]}/health",
                              {"status": "healthy"})
        assert status == 200

    async def checked() -> str | None:
        text = await scrape(proc)
        key = ("meshd_integrity_checks_total", (("kind", "quick_check"), ("result", "ok")))
        return text if samples(text).get(key, 0) >= 1 else None

    text = await async_poll(checked, 15, "a quick_check counted in /metrics", 0.2)
    promtool_check(text)
    found = samples(text)
    assert value(found, "meshd_integrity_check_ok", kind="quick_check") == 1
    assert value(found, "meshd_integrity_checks_total", kind="quick_check",
                 result="failed") == 0
    assert value(found, "meshd_integrity_check_timestamp_seconds", kind="quick_check") > 0
    assert value(found, "meshd_supervisor_scrape_ok") == 1
    assert value(found, "meshd_worker_restarts_total") == 1
    assert value(found, "meshd_crash_loop") == 0
    assert value(found, "meshd_worker_up") == 1
    assert value(found, "meshd_supervisor_state", state="serving") == 1
    assert value(found, "meshd_backups_total", result="success") == backups_before + 1
    assert value(found, "meshd_backup_last_success") == 1
    assert value(found, "meshd_backup_size_bytes") > 0
    assert value(found, "meshd_backup_verified") == 1
    assert value(found, "meshd_backup_age_seconds") < 300
    assert value(found, "meshd_http_requests_total", route="/api/messages", method="POST",
                 status="200") == 4
    assert value(found, "meshd_http_requests_total", route="/api/agents/register",
                 method="POST", status="200") == 2
    assert value(found, "meshd_messages_pending") == 4
    assert value(found, "meshd_agents", state="healthy") == 1
    assert value(found, "meshd_agents", state="unknown") == 1
    assert value(found, "meshd_read_only") == 0
    assert value(found, "meshd_journal_seq") >= 7
    assert value(found, "meshd_group_commit_batch_size_count") >= 1
    crash_runs = sum(value(found, "meshd_protocol_runs", protocol="server_crash_recovery",
                           outcome=o) for o in ("running", "completed", "failed", "aborted"))
    assert crash_runs == 1, "the kill -9 started one crash protocol run"
    assert value(found, "meshd_alert_hook_failures_total", hook="command") == 0

    # A second crash within the window is a crash loop: no worker, the supervisor's fallback
    # answers /metrics on the same port with its own figures.
    pid = proc.worker_pid()
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(poll, lambda: proc.status()["state"] == "crash-loop", 15,
                            "the crash loop")
    text = await scrape(proc)
    promtool_check(text)
    found = samples(text)
    assert value(found, "meshd_crash_loop") == 1
    assert value(found, "meshd_worker_up") == 0
    assert value(found, "meshd_supervisor_state", state="crash-loop") == 1
    assert value(found, "meshd_backups_total", result="success") == backups_before + 1
    assert not any(name.startswith("meshd_http_requests") for name, _ in found)
    async with aiohttp.ClientSession() as session, session.get(proc.url + "/health") as resp:
        assert resp.status == 503, "everything else still answers 503"
