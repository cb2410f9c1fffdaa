"""The agent's durable state: one SQLite file in state_dir holding its identity, the offline
queue and the set of messages already delivered, so a restart loses and repeats nothing.

Every query runs on one dedicated thread, in submission order: fsyncs never stall the event
loop, and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FILENAME = "client.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL UNIQUE,
    from_agent TEXT NOT NULL,
    to_agent TEXT NOT NULL,
    content TEXT NOT NULL,
    message_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prev TEXT
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    from_agent TEXT NOT NULL,
    to_agent TEXT NOT NULL,
    content TEXT NOT NULL,
    message_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    rejected_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS last_sent (to_agent TEXT PRIMARY KEY, client_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS delivered (
    from_agent TEXT NOT NULL,
    key TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (from_agent, key)
) WITHOUT ROWID;
"""


class StateDB:
    """The state file; open with `await StateDB.open(state_dir)`, close when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshd-client")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, state_dir: Path) -> StateDB:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = cls(state_dir / FILENAME)
        await db._submit(db._connect)
        return db

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a queued message survives a power cut, not only a crash of the agent.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` on the state thread; wrap writes in `with conn:`."""
        return await self._submit(self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple) -> T:
        if self._conn is None:
            raise RuntimeError(f"{self.path} is closed")
        return fn(self._conn, *args)

    async def get(self, key: str) -> str | None:
        return await self.run(_get, key)

    async def set(self, key: str, value: str) -> None:
        await self.run(_set, key, value)

    async def close(self) -> None:
        if self._conn is not None:
            await self._submit(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = None


def _get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def _set(conn: sqlite3.Connection, key: str, value: str) -> None:
    with conn:
        conn.execute("INSERT INTO settings (key, value) VALUES (?, ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
