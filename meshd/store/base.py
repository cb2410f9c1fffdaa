"""The storage interface: what api/, worker/ and recovery/ may ask of a database backend.

Store functions are plain synchronous functions of a transaction (`Tx`) or a reader (`Reader`)
written in portable SQL with `?` placeholders, so a second backend (PostgreSQL) runs the same
functions by implementing these protocols; backend-only SQL stays in the backend's module.

- `ReadStorage`: reads only. The supervisor's own view (`store.readonly`) is one: it must work
  while the worker is dead, and may never write.
- `Storage`: the worker's store. Reads; writes (refused in read-only mode); the internal write
  path (meshd's own records, taken even when read-only); a trial write that is rolled back
  (the self-test); and the backend operations an operator or a protocol needs (check, backup).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from meshd.store.events import Event, Sink

T = TypeVar("T")
Row = dict[str, Any]


class Reader(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Tx(Reader, Protocol):
    """A write transaction; every `execute` is recorded for the journal."""

    def emit(self, event: Event) -> None:
        """Declare an event this write causes (`store.events`): encoded now, delivered after
        COMMIT, dropped with a rollback."""
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...
    def insert_large(self, table: str, key_column: str, key: str, column: str,
                     text: str) -> None: ...


# Read functions declared small, with the rule on their arguments (None: always small).
_SMALL: dict[Callable[..., Any], Callable[..., bool] | None] = {}


def small_read(fn: Callable[..., T] | None = None, *,
               when: Callable[..., bool] | None = None) -> Any:
    """Declare a read function small: one indexed row, or one page of bounded size (`when`,
    given the read's arguments after the reader, says which calls are). A backend may run
    such a read without a thread hand-off (the SQLite backend runs it on the event loop's own
    connection, under a time budget); any other read goes to the backend's reader pool."""

    def mark(read: Callable[..., T]) -> Callable[..., T]:
        _SMALL[read] = when
        return read

    return mark(fn) if fn is not None else mark


def runs_inline(fn: Callable[..., Any], args: Sequence[Any]) -> bool:
    """Whether `fn(reader, *args)` was declared small."""
    if fn not in _SMALL:
        return False
    when = _SMALL[fn]
    return when is None or bool(when(*args))


class ReadStorage(Protocol):
    async def read(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def check(self, full: bool = False) -> list[str]:
        """quick_check (or the full integrity check): the problems, empty when sound."""


class Storage(ReadStorage, Protocol):
    read_only_reason: str | None
    migration: Any  # what opening the database migrated (a Node database, an old schema)
    # Write counters by table (meshd.store.versions.TableVersions): a backend whose writes
    # all pass through this process bumps them after each commit; caches of reads check them.
    versions: Any

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def write_internal(self, fn: Callable[..., T], *args: Any) -> T:
        """A write read-only mode does not refuse: meshd's own records."""
    async def trial(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write function and roll it back (the self-test of the write path)."""
    def set_read_only(self, reason: str | None) -> None: ...
    def set_event_sink(self, sink: Sink | None) -> None:
        """Where committed writes' events go (the WebSocket hub), in commit order."""
    async def backup(self, backup_dir: Any, note: str) -> Any:
        """A verified backup of the database as it is now, into `backup_dir`."""
    @property
    def journal_seq(self) -> int: ...
    @property
    def journal_epoch(self) -> int: ...
