"""The one client of meshd's unix sockets: the CLI and the worker call the supervisor's control
socket with it, the supervisor calls the worker's private socket with it.

One framing (HTTP/1.1 with JSON bodies over a unix socket) and one error convention: a status
of 400 or more carries `{"error": "..."}` and becomes `ControlError`; no answer at all (no
socket file, nobody listening, a dead daemon's stale socket) is `Unreachable`.
"""

from __future__ import annotations

import enum
import http.client
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson


class Unreachable(Exception):
    """Nobody answers on the socket: the daemon (or worker) is not running."""


class ControlError(Exception):
    """The other side answered with an error status; `message` is its `error` field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# How long `probe` waits for an answer. A live daemon answers /ping from its event loop in
# milliseconds; the deadline is for a loaded machine, and short beside a command's own timeout.
PROBE_DEADLINE = 5.0
PING = b"GET /ping HTTP/1.1\r\nHost: meshd\r\nConnection: close\r\n\r\n"


class Liveness(enum.Enum):
    ANSWERING = "answering"
    NOT_ANSWERING = "not answering"  # the socket takes connections, nothing answers: stopped?
    NOT_RUNNING = "not running"  # no socket file, or nobody listens on it


def probe(path: Path, timeout: float = PROBE_DEADLINE) -> Liveness:
    """One request and the start of its answer within `timeout`, in all.

    A connect alone proves nothing: the kernel completes it from the listen backlog while the
    process is SIGSTOPped (or hung), so a stopped daemon would count as alive and a command
    would wait out its own long timeout. Any HTTP answer counts, an error status included (an
    older daemon without /ping answers 404). A socket file nobody listens on (a daemon killed
    by SIGKILL leaves it behind) is not running."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except TimeoutError:  # the backlog is full: a listener that has long stopped accepting
            return Liveness.NOT_ANSWERING
        except OSError:
            return Liveness.NOT_RUNNING
        head = b""
        try:
            sock.sendall(PING)
            while len(head) < 5:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Liveness.NOT_ANSWERING
                sock.settimeout(left)
                chunk = sock.recv(16)
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            return Liveness.NOT_ANSWERING
        except OSError:  # reset: it died while we asked
            return Liveness.NOT_RUNNING
    return Liveness.ANSWERING if head.startswith(b"HTTP/") else Liveness.NOT_ANSWERING


def alive(path: Path, timeout: float = PROBE_DEADLINE) -> bool:
    """Whether a daemon answers on the socket (see `probe`): blocking, so never call it from
    the event loop that serves the socket."""
    return probe(path, timeout) is Liveness.ANSWERING


async def exchange(path: Path, method: str, route: str, body: Any = None,
                   timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; `Unreachable` when nobody answers."""
    status, raw = await exchange_raw(path, method, route, body, timeout)
    return status, _decode(status, raw)


async def exchange_raw(path: Path, method: str, route: str, body: Any = None,
                       timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body bytes): for the few routes that answer text (the metrics exposition)."""
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, f"http://meshd{route}",
            data=None if body is None else orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise Unreachable(f"nothing answers on {path}: {exc}") from None
    except TimeoutError:
        raise Unreachable(f"{path} did not answer within {timeout:g} s") from None


async def request(path: Path, method: str, route: str, body: Any = None,
                  timeout: float = 30.0) -> Any:
    """The parsed body of a successful request; `ControlError` for an error status."""
    return _checked(*await exchange(path, method, route, body, timeout))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("meshd", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request_sync(path: Path, method: str, route: str, body: Any = None,
                 timeout: float = 30.0) -> Any:
    """`request` for code without an event loop: the command line, and the writer thread
    (replica_sync), which must block until it knows. Same framing and errors."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, route, None if body is None else orjson.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    except (FileNotFoundError, ConnectionError) as exc:
        raise Unreachable(f"nothing answers on {path}: {exc}") from None
    except TimeoutError:
        raise Unreachable(f"{path} did not answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{path}: {exc}") from None
    finally:
        conn.close()
    return _checked(status, _decode(status, raw))


def _checked(status: int, data: Any) -> Any:
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        raise ControlError(status, str(message or data))
    return data


def _decode(status: int, raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        # Not our convention (a proxy, an old daemon): keep the text as the error.
        return {"error": f"answered {status} with non-JSON: {raw[:300].decode(errors='replace')}"}
