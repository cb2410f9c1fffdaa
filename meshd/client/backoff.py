"""Exponential backoff with jitter, for reconnecting and for probing a server that is down.

Jitter spreads the retries of many agents that lost the same server at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5  # seconds before the first retry (before jitter)
    cap: float = 30.0  # no wait is longer than this
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `attempt` (0-based): base * factor**attempt, capped,
        then drawn from its upper half ("equal jitter"), so it never collapses to zero."""
        ceiling = min(self.cap, self.base * self.factor ** min(attempt, 64))
        return (rng or random).uniform(ceiling / 2, ceiling)


class Pause:
    """A backoff wait that news can cut short: another part of the client saw the server
    answer, so waiting out the rest of a long delay would only add downtime."""

    def __init__(self) -> None:
        self._news = asyncio.Event()

    def wake(self) -> None:
        self._news.set()

    async def sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), delay)
        self._news.clear()
