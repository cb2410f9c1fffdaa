"""Where every incoming message goes, whichever channel brought it: to the handler exactly
once, and in order per sender.

The server channel is ordered by itself (live events, and the inbox read after each
reconnection). A spooled message names its predecessor (`prev`); it is held until that one
was delivered, so a message that skipped ahead through the spool waits for one the WebSocket
lost when the server went down. A hold ends after `hold_timeout` even if the predecessor never
comes (it was refused by the server, or the server lost it): late beats never.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from meshd import log as logging
from meshd.client.dedupe import Delivered
from meshd.client.records import Message

log = logging.get("meshd.client.inbound")

Handler = Callable[[Message], Awaitable[None]]
Settle = Callable[[], None]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    HELD = "held"


@dataclass(slots=True)
class _Held:
    message: Message
    since: float
    settle: Settle | None


class Inbound:
    def __init__(self, delivered: Delivered, handler: Handler, *, hold_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._delivered = delivered
        self._handler = handler
        self._hold_timeout = hold_timeout
        self._clock = clock
        self._lock = asyncio.Lock()  # one delivery at a time: the order is the handler's
        self._held: dict[tuple[str, str], list[_Held]] = {}  # by (sender, predecessor)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    async def offer(self, message: Message, *, prev: str | None = None,
                    settle: Settle | None = None) -> Outcome:
        """Deliver `message` unless it was delivered before; with `prev` (a spooled message),
        only once the message with that client id from the same sender was. `settle` is
        called when the message no longer needs its source (delivered or a duplicate)."""
        async with self._lock:
            if await self._delivered.contains(message.from_agent, message.key):
                _call(settle)
                return Outcome.DUPLICATE
            if prev is not None and not await self._delivered.contains(message.from_agent,
                                                                       prev):
                self._held.setdefault((message.from_agent, prev), []).append(
                    _Held(message, self._clock(), settle))
                log.info("client.message_held", from_agent=message.from_agent,
                         client_id=message.client_id, waiting_for=prev)
                return Outcome.HELD
            await self._deliver(message, settle)
            return Outcome.DELIVERED

    async def release_expired(self) -> int:
        """Deliver held messages whose predecessor is overdue; how many were released."""
        released = 0
        async with self._lock:
            now = self._clock()
            for waiting_for, entries in list(self._held.items()):
                for entry in [e for e in entries if now - e.since >= self._hold_timeout]:
                    entries.remove(entry)
                    log.warning("client.order_gap", from_agent=entry.message.from_agent,
                                client_id=entry.message.client_id, missing=waiting_for[1],
                                held_s=round(now - entry.since, 1))
                    if await self._delivered.contains(entry.message.from_agent,
                                                      entry.message.key):
                        _call(entry.settle)
                        continue
                    await self._deliver(entry.message, entry.settle)
                    released += 1
                if not entries:
                    self._held.pop(waiting_for, None)
        return released

    async def settled(self) -> None:
        """Until no delivery is in progress: closing waits for this, so a message handed to
        the handler is also recorded as delivered (or it would come again after a restart)."""
        while self._active:
            await self._idle.wait()

    async def _deliver(self, message: Message, settle: Settle | None) -> None:
        self._active += 1
        self._idle.clear()
        try:
            await self._deliver_in_order(message, settle)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _deliver_in_order(self, message: Message, settle: Settle | None) -> None:
        """Hand one message to the handler, then everything that was held behind it."""
        queue = [(message, settle)]
        while queue:
            current, current_settle = queue.pop(0)
            if await self._delivered.contains(current.from_agent, current.key):
                _call(current_settle)  # a copy came another way while this one waited
            else:
                try:
                    await self._handler(current)
                except Exception:  # noqa: BLE001 - one bad message must not stop the rest
                    log.exception("client.handler_failed", from_agent=current.from_agent,
                                  client_id=current.client_id, message_id=current.id)
                # Recorded after the handler ran: a crash in between means one more delivery
                # after a restart, never a lost one.
                await self._delivered.add(current.from_agent, current.key)
                _call(current_settle)
            if current.client_id is not None:
                followers = self._held.pop((current.from_agent, current.client_id), [])
                queue.extend((e.message, e.settle) for e in followers)


def _call(settle: Settle | None) -> None:
    if settle is not None:
        settle()
