"""Reconnection delays: exponential, capped, jittered within the upper half."""

from __future__ import annotations

import random

from meshd.client.backoff import Backoff
from tests.support import Extreme


def test_delays_grow_exponentially_up_to_the_cap():
    policy = Backoff(base=0.5, cap=4.0)
    high = [policy.delay(n, Extreme(True)) for n in range(6)]
    assert high == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_stays_in_the_upper_half():
    policy = Backoff(base=1.0, cap=8.0)
    assert policy.delay(2, Extreme(False)) == 2.0
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100  # spread, not one value for every agent


def test_a_huge_attempt_number_does_not_overflow():
    assert Backoff(base=1.0, cap=5.0).delay(10_000, Extreme(True)) == 5.0
