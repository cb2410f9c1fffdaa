"""Errors that carry an HTTP status: raised by handlers and by store functions alike.

Neither layer imports the other's errors; the API's middleware turns these into JSON bodies.
"""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    status = 500
    content_type = "application/json"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


class Invalid(MeshError):
    status = 400


class Forbidden(MeshError):
    status = 403


class NotFound(MeshError):
    status = 404


class Conflict(MeshError):
    status = 409


class TooLarge(MeshError):
    status = 413


class UpgradeRequired(MeshError):
    """An RFC 9457 problem: the agent must upgrade before it may send (breaking update)."""

    status = 426
    content_type = "application/problem+json"


class Unavailable(MeshError):
    """The store cannot take writes now (read-only, restoring); retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after))


class InsufficientStorage(Unavailable):
    """The disk refused a write (ENOSPC, EROFS, EDQUOT); nothing was committed."""

    status = 507


class CorruptDatabase(Unavailable):
    """SQLite reported SQLITE_CORRUPT or SQLITE_NOTADB; recovery has been asked for."""
