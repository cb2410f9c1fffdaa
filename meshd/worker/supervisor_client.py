"""How the worker asks its supervisor to start a protocol (a breaking update it accepted, a
partition it detected), tells it about the disk, or forwards an operator's API call: the
control socket, through the one client in `meshd.control.client`.

Unsupervised (tests, embedding) there is no supervisor: starting a protocol is then logged and
skipped, and operator calls answer 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshd import log as logging
from meshd.config import Settings
from meshd.control import client as control
from meshd.errors import Unavailable

log = logging.get("meshd.supervisor_client")


class SupervisorClient:
    def __init__(self, settings: Settings, supervised: bool) -> None:
        self.settings = settings
        self.supervised = supervised
        self._tasks: set[asyncio.Task] = set()

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float = 30.0) -> tuple[int, Any]:
        if not self.supervised:
            raise Unavailable("no supervisor: meshd runs unsupervised")
        try:
            return await control.exchange(self.settings.control_socket, method, path, body,
                                          timeout)
        except control.Unreachable as exc:
            raise Unavailable(f"the supervisor did not answer: {exc}") from None

    async def text(self, path: str, timeout: float = 2.0) -> str:
        """GET a text answer (the supervisor's metrics exposition)."""
        if not self.supervised:
            raise Unavailable("no supervisor: meshd runs unsupervised")
        try:
            status, raw = await control.exchange_raw(self.settings.control_socket, "GET", path,
                                                     timeout=timeout)
        except control.Unreachable as exc:
            raise Unavailable(f"the supervisor did not answer: {exc}") from None
        if status != 200:
            raise Unavailable(f"the supervisor answered {status}")
        return raw.decode()

    def report(self, path: str, body: dict[str, Any]) -> None:
        """Tell the supervisor something, fire and forget (logged when it cannot be told)."""
        if self.supervised:
            self._background(self._send(path, body, "supervisor.report_failed"))

    def start_protocol(self, name: str, reason: str, context: dict[str, Any]) -> None:
        """Fire and forget: the request that triggered it never waits on the supervisor."""
        if not self.supervised:
            log.info("protocol.not_started_unsupervised", protocol=name, reason=reason)
            return
        self._background(self._send(f"/control/protocols/{name}/run",
                                    {"reason": reason, "context": context},
                                    "protocol.start_failed"))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, path: str, body: dict[str, Any], failure_event: str) -> None:
        try:
            await control.request(self.settings.control_socket, "POST", path, body)
        except control.ControlError as exc:
            log.error(failure_event, path=path, status=exc.status, error=exc.message)
        except control.Unreachable as exc:
            log.error(failure_event, path=path, error=str(exc))
