"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie names a session kept
in the worker's memory (never the key itself), with its role and its CSRF token.

Sessions do not survive a worker restart: the operator logs in again. A state-changing
console request needs both a same-origin `Origin` (or `Referer`) and the session's CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "meshd_session"
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000  # the oldest is forgotten past this: a login flood cannot grow memory
VIEWER, ADMIN = "viewer", "admin"


@dataclass(slots=True)
class Session:
    id: str
    role: str
    csrf: str
    expires: float

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass
class Sessions:
    lifetime: float = LIFETIME
    _by_id: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def create(self, role: str) -> Session:
        session = Session(secrets.token_urlsafe(32), role, secrets.token_urlsafe(32),
                          time.monotonic() + self.lifetime)
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires < time.monotonic():
            self._by_id.pop(session_id, None)
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)


SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)


def current_session(request: web.Request) -> Session | None:
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        return None
    return sessions.get(request.cookies.get(COOKIE))


def set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/",
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
