"""The persistent set of messages already handed to the handler, keyed by (sender, client
id): the same message may arrive through the spool, the WebSocket and the inbox, and a
restarted agent must still recognize what it handled before."""

from __future__ import annotations

import sqlite3
import time

from meshd.client.state import StateDB

DEFAULT_RETENTION = 30 * 86400.0  # seconds a delivered key is remembered


class Delivered:
    def __init__(self, db: StateDB) -> None:
        self._db = db

    async def contains(self, from_agent: str, key: str) -> bool:
        return await self._db.run(_contains, from_agent, key)

    async def add(self, from_agent: str, key: str) -> bool:
        """Remember a delivery; False when it was already remembered."""
        return await self._db.run(_add, from_agent, key, time.time())

    async def prune(self, retention: float = DEFAULT_RETENTION) -> int:
        """Forget deliveries older than `retention` seconds; how many were forgotten. A copy
        of such a message arriving later would be delivered again, so keep it long."""
        return await self._db.run(_prune, time.time() - retention)


def _contains(conn: sqlite3.Connection, from_agent: str, key: str) -> bool:
    return conn.execute("SELECT 1 FROM delivered WHERE from_agent = ? AND key = ?",
                        (from_agent, key)).fetchone() is not None


def _add(conn: sqlite3.Connection, from_agent: str, key: str, now: float) -> bool:
    with conn:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO delivered (from_agent, key, delivered_at) VALUES (?, ?, ?)",
            (from_agent, key, now))
    return cursor.rowcount == 1


def _prune(conn: sqlite3.Connection, cutoff: float) -> int:
    with conn:
        return conn.execute("DELETE FROM delivered WHERE delivered_at < ?", (cutoff,)).rowcount
