"""What the API needs of the supervisor (typed here so api/ imports neither the supervisor nor
the worker): forward an operator's call, start a protocol. The worker passes its control-socket
client (`worker.supervisor_client`); without one (tests, embedding) the API runs unsupervised.
"""

from __future__ import annotations

from typing import Any, Protocol

from meshd import log as logging
from meshd.errors import Unavailable

log = logging.get("meshd.supervisor_client")


class SupervisorLink(Protocol):
    supervised: bool

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float = 30.0) -> tuple[int, Any]:
        """(status, JSON body) of a control-socket request; 503 `Unavailable` if none."""

    async def text(self, path: str, timeout: float = 2.0) -> str:
        """A text answer (the supervisor's metrics exposition); 503 `Unavailable` if none."""

    def report(self, path: str, body: dict[str, Any]) -> None:
        """Tell the supervisor something, fire and forget."""

    def start_protocol(self, name: str, reason: str, context: dict[str, Any]) -> None:
        """Ask for a protocol run, fire and forget."""


class Unsupervised:
    """No supervisor: operator calls answer 503; protocol starts are logged and skipped."""

    supervised = False

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float = 30.0) -> tuple[int, Any]:
        raise Unavailable("no supervisor: meshd runs unsupervised")

    async def text(self, path: str, timeout: float = 2.0) -> str:
        raise Unavailable("no supervisor: meshd runs unsupervised")

    def report(self, path: str, body: dict[str, Any]) -> None:
        return

    def start_protocol(self, name: str, reason: str, context: dict[str, Any]) -> None:
        log.info("protocol.not_started_unsupervised", protocol=name, reason=reason)
