"""Which state the daemon of a data directory is in, for operator commands that also work on
the files: a supervisor answering on its control socket, one holding its lock without
answering (hung: refuse), or none (work offline, after waiting for a worker that outlived a
killed supervisor to let go of the writer lock)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    liveness: control.Liveness = control.Liveness.NOT_RUNNING


def find(settings: config.Settings) -> Daemon:
    state = control.probe(settings.control_socket)
    if state is control.Liveness.ANSWERING:
        return Daemon(alive=True, liveness=state)
    pids = holders(settings.data_dir / "meshd.lock")
    return Daemon(alive=False, hung_pid=pids[0] if pids else None, liveness=state)


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, SIGTSTP, a debugger): state T or t in
    /proc/PID/stat (Linux); False where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "PID (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] in ("T", "t")


def stopped_hint(pid: int | None) -> str:
    """What to tell about the process holding meshd.lock, if any."""
    if pid is None:
        return ""
    if is_stopped(pid):
        return f"; supervisor pid {pid} is stopped: `kill -CONT {pid}` resumes it"
    return f"; supervisor pid {pid} holds meshd.lock"


def no_answer(settings: config.Settings, state: control.Liveness, detail: str = "") -> str:
    """The one wording for a command that needs the daemon and gets no answer: not running
    (no socket, or nobody listens on it) and not answering (it takes connections but says
    nothing: stopped or hung) are different troubles with different remedies."""
    path = settings.control_socket
    if state is control.Liveness.ANSWERING:  # it answers a probe, not this request in time
        return f"meshd: the daemon at {path} answers but not this request{detail}"
    if state is control.Liveness.NOT_ANSWERING:
        pids = holders(settings.data_dir / "meshd.lock")
        return (f"meshd: the daemon at {path} is not answering (stopped?): it takes "
                f"connections but gave no answer within {control.PROBE_DEADLINE:g} s"
                f"{stopped_hint(pids[0] if pids else None)}")
    if not path.exists():
        return (f"meshd: no running daemon: {path} does not exist, meshd is not running "
                "(start it with `meshd run`, or pass --data-dir/--config)")
    return (f"meshd: no running daemon: {path} did not answer: nothing listens on it, meshd is "
            f"not running (a socket file left by a daemon that died){detail}")


def refuse_if_hung(daemon: Daemon, settings: config.Settings, what: str) -> None:
    """A supervisor that holds its lock but does not answer must not have its files changed
    under it: say so and exit 1."""
    if daemon.hung_pid is not None:
        remedy = (f"it is stopped: resume it (kill -CONT {daemon.hung_pid}) or stop it"
                  if is_stopped(daemon.hung_pid) else "stop it")
        sys.stderr.write(
            f"meshd: cannot {what}: supervisor pid {daemon.hung_pid} holds "
            f"{settings.data_dir / 'meshd.lock'} but is not answering (stopped?) on "
            f"{settings.control_socket}; {remedy} (systemctl stop meshd, or kill it) first\n")
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
