"""db_time without an argument is the current second, formatted once per second."""

from __future__ import annotations

import time

from meshd.clock import db_time, parse_time, utcnow


def test_db_time_now_matches_the_clock():
    for _ in range(5):  # a second boundary may fall between the calls: try again
        before, now, after = db_time(), db_time(utcnow()), db_time()
        if before == after:
            assert now == before
            break
    else:
        raise AssertionError("the clock moved on every attempt")


def test_db_time_now_moves_with_the_second():
    first = db_time()
    deadline = time.monotonic() + 5
    while db_time() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    later = db_time()
    assert later > first
    assert (parse_time(later) - parse_time(first)).total_seconds() >= 1
