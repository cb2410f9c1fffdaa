"""The supervisor's own read-only view of the database: the same store functions the worker
runs, each on a fresh `mode=ro` connection in a thread.

The supervisor must read while the worker is dead (a protocol waiting for agents to return,
reviewing updates after a crash), so it cannot ask the worker; and it must never write, so its
connections cannot. A fresh connection per read also means a restored file is read as it is
now, never through a connection opened on the file it replaced.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from meshd.store import backups, postgres
from meshd.store.sqlite import _dict_row, _Reader

T = TypeVar("T")


def open_readonly(database: Path | str) -> ReadOnlyStorage | postgres.ReadOnlyPostgres:
    """The supervisor's read-only view of whichever backend `database` names."""
    if postgres.is_url(database):
        return postgres.ReadOnlyPostgres(str(database))
    return ReadOnlyStorage(database)


class ReadOnlyStorage:
    def __init__(self, database: Path) -> None:
        self.database = database

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._run, fn, args)

    def _run(self, fn: Callable[..., T], args: tuple) -> T:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        conn.row_factory = _dict_row
        try:
            return fn(_Reader(conn), *args)
        finally:
            conn.close()

    async def check(self, full: bool = False) -> list[str]:
        """quick_check (or integrity_check) of the file as it is now; [] when sound."""
        return await asyncio.to_thread(backups.integrity, self.database, full)
