"""A SIGSTOPped supervisor is not a running daemon: its control socket still takes connections
(the kernel completes them from the listen backlog) but nothing answers. Operator commands say
"not answering (stopped?)" at once, name the process and how to resume it, refuse to change
its files, and tell that apart from a daemon that is not running at all."""

from __future__ import annotations

import os
import signal

import pytest

from meshd import cli_offline
from tests.process.harness import meshd_cli, meshd_status, poll

pytestmark = pytest.mark.process

QUIET = ("--access-log", "false")


def test_a_stopped_supervisor_is_not_answering_and_a_gone_one_is_not_running(meshd_proc):
    proc = meshd_proc().start(QUIET)
    proc.wait_healthy()
    assert proc.status()["supervisor_pid"] == proc.pid

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        poll(lambda: cli_offline.is_stopped(proc.pid), 10, "the supervisor to be stopped")
        done = meshd_status(proc.data_dir)
        assert done.returncode == 3, done
        assert "not answering (stopped?)" in done.stderr, done.stderr
        assert f"kill -CONT {proc.pid}" in done.stderr, done.stderr
        assert "not running" not in done.stderr and done.stdout == ""

        # A command that would change the files under it refuses, naming the remedy.
        restore = meshd_cli(proc, "restore", "--yes")
        assert restore.returncode == 1, restore
        assert f"supervisor pid {proc.pid}" in restore.stderr, restore.stderr
        assert "not answering (stopped?)" in restore.stderr, restore.stderr
        assert f"kill -CONT {proc.pid}" in restore.stderr, restore.stderr
    finally:
        os.kill(proc.pid, signal.SIGCONT)

    poll(lambda: meshd_status(proc.data_dir).returncode == 0, 15,
         "meshd status to answer again after SIGCONT")
    assert proc.healthy()

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(60) == 0
    gone = meshd_status(proc.data_dir)
    assert gone.returncode == 3, gone
    assert "not running" in gone.stderr and "not answering" not in gone.stderr, gone.stderr
