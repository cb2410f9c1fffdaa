"""Restart policy of the watchdog: when to restart a crashed worker, and when to give up.

Pure logic over timestamps, so tests drive it with a fake clock: the first crash after a
healthy period restarts at once, crashes soon after a restart double the delay (with jitter, up
to a cap), a worker healthy for `reset_after` resets it, and too many crashes in a window is a
crash loop.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Policy:
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    reset_after: float = 10.0
    loop_limit: int = 5
    loop_window: float = 60.0
    jitter: float = 0.1  # up to ±10% of the delay


@dataclass(slots=True)
class RestartState:
    policy: Policy
    crashes: deque[float] = field(default_factory=deque)
    streak: int = 0  # crashes since the worker last stayed healthy for reset_after
    healthy_since: float | None = None
    restarts: int = 0

    def worker_healthy(self, now: float) -> None:
        """Called on every good probe; a long enough healthy run forgives earlier crashes."""
        if self.healthy_since is None:
            self.healthy_since = now
        elif now - self.healthy_since >= self.policy.reset_after:
            self.streak = 0

    def crashed(self, now: float, rng: random.Random | None = None) -> float | None:
        """Record a crash; the delay before the next start, or None for a crash loop."""
        if self.healthy_since is not None and now - self.healthy_since >= self.policy.reset_after:
            self.streak = 0
        self.healthy_since = None
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.policy.loop_window:
            self.crashes.popleft()
        if len(self.crashes) > self.policy.loop_limit:
            return None
        self.streak += 1
        self.restarts += 1
        return backoff_delay(self.policy, self.streak, rng)

    def reset(self) -> None:
        """An operator or a successful recovery clears the crash history."""
        self.crashes.clear()
        self.streak = 0


def backoff_delay(policy: Policy, streak: int, rng: random.Random | None = None) -> float:
    """0 for the first crash of a streak, then base, 2*base, 4*base ... capped, with jitter."""
    if streak <= 1:
        return 0.0
    delay = min(policy.backoff_base * (2 ** (streak - 2)), policy.backoff_max)
    spread = delay * policy.jitter
    delay += (rng or random).uniform(-spread, spread)
    return max(0.0, min(delay, policy.backoff_max))
