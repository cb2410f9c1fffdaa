"""Helpers shared by every kind of test: polling for a condition with a deadline (never a bare
sleep), and a random generator pinned to the ends of its ranges."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy result of `check()`; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_poll(check: Callable[[], Any], timeout: float, what: str,
                     interval: float = 0.05) -> Any:
    """`poll` inside an event loop: `check` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Extreme(random.Random):
    """An rng whose `uniform` always picks the low (or high) end: the jitter's bounds."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path, readers: int = 2) -> AsyncIterator[Any]:
    """A started SqliteStorage on a fresh file and journal under `tmp_path`, closed after."""
    from meshd.store.sqlite import SqliteStorage

    storage = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal", readers=readers)
    await storage.start()
    try:
        yield storage
    finally:
        await storage.close()
