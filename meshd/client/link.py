"""Online or offline: the SDK's one view of whether the server can be used right now.

Any request that finds the server unreachable marks the link offline; only the recovery task
marks it online again, after the offline queue was replayed, so nothing overtakes the queue.
"""

from __future__ import annotations

import asyncio

from meshd import log as logging

log = logging.get("meshd.client.link")


class Link:
    def __init__(self) -> None:
        self._online = asyncio.Event()
        self._offline = asyncio.Event()
        self._offline.set()  # until the first successful contact
        self.outages = 0

    @property
    def online(self) -> bool:
        return self._online.is_set()

    def mark_offline(self, reason: str) -> bool:
        """Switch to offline mode; True when this call made the switch."""
        if not self._online.is_set():
            return False
        self._online.clear()
        self._offline.set()
        self.outages += 1
        log.warning("client.offline", reason=reason)
        return True

    def mark_online(self) -> bool:
        if self._online.is_set():
            return False
        self._offline.clear()
        self._online.set()
        log.info("client.online")
        return True

    async def wait_offline(self) -> None:
        await self._offline.wait()

    async def wait_online(self) -> None:
        await self._online.wait()
