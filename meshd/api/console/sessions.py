"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie names a session kept
on the server (never the key itself), with its role and its CSRF token.

A state-changing console request needs both a same-origin `Origin` (or `Referer`) and the
session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from meshd import log as logging
from meshd.locks import write_atomic

log = logging.get("meshd.console")

COOKIE = "meshd_session"
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000  # the oldest is forgotten past this: a login flood cannot grow memory
VIEWER, ADMIN = "viewer", "admin"


@dataclass(slots=True)
class Session:
    key: str  # SHA-256 of the cookie's id: the id itself is never stored
    role: str
    csrf: str
    expires: float  # Unix time: sessions outlive a worker restart

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Sessions:
    """Sessions by the digest of their id, saved to `path` (0600) on every login and logout,
    so a worker restart (a crash, a restore) does not log the operator out; a copy of the file
    holds no usable cookie."""

    path: Path | None = None
    lifetime: float = LIFETIME
    _by_key: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._load()

    def create(self, role: str) -> tuple[str, Session]:
        """A new session and the id for its cookie."""
        session_id = secrets.token_urlsafe(32)
        session = Session(_digest(session_id), role, secrets.token_urlsafe(32),
                          time.time() + self.lifetime)
        self._by_key[session.key] = session
        while len(self._by_key) > MAX_SESSIONS:
            self._by_key.popitem(last=False)
        self._save()
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_key.get(_digest(session_id))
        if session is None:
            return None
        if session.expires < time.time():
            self.drop(session)
            return None
        return session

    def drop(self, session: Session) -> None:
        if self._by_key.pop(session.key, None) is not None:
            self._save()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            rows = orjson.loads(self.path.read_bytes())
            now = time.time()
            for row in rows:
                session = Session(**row)
                if session.expires >= now:
                    self._by_key[session.key] = session
        except FileNotFoundError:
            return
        except (orjson.JSONDecodeError, TypeError, OSError) as exc:
            log.warning("console.sessions_unreadable", path=str(self.path), error=str(exc))

    def _save(self) -> None:
        """Logins and logouts are rare: a small synchronous atomic write is fine."""
        if self.path is None:
            return
        now = time.time()
        rows = [asdict(s) for s in self._by_key.values() if s.expires >= now]
        try:
            write_atomic(self.path, orjson.dumps(rows))
        except OSError as exc:  # a full disk: sessions still work until the worker restarts
            log.warning("console.sessions_not_saved", path=str(self.path), error=str(exc))


SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)


@dataclass
class LoginThrottle:
    """Failed logins by client address: past `limit` within `window` seconds the address gets
    429 (right key included) until its oldest failure leaves the window, so a key cannot be
    guessed through the login form at speed. Bounded: the oldest addresses are forgotten."""

    limit: int = 10
    window: float = 60.0
    max_addresses: int = 10_000
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it may now."""
        failures = self._failures.get(address)
        if not failures:
            return None
        now = time.monotonic()
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return max(0.0, self.window - (now - failures[0]))

    def failed(self, address: str) -> None:
        self._failures.setdefault(address, deque()).append(time.monotonic())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("console_login_throttle", LoginThrottle)


def current_session(request: web.Request) -> Session | None:
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        return None
    return sessions.get(request.cookies.get(COOKIE))


def set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=int(LIFETIME))


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: web.Request) -> bool:
    """The request comes from a page of this server: its `Origin` (else `Referer`) names
    this host. A request with neither is refused: browsers send one on every POST and
    WebSocket handshake, so only a page elsewhere, or a client that is no browser, lacks it."""
    claimed = request.headers.get("Origin")
    if claimed is None or claimed == "null":
        referer = request.headers.get("Referer")
        claimed = _origin_of(referer) if referer else None
    if not claimed:
        return False
    expected = f"{request.scheme}://{request.host}".lower()
    return claimed.lower().rstrip("/") == expected


def csrf_ok(request: web.Request, session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(presented.encode(), session.csrf.encode())


def ws_access(request: web.Request) -> bool | None:
    """A WebSocket handshake carrying a console session: True from this server's pages,
    False from anywhere else (a foreign page riding the cookie); None without a session."""
    session = current_session(request)
    if session is None:
        return None
    return same_origin(request)
