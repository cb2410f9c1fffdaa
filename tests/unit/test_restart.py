"""The restart policy as pure logic, driven by a fake clock (plain floats of seconds)."""

from __future__ import annotations

import random

import pytest

from meshd.supervisor.restart import Policy, RestartState, backoff_delay
from tests.support import Extreme


def crash_streak(state: RestartState, times: list[float], rng=None) -> list[float | None]:
    return [state.crashed(t, rng) for t in times]


def test_the_first_crash_ever_restarts_at_once():
    state = RestartState(Policy())
    assert state.crashed(100.0) == 0.0
    assert state.restarts == 1


def test_the_first_crash_after_a_healthy_period_restarts_at_once():
    state = RestartState(Policy(loop_limit=100))
    crash_streak(state, [0.0, 1.0, 2.0])  # a streak: the next one would wait
    state.worker_healthy(3.0)
    state.worker_healthy(13.0)  # healthy for reset_after (10 s)
    assert state.crashed(14.0) == 0.0


@pytest.mark.parametrize("high", [False, True])
def test_crashes_soon_after_a_restart_double_the_delay_within_the_jitter(high):
    policy = Policy(backoff_max=1000.0, loop_limit=100)
    state = RestartState(policy)
    delays = crash_streak(state, [float(t) for t in range(8)], Extreme(high))
    expected = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    factor = 1 + policy.jitter if high else 1 - policy.jitter
    assert delays[0] == 0.0
    assert delays[1:] == pytest.approx([e * factor for e in expected[1:]])


def test_the_jitter_stays_within_ten_percent_for_any_draw():
    policy = Policy(backoff_max=1000.0)
    for seed in range(200):
        rng = random.Random(seed)
        for streak, nominal in [(2, 0.5), (3, 1.0), (4, 2.0), (6, 8.0)]:
            delay = backoff_delay(policy, streak, rng)
            assert nominal * 0.9 <= delay <= nominal * 1.1, (seed, streak, delay)


def test_the_jitter_varies_the_delay():
    policy = Policy()
    rng = random.Random(1)
    assert len({backoff_delay(policy, 3, rng) for _ in range(20)}) > 1


def test_without_jitter_the_delays_are_exact():
    state = RestartState(Policy(jitter=0.0, loop_limit=100))
    assert crash_streak(state, [0.0, 1.0, 2.0, 3.0, 4.0]) == [0.0, 0.5, 1.0, 2.0, 4.0]


@pytest.mark.parametrize("high", [False, True])
def test_the_delay_is_capped_at_backoff_max(high):
    state = RestartState(Policy(backoff_max=3.0, loop_limit=100))
    delays = crash_streak(state, [float(t) for t in range(10)], Extreme(high))
    assert all(d is not None and d <= 3.0 for d in delays), delays
    # 0.5, 1, 2 then the cap (jitter may take up to 10% off, never adds beyond it).
    assert delays[-1] == pytest.approx(3.0 if high else 2.7)
    assert delays[5] <= 3.0


def test_the_default_cap_is_30_seconds():
    state = RestartState(Policy(loop_limit=1000))
    delays = crash_streak(state, [float(t) for t in range(20)], Extreme(True))
    assert max(delays) == pytest.approx(30.0)


def test_a_worker_healthy_for_reset_after_resets_the_backoff():
    state = RestartState(Policy(jitter=0.0, loop_limit=100))
    assert crash_streak(state, [0.0, 1.0, 2.0]) == [0.0, 0.5, 1.0]
    for t in range(3, 14):  # a good probe every second, 10 s in all
        state.worker_healthy(float(t))
    assert state.crashed(14.0) == 0.0
    assert state.crashed(15.0) == 0.5  # and a new streak starts


def test_a_worker_healthy_for_less_than_reset_after_keeps_the_streak():
    state = RestartState(Policy(jitter=0.0, loop_limit=100))
    crash_streak(state, [0.0, 1.0])
    state.worker_healthy(2.0)
    state.worker_healthy(11.9)  # 9.9 s
    assert state.crashed(11.95) == 1.0


def test_the_healthy_period_counts_up_to_the_crash_itself():
    # One good probe, then a crash 10 s later with no probe in between (probes are seconds
    # apart): the worker was healthy for the whole period.
    state = RestartState(Policy(jitter=0.0, loop_limit=100))
    crash_streak(state, [0.0, 1.0, 2.0])
    state.worker_healthy(3.0)
    assert state.crashed(13.0) == 0.0


def test_a_crash_clears_the_healthy_period():
    state = RestartState(Policy(jitter=0.0, loop_limit=100))
    state.worker_healthy(0.0)
    crash_streak(state, [5.0, 6.0])
    state.worker_healthy(7.0)  # healthy again from 7, not from 0
    assert state.crashed(12.0) == 1.0


def test_more_than_loop_limit_crashes_in_the_window_is_a_crash_loop():
    state = RestartState(Policy(loop_limit=5, loop_window=60.0))
    delays = crash_streak(state, [0.0, 5.0, 10.0, 15.0, 20.0])
    assert None not in delays
    assert state.crashed(25.0) is None
    assert state.restarts == 5  # the sixth crash is not restarted


def test_the_crash_loop_counts_crashes_even_after_a_healthy_period():
    # Each crash after 10 healthy seconds restarts at once, but 6 in a minute is still a loop.
    state = RestartState(Policy(loop_limit=5, loop_window=60.0))
    results = []
    for i in range(6):
        t = i * 11.0
        state.worker_healthy(t + 0.1)
        state.worker_healthy(t + 10.5)
        results.append(state.crashed(t + 10.9))
    assert results[:5] == [0.0] * 5
    assert results[5] is None


def test_crashes_outside_the_window_are_forgotten():
    state = RestartState(Policy(loop_limit=2, loop_window=60.0))
    assert crash_streak(state, [0.0, 30.0]) == [0.0, pytest.approx(0.5, rel=0.11)]
    assert state.crashed(61.0) is not None  # the crash at 0 is out of the window
    assert list(state.crashes) == [30.0, 61.0]
    assert state.crashed(62.0) is None  # 30, 61, 62: three in the window


def test_a_crash_exactly_at_the_window_edge_still_counts():
    state = RestartState(Policy(loop_limit=1, loop_window=60.0))
    state.crashed(0.0)
    assert state.crashed(60.0) is None


def test_reset_clears_the_history():
    state = RestartState(Policy(jitter=0.0, loop_limit=2))
    crash_streak(state, [0.0, 1.0])
    state.reset()
    assert state.crashed(2.0) == 0.0
    assert state.crashed(3.0) == 0.5
