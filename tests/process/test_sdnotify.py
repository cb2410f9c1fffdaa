"""sd_notify as systemd sees it: a real unix datagram socket named by NOTIFY_SOCKET receives
READY=1 once the worker answers /health, WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= lines and
STOPPING=1 at shutdown; in a crash loop the pings stop so systemd's restart policy takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess, poll

pytestmark = pytest.mark.process

QUIET = ("--access-log", "false")
WATCHDOG_USEC = 400_000
PING = WATCHDOG_USEC / 1e6 / 2  # the supervisor pings at half the watchdog timeout


@dataclass
class Message:
    at: float
    fields: dict[str, str]
    health_at_receipt: int | None = None  # GET /health status when READY=1 arrived

    def has(self, key: str, value: str | None = None) -> bool:
        return key in self.fields and (value is None or self.fields[key] == value)


@dataclass
class NotifyListener:
    """A bound AF_UNIX/SOCK_DGRAM socket read by a thread; `messages` in order of arrival.

    On READY=1 the thread asks GET /health at once (with a short timeout), so a test can tell
    whether the worker really answered when the supervisor declared itself ready."""

    path: Path
    health_url: str
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            message = Message(at, fields)
            if message.has("READY", "1"):
                message.health_at_receipt = self._health()
            with self._lock:
                self.messages.append(message)

    def _health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.health_url, timeout=0.5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15,
                 after: int = 0) -> int:
        """The index of the first message from index `after` on that has `key` (= `value`)."""
        def find() -> tuple[int] | None:  # a tuple: index 0 is a find, not a falsy result
            msgs = self.snapshot()
            return next(((i,) for i in range(after, len(msgs)) if msgs[i].has(key, value)),
                        None)

        try:
            return poll(find, timeout, f"sd_notify {key}={value or '*'}")[0]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; received: {self.summary()}") from None

    def summary(self, limit: int = 30) -> list[str]:
        return [",".join(f"{k}={v}" for k, v in m.fields.items())
                for m in self.snapshot()[-limit:]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notified(meshd_proc):
    """A meshd (not started) and a listener on the socket its NOTIFY_SOCKET names."""
    proc: MeshdProcess = meshd_proc()
    listener = NotifyListener(proc.root / "notify.sock", proc.url + "/health")
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    yield proc, listener, env
    listener.close()


def test_ready_watchdog_status_and_stopping_arrive_in_order(notified):
    proc, listener, env = notified
    proc.start(QUIET, env=env)

    ready = listener.wait_for("READY", "1")
    message = listener.snapshot()[ready]
    assert message.health_at_receipt == 200, (
        f"READY=1 came before the worker answered /health ({message.health_at_receipt})")
    assert message.fields.get("STATUS"), message.fields
    assert message.fields.get("MAINPID") == str(proc.pid), message.fields
    # The supervisor's periodic status line, e.g. "serving read-write, 0 agents".
    status = listener.wait_for("STATUS", after=ready + 1, timeout=10)
    assert "serving" in listener.snapshot()[status].fields["STATUS"]
    poll(lambda: sum(m.has("WATCHDOG", "1") for m in listener.snapshot()[ready:]) >= 5, 5,
         "5 WATCHDOG=1 pings after READY=1")

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(15) == 0, proc.log_tail()
    stopping = listener.wait_for("STOPPING", "1", timeout=5)

    msgs = listener.snapshot()
    assert ready < stopping
    assert sum(m.has("READY", "1") for m in msgs) == 1, listener.summary()
    pings = [m.at for m in msgs[ready:stopping] if m.has("WATCHDOG", "1")]
    assert len(pings) >= 2, listener.summary()
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    # systemd would kill the service after WATCHDOG_USEC without a ping.
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"ping gaps {gaps}"
    assert msgs[stopping].fields.get("STATUS") is not None, msgs[stopping].fields
    assert not any(m.has("READY") for m in msgs[stopping:]), listener.summary()


async def test_watchdog_pings_stop_in_a_crash_loop(notified):
    proc, listener, env = notified
    proc.start((*QUIET, "--crash-loop-limit", "1", "--crash-loop-window", "60s"), env=env)
    first = await asyncio.to_thread(proc.wait_serving)
    await asyncio.to_thread(listener.wait_for, "WATCHDOG", "1")

    # limit 1: the first crash restarts at once, the second is a crash loop.
    os.kill(first["worker_pid"], signal.SIGKILL)
    second = await asyncio.to_thread(proc.wait_serving, first["worker_pid"])
    os.kill(second["worker_pid"], signal.SIGKILL)

    def crash_loop() -> bool:
        return proc.status()["state"] == "crash-loop"

    await asyncio.to_thread(poll, crash_loop, 15, "the crash-loop state", 0.1)
    def crash_loop_status() -> tuple[int] | None:
        return next(((i,) for i, m in enumerate(listener.snapshot())
                     if "crash loop" in m.fields.get("STATUS", "")), None)

    (looped,) = await asyncio.to_thread(poll, crash_loop_status, 5,
                                        "a STATUS= line naming the crash loop")
    before = listener.snapshot()[:looped]
    assert any(m.has("WATCHDOG", "1") for m in before), "pings before the crash loop"

    await asyncio.sleep(4 * PING + 0.2)  # more than 3 watchdog intervals

    after = listener.snapshot()[looped:]
    assert not any(m.has("WATCHDOG", "1") for m in after), (
        f"WATCHDOG=1 after the crash loop: {listener.summary()}")
    assert time.monotonic() - listener.snapshot()[looped].at > 3 * PING
    assert proc.running()
