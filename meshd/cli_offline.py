"""Which state the daemon of a data directory is in, for operator commands that also work on
the files: a supervisor answering on its control socket, one holding its lock without
answering (hung: refuse), or none (work offline, after waiting for a worker that outlived a
killed supervisor to let go of the writer lock)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from meshd import config
from meshd.control import client as control
from meshd.locks import FileLock, LockBusy, holders

# How long an offline command waits for the writer lock: a worker orphaned by a `kill -9` of
# its supervisor gets SIGTERM and drains for up to drain_timeout before it lets go.
LOCK_WAIT_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class Daemon:
    alive: bool  # a supervisor answers on the control socket
    hung_pid: int | None = None  # holds meshd.lock but does not answer


def find(settings: config.Settings) -> Daemon:
    if control.alive(settings.control_socket):
        return Daemon(alive=True)
    pids = holders(settings.data_dir / "meshd.lock")
    return Daemon(alive=False, hung_pid=pids[0] if pids else None)


def refuse_if_hung(daemon: Daemon, settings: config.Settings, what: str) -> None:
    """A supervisor that holds its lock but does not answer must not have its files changed
    under it: say so and exit 1."""
    if daemon.hung_pid is not None:
        sys.stderr.write(
            f"meshd: cannot {what}: supervisor pid {daemon.hung_pid} holds "
            f"{settings.data_dir / 'meshd.lock'} but does not answer on "
            f"{settings.control_socket}; stop it (systemctl stop meshd, or kill it) first\n")
        raise SystemExit(1)


def writer_lock(settings: config.Settings, wait: float | None = None) -> FileLock:
    """The writer lock for an offline command, waited for (bounded) while another process
    holds it, that process named on stderr; exit 1 naming it if it never lets go."""
    wait = settings.drain_timeout + LOCK_WAIT_MARGIN if wait is None else wait
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(settings.data_dir / "writer.lock")
    try:
        lock.acquire(timeout=0)
        return lock
    except LockBusy:
        pass
    path = settings.data_dir / "writer.lock"
    named = ", ".join(f"pid {p}" for p in holders(path)) or "another process"
    sys.stderr.write(f"meshd: waiting up to {wait:g} s for {named} to release {path} (a worker "
                     "still draining after its supervisor died?)\n")
    started = time.monotonic()
    try:
        lock.acquire(timeout=wait)
    except LockBusy:
        named = ", ".join(f"pid {p}" for p in holders(path)) or "another process"
        sys.stderr.write(f"meshd: {named} still holds {path} after {wait:g} s; stop it "
                         "(e.g. kill it) and run the command again\n")
        raise SystemExit(1) from None
    sys.stderr.write(f"meshd: {path} released after {time.monotonic() - started:.1f} s\n")
    return lock
