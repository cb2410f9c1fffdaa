"""A handle on one worker process: start it on the inherited socket, probe it, call its private
socket, stop it (drained or killed) and wait for it.

The supervisor holds one handle per child, so holding a second, standby worker later is a
second handle, not a change to this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meshd import config
from meshd.control import client as control
from meshd.process import EXIT_DB_CORRUPT

# How long a call on the worker's private socket may take (records, mode, status, self-test).
CALL_TIMEOUT = 5.0


@dataclass(eq=False)
class WorkerHandle:
    proc: asyncio.subprocess.Process
    socket_path: Path  # the worker's private socket
    started_at: float
    healthy_at: float | None = None
    failures: int = 0  # consecutive failed probes
    expected_exit: bool = False  # we asked it to stop: its exit is not a crash
    kill_reason: str | None = None  # why we killed it, reported instead of the signal

    @classmethod
    async def spawn(cls, settings: config.Settings, sock: socket.socket,
                    read_only_reason: str | None) -> WorkerHandle:
        """`meshd worker` with the settings, the listening socket and the mode it starts in."""
        env = dict(os.environ)
        env.update(MESHD_WORKER_SETTINGS=config.to_json(settings),
                   MESHD_SUPERVISOR_PID=str(os.getpid()),
                   MESHD_LISTEN_FD=str(sock.fileno()),
                   MESHD_READ_ONLY=read_only_reason or "")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "worker", env=env, pass_fds=(sock.fileno(),))
        return cls(proc, settings.worker_socket, time.monotonic())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exited(self) -> bool:
        return self.proc.returncode is not None

    @property
    def healthy(self) -> bool:
        return self.healthy_at is not None and not self.exited

    def exit_reason(self) -> str:
        return self.kill_reason or describe_exit(self.proc.returncode)

    async def probe(self, url: str, timeout: float) -> bool:
        """GET /health on the shared port: 200 within `timeout` is alive."""
        try:
            async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request on the worker's private socket (control.Unreachable/ControlError)."""
        return await control.request(self.socket_path, method, path, body, CALL_TIMEOUT)

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def kill(self, reason: str | None = None) -> int:
        if reason:
            self.kill_reason = reason
        self.send(signal.SIGKILL)
        return await self.wait()

    async def stop(self, drain_timeout: float, kill: bool = False) -> int | None:
        """Stop on purpose: SIGTERM and wait for the drain (SIGKILL after it), or SIGKILL
        at once. Returns the exit code, or None when it had to be killed after the drain."""
        self.expected_exit = True
        self.send(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), drain_timeout + 5)
        except TimeoutError:
            self.send(signal.SIGKILL)
            await self.wait()
            return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    if code == EXIT_DB_CORRUPT:
        return "exited: database corrupt"
    return f"exited with code {code}"


def probe_host(host: str) -> str:
    """Where to reach the API from this host, whatever address it listens on."""
    if host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
