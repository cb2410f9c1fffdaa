"""The storage interface handlers use: `read(fn, ...)` and `write(fn, ...)`.

Store functions are plain synchronous functions of a transaction (`Tx`) or a reader (`Reader`)
written in portable SQL with `?` placeholders, so a PostgreSQL backend can run the same
functions by implementing these two protocols; SQLite-only SQL stays in the SQLite backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = dict[str, Any]


class Reader(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Tx(Reader, Protocol):
    """A write transaction; every `execute` is recorded for the journal."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...
    def insert_large(self, table: str, key_column: str, key: str, column: str,
                     text: str) -> None: ...


class Storage(Protocol):
    read_only_reason: str | None
    # Write counters by table (meshd.store.versions.TableVersions): a backend whose writes
    # all pass through this process bumps them after each commit; caches of reads check them.
    versions: Any

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def write(self, fn: Callable[..., T], *args: Any) -> T: ...
    def set_read_only(self, reason: str | None) -> None: ...
    async def check(self, full: bool = False) -> list[str]: ...
