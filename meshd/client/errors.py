"""The two ways a request can fail, as the SDK decides what to do next: wait or give up."""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    """A request that did not get a 2xx; `status` is None when no response came back."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Unavailable(MeshError):
    """The server cannot be reached or cannot serve right now (connection error, timeout,
    5xx, 408, 429): retrying later may work, so messages go to the offline queue."""


class Rejected(MeshError):
    """The server understood the request and refused it (a 4xx): retrying will not help."""
