"""A real `meshd run` in a subprocess for process-level tests: start, probe, signal, kill.

Blocking methods poll with deadlines; from an async test call them through
`asyncio.to_thread(...)` so that load tasks keep running while the test waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from json import loads as json_loads
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.support import async_poll, poll  # noqa: F401 - tests import them from here

API_KEY = "process-test-key"
# Variables that configure meshd: a test's server sees only the ones the test passes.
_MESHD_ENV_PREFIXES = ("MESHD_",)
_MESHD_ENV_NAMES = ("AGENT_MESH_API_KEY", "PORT", "STATE_DIRECTORY", "NOTIFY_SOCKET",
                    "WATCHDOG_USEC", "WATCHDOG_PID")
# Set in every process a test starts (and inherited by its children), so teardown finds a
# worker even after its supervisor died and it was re-parented.
TREE_MARKER = "MESHD_TEST_TREE"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def short_tmp_dir() -> Path:
    """A fresh directory under /tmp with a short path: unix socket paths must stay < 108 bytes.

    The caller removes it (the `meshd_proc` fixture does)."""
    return Path(tempfile.mkdtemp(dir="/tmp", prefix="m"))


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without meshd settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in _MESHD_ENV_NAMES and not k.startswith(_MESHD_ENV_PREFIXES)}
    env.update(extra or {})
    return env


@dataclass
class MeshdProcess:
    """One meshd daemon (the supervisor once there is one) and its files under `root`.

    `start()` may be called again after the process exited: the next run uses the same data
    dir and writes its own log file (`run-2.log`, ...)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    key: str | None = API_KEY  # None: no --api-key flag (meshd's default key)
    popen: subprocess.Popen | None = field(default=None, init=False, repr=False)
    logs: list[Path] = field(default_factory=list, init=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def backup_dir(self) -> Path:
        return self.root / "backups"

    @property
    def database(self) -> Path:
        return self.data_dir / "mesh.db"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key} if self.key else {}

    @property
    def pid(self) -> int:
        assert self.popen is not None, "meshd was not started"
        return self.popen.pid

    @property
    def log_path(self) -> Path:
        assert self.logs, "meshd was not started"
        return self.logs[-1]

    def command(self, extra_args: Iterable[str] = ()) -> list[str]:
        args = [sys.executable, "-m", "meshd", "run", "--host", self.host,
                "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--backup-dir", str(self.backup_dir), "--log-format", "json"]
        if self.key is not None:
            args += ["--api-key", self.key]
        return args + list(extra_args)

    def start(self, extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None
              ) -> MeshdProcess:
        """Spawn meshd in its own session (so its whole tree can be signalled) and return."""
        assert self.popen is None or self.popen.poll() is not None, "meshd is still running"
        log = self.root / f"run-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                self.command(extra_args), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env={**clean_env(env), TREE_MARKER: str(self.root)},
                cwd=self.root,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def healthy(self) -> bool:
        """True when GET /health answers 200 right now."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 15) -> None:
        """Poll GET /health until it answers 200; fail early if the process exits."""
        def ready() -> bool:
            if not self.running():
                raise AssertionError(f"meshd exited with {self.popen.returncode} before "
                                     f"answering /health:\n{self.log_tail()}")
            return self.healthy()

        poll(ready, timeout, f"GET {self.url}/health to answer 200", interval=0.05)

    def signal(self, sig: int, group: bool = False) -> None:
        """Send `sig` to meshd's main process, or with `group` to its whole process group
        (as a terminal's Ctrl-C does)."""
        if group:
            os.killpg(self.pid, sig)
        else:
            self.popen.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit code; AssertionError (with the log tail) if still running at the deadline."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"meshd still running {timeout}s later:\n"
                                 f"{self.log_tail()}") from None

    def descendants(self) -> list[psutil.Process]:
        """meshd's live child processes (the worker, once there is a supervisor)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def tree(self) -> list[psutil.Process]:
        """Every live process this object started and their children, orphans included."""
        found = []
        for candidate in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if candidate.environ().get(TREE_MARKER) == str(self.root):
                    found.append(candidate)
        return found

    def kill_tree(self) -> None:
        """SIGKILL the process group and every process of `tree()`, then reap them."""
        if self.popen is None:
            return
        members = self.tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signals.SIGKILL)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        psutil.wait_procs(members, timeout=5)

    def log_text(self, run: int = -1) -> str:
        """Everything one run (default: the latest) wrote to stdout and stderr."""
        return self.logs[run].read_text(errors="replace")

    def log_tail(self, n: int = 40, run: int = -1) -> str:
        if not self.logs:
            return "(meshd was not started)"
        lines = self.log_text(run).splitlines()
        return "\n".join(lines[-n:])

    def log_events(self, run: int = -1) -> list[dict[str, Any]]:
        """The JSON log lines of one run, parsed; other lines are skipped."""
        events = []
        for line in self.log_text(run).splitlines():
            with contextlib.suppress(ValueError):
                obj = json_loads(line)
                if isinstance(obj, dict) and "event" in obj:
                    events.append(obj)
        return events

    def status(self) -> dict[str, Any]:
        """The supervisor's view from `meshd status --json` (a real CLI subprocess)."""
        done = meshd_status(self.data_dir)
        assert done.returncode == 0, f"meshd status exited {done.returncode}: {done.stderr}"
        return json_loads(done.stdout)

    def worker_pid(self) -> int | None:
        return self.status()["worker_pid"]

    def wait_serving(self, other_than: int | None = None, timeout: float = 15) -> dict[str, Any]:
        """Poll `meshd status` until a worker (other than pid `other_than`) passed its first
        probe; that status. Fails early if meshd exits."""
        def serving() -> dict[str, Any] | None:
            if not self.running():
                raise AssertionError(f"meshd exited with {self.popen.returncode}:\n"
                                     f"{self.log_tail()}")
            done = meshd_status(self.data_dir)
            if done.returncode == 3:
                return None  # the control socket is not up yet
            assert done.returncode == 0, f"meshd status exited {done.returncode}: {done.stderr}"
            data = json_loads(done.stdout)
            if (data["state"] == "serving" and data["worker_pid"] is not None
                    and data["worker_pid"] != other_than):
                return data
            return None

        return poll(serving, timeout, f"a serving worker other than {other_than}", 0.1)

    def wait_log_event(self, event: str, timeout: float = 10) -> dict[str, Any]:
        """The first log event named `event` of the current run, polled for."""
        def find() -> dict[str, Any] | None:
            return next((e for e in self.log_events() if e["event"] == event), None)

        return poll(find, timeout, f"log event {event!r}", interval=0.05)


def meshd_cli(where: MeshdProcess | Path, *args: str, timeout: float = 60,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`meshd <args> --data-dir D` in a subprocess (stdout is a pipe, not a TTY: JSON output),
    for a process (run in its root) or a data directory."""
    data_dir = where.data_dir if isinstance(where, MeshdProcess) else where
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=timeout, env=clean_env(env),
        cwd=where.root if isinstance(where, MeshdProcess) else None,
        stdin=subprocess.DEVNULL)


def meshd_on_tty(args: Iterable[str], answer: bytes = b"", stderr_too: bool = False,
                 timeout: float = 60) -> tuple[int, str, str]:
    """`meshd ARGS` with stdin and stdout (and with `stderr_too` stderr) on a pseudo-terminal,
    as a person runs it, 200 columns wide; `answer` is typed first. (exit code, terminal
    output, stderr)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "meshd", *args], stdin=slave,
                                stdout=slave, stderr=slave if stderr_too else subprocess.PIPE,
                                env=clean_env({"COLUMNS": "200"}))
        os.close(slave)
        slave = -1
        if answer:
            os.write(master, answer)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        err = proc.stderr.read().decode() if proc.stderr else ""
        code = proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), err


def meshd_status(data_dir: Path, *, as_json: bool = True, timeout: float = 15
                 ) -> subprocess.CompletedProcess:
    """`meshd status --data-dir D [--json]` in a subprocess."""
    return meshd_cli(data_dir, "status", *(["--json"] if as_json else []), timeout=timeout)


async def api(session: aiohttp.ClientSession, proc: MeshdProcess, method: str, path: str,
              json: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of one request carrying the process's API key."""
    async with session.request(method, proc.url + path, json=json,
                               headers=proc.headers) as resp:
        text = await resp.text()
    try:
        return resp.status, json_loads(text)
    except ValueError:
        return resp.status, text


async def register_agent(session: aiohttp.ClientSession, proc: MeshdProcess, name: str) -> str:
    """POST /api/agents/register (a 200 expected); the agent's id."""
    status, body = await api(session, proc, "POST", "/api/agents/register", {"name": name})
    assert status == 200, (name, status, body)
    return body["agentId"]


async def write_latencies(proc: MeshdProcess, prefix: str, count: int) -> list[float]:
    """`count` sequential registrations, each one timed, in seconds, sorted (figures for a
    report or a bench, never asserted)."""
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            started = time.perf_counter()
            await register_agent(session, proc, f"{prefix}-{i}")
            out.append(time.perf_counter() - started)
    return sorted(out)


async def register_agents(session: aiohttp.ClientSession, proc: MeshdProcess,
                          names: Iterable[str]) -> list[str]:
    """`register_agent` for each name in turn; their ids."""
    return [await register_agent(session, proc, name) for name in names]


@dataclass
class WriteLoad:
    """Concurrent writers registering uniquely named agents until stopped.

    `acked` holds every name that got a 2xx; `failures` holds (monotonic time, name,
    status or exception) of everything else, so a test can tell failures before a signal
    from those while the server went away."""

    proc: MeshdProcess
    prefix: str
    acked: list[str] = field(default_factory=list)
    failures: list[tuple[float, str, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            name = f"{self.prefix}-{n}-{i}"
            i += 1
            try:
                status, body = await api(session, self.proc, "POST", "/api/agents/register",
                                         {"name": name})
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.failures.append((time.monotonic(), name, exc))
                await asyncio.sleep(0.02)  # the server is gone or restarting: don't spin
                continue
            if 200 <= status < 300:
                self.acked.append(name)
            else:
                self.failures.append((time.monotonic(), name, status))

    @contextlib.asynccontextmanager
    async def running(self, writers: int = 8) -> AsyncIterator[WriteLoad]:
        """The writers run for the body of the `async with`, and are stopped and awaited
        however it ends."""
        task = asyncio.create_task(self.run(writers))
        try:
            yield self
        finally:
            self.stop.set()
            await task

    async def run(self, writers: int = 8) -> None:
        """Run `writers` writers until `stop` is set."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self.writer(session, n) for n in range(writers)))

    def failures_before(self, moment: float) -> list[tuple[float, str, Any]]:
        return [f for f in self.failures if f[0] < moment]

    def server_errors(self) -> list[tuple[float, str, Any]]:
        return [f for f in self.failures if isinstance(f[2], int) and f[2] >= 500]
