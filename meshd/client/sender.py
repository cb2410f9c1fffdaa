"""Sending: straight to the server while online; otherwise into the durable offline queue
(and the recipient's mailbox when it is on this host), replayed in order on recovery.

Every message gets its client id before the first attempt, so a replay of a message the
server did store (its answer was lost) is answered with the original and stored once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque

from meshd import log as logging
from meshd.client.errors import Rejected, Unavailable
from meshd.client.http import MeshHttp
from meshd.client.link import Link
from meshd.client.queue import Outbox
from meshd.client.records import Outgoing
from meshd.client.spool import Spool
from meshd.clock import iso_time

log = logging.get("meshd.client.sender")

UPGRADE_REQUIRED = 426
RECENT_LIMIT = 1000  # online-sent messages remembered per recipient for a respool


class Sender:
    def __init__(self, http: MeshHttp, outbox: Outbox, link: Link, spool: Spool | None, *,
                 respool_window: float = 5.0) -> None:
        self._http = http
        self._outbox = outbox
        self._link = link
        self._spool = spool
        self._respool_window = respool_window
        self._lock = asyncio.Lock()  # sends, and the switch back online, happen one at a time
        # Messages the server accepted recently, per recipient. The recipient may not have
        # got them yet when the server went down (the WebSocket event died with it); they are
        # spooled again ahead of the first offline message, which names one as predecessor.
        self._recent: dict[str, deque[tuple[float, Outgoing]]] = {}
        self.spooled = 0
        self.replayed = 0

    async def send(self, from_agent: str, to_agent: str, content: str,
                   message_type: str = "direct") -> str:
        """Send or queue one message; its client id. Raises `Rejected` when the server
        refuses it outright (the message is then neither sent nor queued)."""
        if not isinstance(content, str) or not content:
            raise TypeError("content must be a non-empty string")
        async with self._lock:
            message = Outgoing(
                client_id=str(uuid.uuid4()), from_agent=from_agent, to_agent=to_agent,
                content=content, message_type=message_type, created_at=iso_time(),
                prev=await self._outbox.last_sent(to_agent))
            if self._link.online:  # online implies an empty queue: nothing to overtake
                try:
                    await self.post(message)
                except Unavailable as exc:
                    self._link.mark_offline(str(exc))
                else:
                    await self._outbox.note_sent(to_agent, message.client_id)
                    self._remember(message)
                    return message.client_id
            await self._queue(message)
            return message.client_id

    async def post(self, message: Outgoing) -> dict:
        return await self._http.request("POST", "/api/messages", json=message.body())

    async def replay(self) -> bool:
        """Post the queued messages oldest first, each removed only after a 2xx; True when
        the queue is empty and the link is back online, False when the server failed again."""
        while True:
            message = await self._outbox.first()
            if message is None:
                async with self._lock:  # no send may slip in between the check and the switch
                    if await self._outbox.count() == 0:
                        self._link.mark_online()
                        return True
                continue
            try:
                await self.post(message)
            except Unavailable as exc:
                log.info("client.replay_interrupted", error=str(exc), seq=message.seq)
                return False
            except Rejected as exc:
                if exc.status == UPGRADE_REQUIRED:
                    # Refused for this agent's version, not for the message: keep the queue
                    # for the upgraded agent to replay.
                    log.error("client.replay_blocked", status=exc.status, error=str(exc))
                    return False
                log.error("client.replay_rejected", client_id=message.client_id,
                          to_agent=message.to_agent, status=exc.status, error=str(exc))
                await self._outbox.reject(message, exc.status, str(exc))
                continue
            await self._outbox.remove(message.seq)
            self.replayed += 1

    async def _queue(self, message: Outgoing) -> None:
        queued = await self._outbox.push(message)
        log.info("client.queued", client_id=queued.client_id, to_agent=queued.to_agent,
                 seq=queued.seq)
        if self._spool is None:
            return
        recent = self._recent.pop(message.to_agent, deque())
        cutoff = time.monotonic() - self._respool_window
        for earlier in [m for sent_at, m in recent if sent_at >= cutoff] + [queued]:
            try:
                if await asyncio.to_thread(self._spool.post, earlier):
                    self.spooled += 1
            except OSError as exc:  # the queue has it: the spool is only a shortcut
                log.warning("client.spool_failed", client_id=earlier.client_id,
                            to_agent=earlier.to_agent, error=str(exc))

    def _remember(self, message: Outgoing) -> None:
        if self._spool is None:
            return
        recent = self._recent.setdefault(message.to_agent, deque(maxlen=RECENT_LIMIT))
        now = time.monotonic()
        recent.append((now, message))
        while recent and recent[0][0] < now - self._respool_window:
            recent.popleft()
