"""How the worker asks its supervisor to start a protocol (a breaking update it accepted, a
partition it detected) or to answer an operator's API call, over the control socket.

Unsupervised (tests, embedding) there is no supervisor: starting a protocol is then logged and
skipped, and operator calls answer 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from meshd import log as logging
from meshd.config import Settings
from meshd.errors import MeshError, Unavailable

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
        connector = aiohttp.UnixConnector(path=str(self.settings.control_socket))
        try:
            async with aiohttp.ClientSession(connector=connector) as session, session.request(
                method, f"http://meshd{path}", json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the supervisor did not answer: {exc}") from None

    async def text(self, path: str, timeout: float = 2.0) -> str:
        """GET a text answer (the supervisor's metrics exposition)."""
        if not self.supervised:
            raise Unavailable("no supervisor: meshd runs unsupervised")
        connector = aiohttp.UnixConnector(path=str(self.settings.control_socket))
        try:
            async with aiohttp.ClientSession(connector=connector) as session, session.get(
                f"http://meshd{path}", timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if resp.status != 200:
                    raise Unavailable(f"the supervisor answered {resp.status}")
                return await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the supervisor did not answer: {exc}") from None

    def report(self, path: str, body: dict[str, Any]) -> None:
        """Tell the supervisor something, fire and forget (logged when it cannot be told)."""
        if not self.supervised:
            return
        task = asyncio.get_running_loop().create_task(self._report(path, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, path: str, body: dict[str, Any]) -> None:
        try:
            await self.call("POST", path, body)
        except MeshError as exc:
            log.warning("supervisor.report_failed", path=path, error=exc.message)

    def start_protocol(self, name: str, reason: str, context: dict[str, Any]) -> None:
        """Fire and forget: the request that triggered it never waits on the supervisor."""
        if not self.supervised:
            log.info("protocol.not_started_unsupervised", protocol=name, reason=reason)
            return
        task = asyncio.get_running_loop().create_task(self._start(name, reason, context))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, name: str, reason: str, context: dict[str, Any]) -> None:
        try:
            status, body = await self.call("POST", f"/control/protocols/{name}/run",
                                           {"reason": reason, "context": context})
            if status >= 300:
                log.error("protocol.start_refused", protocol=name, status=status, body=body)
        except MeshError as exc:
            log.error("protocol.start_failed", protocol=name, error=exc.message)
