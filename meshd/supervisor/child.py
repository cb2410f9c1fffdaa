"""A handle on one worker process: start it on the inherited socket, probe it, call its private
socket, stop it (drained or killed) and wait for it.

The supervisor holds one handle per child: the active worker, and the warm standby (spawned
with `standby=True`: it gets a channel, waits on it, and is promoted by `promote`).
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
from meshd.process import EXIT_DB_CORRUPT, STANDBY_READY, promotion_message

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
    channel: socket.socket | None = None  # a standby's end of its channel, until promoted
    ready_at: float | None = None  # a standby said it is imported and waiting
    promoted_at: float | None = None
    _ready_task: asyncio.Task | None = None

    @classmethod
    async def spawn(cls, settings: config.Settings, sock: socket.socket,
                    read_only_reason: str | None, standby: bool = False) -> WorkerHandle:
        """`meshd worker` with the settings, the listening socket and the mode it starts in;
        a standby gets a channel instead and learns its mode when promoted."""
        env = dict(os.environ)
        env.update(MESHD_WORKER_SETTINGS=config.to_json(settings),
                   MESHD_SUPERVISOR_PID=str(os.getpid()),
                   MESHD_LISTEN_FD=str(sock.fileno()),
                   MESHD_READ_ONLY=read_only_reason or "")
        env.pop("MESHD_STANDBY_FD", None)
        fds = [sock.fileno()]
        ours = theirs = None
        if standby:
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            env["MESHD_STANDBY_FD"] = str(theirs.fileno())
            fds.append(theirs.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshd", "worker", env=env, pass_fds=tuple(fds))
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        return cls(proc, settings.worker_socket, time.monotonic(), channel=ours)

    @property
    def standby(self) -> bool:
        return self.channel is not None

    def watch_ready(self) -> asyncio.Task:
        """A standby's task that ends True once it said it is imported and waiting (False
        when it ended first); cancelled when it is promoted or stopped."""
        self._ready_task = asyncio.ensure_future(self._wait_ready())
        return self._ready_task

    async def _wait_ready(self) -> bool:
        loop = asyncio.get_running_loop()
        data = b""
        try:
            while self.channel is not None and not data.endswith(b"\n"):
                chunk = await loop.sock_recv(self.channel, 64)
                if not chunk:
                    return False
                data += chunk
        except OSError:
            return False
        if data != STANDBY_READY:
            return False
        self.ready_at = time.monotonic()
        return True

    def promote(self, read_only_reason: str | None) -> bool:
        """Tell a standby to serve, in this mode; False when it can no longer be told (it
        died). From here it is the active worker: its start-up is timed from now."""
        channel = self._detach_channel()
        if channel is None or self.exited:
            if channel is not None:
                channel.close()
            return False
        try:
            # A few bytes into an empty socketpair buffer: never blocks, never partial.
            channel.send(promotion_message(read_only_reason))
        except OSError:
            return False
        finally:
            channel.close()
        self.started_at = self.promoted_at = time.monotonic()
        return True

    def _detach_channel(self) -> socket.socket | None:
        """Our end of a standby's channel, no longer watched by the event loop."""
        channel, self.channel = self.channel, None
        task, self._ready_task = self._ready_task, None
        if task is not None:
            task.cancel()
        if channel is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(channel.fileno())
        return channel

    def close_channel(self) -> None:
        channel = self._detach_channel()
        if channel is not None:
            channel.close()

    def rss_bytes(self) -> int | None:
        """Resident memory (Linux /proc), or None when it cannot be read."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

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

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float = CALL_TIMEOUT) -> Any:
        """One request on the worker's private socket (control.Unreachable/ControlError)."""
        return await control.request(self.socket_path, method, path, body, timeout)

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
        self.close_channel()  # a standby reads end of file and leaves
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
