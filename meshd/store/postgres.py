"""PostgreSQL backend: the store's synchronous functions on pooled psycopg connections.

Each write is one SERIALIZABLE transaction on a connection of its own, run in a worker thread;
several run at once. The store's read-then-write functions (register by name, idempotent send
by clientId, memory version bumps) were written for SQLite's single writer; SERIALIZABLE gives
them the same guarantee with concurrent writers: PostgreSQL aborts one of two transactions
whose interleaving could differ from some serial order (SQLSTATE 40001, or 40P01 for a
deadlock), and the function is run again from the start on a fresh snapshot, where it sees
what the other committed. A concurrent insert of a key this transaction looked up first is
such a failure too (usually reported as 40001, sometimes as a unique violation, which is
retried a few times before it counts as a real duplicate); any other integrity error is a
Conflict, as SQLite's IntegrityError is.

Reads run in REPEATABLE READ READ ONLY transactions: a read function that issues several
queries (the dashboard) sees one snapshot, as on SQLite.

There is no meshd journal here: PostgreSQL's WAL is the durability, and a write is
acknowledged only after its COMMIT returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from meshd import log as logging
from meshd.clock import db_time
from meshd.errors import Conflict, Invalid, MeshError, Unavailable
from meshd.store import dialect, event_log, pg_backups, pg_events, pg_schema
from meshd.store import events as ev
from meshd.store.base import Row
from meshd.store.dburl import is_url  # noqa: F401 - callers use postgres.is_url too
from meshd.store.versions import TableVersions

T = TypeVar("T")
log = logging.get("meshd.store.postgres")

MAX_ATTEMPTS = 20
MAX_UNIQUE_RETRIES = 3
CONNECT_TIMEOUT = 5.0
UNREACHABLE_RETRY_AFTER = 5
PROBE_INTERVAL = 0.5
SIZE_TTL = 30.0
EVENTS_WAIT = 2.0  # a write's answer waits at most this long for its events to be handed on
_RETRY = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return f"postgresql://{info.get('user', '')}@{info.get('host', '')}:" \
           f"{info.get('port', '5432')}/{info.get('dbname', '')}"


class _Reader:
    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def _run(self, sql: str, params: Sequence[Any]) -> tuple[psycopg.Cursor, bool]:
        statement = dialect.translate(sql)
        return self.conn.execute(statement.sql, dialect.params(params)), statement.strip_rowid

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor, strip = self._run(sql, params)
        rows = cursor.fetchall()
        if strip:
            for row in rows:
                row.pop("rowid", None)
        return rows

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cursor, strip = self._run(sql, params)
        row = cursor.fetchone()
        if strip and row is not None:
            row.pop("rowid", None)
        return row

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._run(sql, params)[0].fetchone()
        return next(iter(row.values())) if row else None


class _Tx(_Reader):
    """Keeps the statements it ran (for the table counters) and the events it emitted, both
    for this attempt only: a retried attempt starts with a fresh `_Tx`."""

    __slots__ = ("statements", "events")

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)
        self.statements: list[str] = []
        self.events: list[ev.Encoded] = []

    def emit(self, event: ev.Event) -> None:
        """Encoded now (an unencodable event fails this write); its row and id come at
        pre-commit time, in commit order (`store.pg_events.commit_with_events`)."""
        self.events.append(ev.encode(event))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.statements.append(sql)
        return self._run(sql, params)[0].rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        self.statements.append(sql)
        statement = dialect.translate(sql)
        with self.conn.cursor() as cursor:
            cursor.executemany(statement.sql, [dialect.params(r) for r in rows])
            return cursor.rowcount

    def insert_large(self, table: str, key_column: str, key: str, column: str,
                     text: str) -> None:
        """SQLite writes large values through blob I/O; PostgreSQL takes them as one bound
        parameter (sent as is, not re-encoded), so a plain INSERT is the right tool here."""
        self.execute(f"INSERT INTO {table} ({key_column}, {column}) VALUES (?, ?)", (key, text))


def _refused_value(exc: psycopg.DataError) -> Invalid:
    """A value PostgreSQL cannot store or compare (a NUL character in text, which SQLite
    takes; a number out of range) is the request's fault: 400 with the reason, not a 500."""
    return Invalid(f"a value cannot be stored: {str(exc).strip().splitlines()[0]}")


class _Trial(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__("trial rolled back")
        self.result = result


class PostgresStorage:
    """The Storage interface on PostgreSQL; `url` is a libpq connection URL."""

    def __init__(self, url: str, *, readers: int = 4, writers: int = 4,
                 on_unreachable: Callable[[str | None], None] | None = None) -> None:
        self.url = url
        self.read_only_reason: str | None = None
        self.migration: pg_schema.MigrationReport | None = None
        self.replayed = 0
        self.journal_epoch = 0  # no meshd journal: PostgreSQL's WAL is the durability
        self.journal_seq = 0
        self.journal_dir = None
        self._db_bytes = 0
        self._db_bytes_at = 0.0
        self.unreachable: str | None = None
        self._on_unreachable = on_unreachable
        self._size = readers + writers
        self._exec = ThreadPoolExecutor(self._size, thread_name_prefix="meshd-pg")
        self._pool: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: asyncio.Task | None = None
        self._event_sink: ev.Sink | None = None
        self.event_pump: pg_events.EventPump | None = None
        self._listener: pg_events.Listener | None = None
        self._events_reader: pg_events.TableReader | None = None
        self._versions_lock = threading.Lock()  # the counters' read-modify-write
        self.versions = TableVersions()
        # Metrics hook (api/metrics.py): called with (1, COMMIT seconds) after each commit.
        self.on_batch: Callable[[int, float], None] | None = None
        # Replicas ship meshd's journal, which PostgreSQL has none of: never set here
        # (config.validate refuses `replica` with a postgresql:// database).
        self.replica_sync: Callable[[int, int], bool] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._exec, self._open)
        await self._start_events()

    async def _start_events(self) -> None:
        """The ordered event stream of this worker (`store.pg_events`): LISTEN first, then
        the newest id, so every commit from then on is either at or below that id or
        notified; this returns before the first write can commit."""
        self._events_reader = reader = pg_events.TableReader(self.url)
        self.event_pump = pg_events.EventPump(reader.between, reader.latest, self._deliver)
        self._listener = pg_events.Listener(self.url, self.event_pump)
        await self._listener.start(reader.latest)

    def _open(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT),
                             row_factory=dict_row) as conn:
            started = time.monotonic()
            self.migration = pg_schema.migrate(conn)
        if self.migration.migrated:
            log.info("store.migrated", backend="postgresql",
                     from_version=self.migration.from_version,
                     to_version=self.migration.to_version,
                     seconds=round(time.monotonic() - started, 3))
        self._pool = ConnectionPool(
            self.url, min_size=1, max_size=self._size, open=False, timeout=CONNECT_TIMEOUT,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": int(CONNECT_TIMEOUT)},
            check=ConnectionPool.check_connection, name="meshd")
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        self._measure_size()
        log.info("store.opened", backend="postgresql", database=redact(self.url),
                 schema_version=pg_schema.SCHEMA_VERSION)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._listener is not None:
            await self._listener.stop()
            await self._events_reader.close()
            self._listener = None
        if self._pool is not None:
            await self._loop.run_in_executor(self._exec, self._pool.close)
            self._pool = None
        self._exec.shutdown(wait=True)

    # -- reads -------------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._exec, self._run_read, fn, args)

    def _run_read(self, fn: Callable[..., T], args: tuple) -> T:
        self._fail_fast()
        try:
            with self._pool.connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                try:
                    result = fn(_Reader(conn), *args)
                finally:
                    conn.execute("ROLLBACK")
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise self._unreachable(exc) from exc
        except psycopg.DataError as exc:
            raise _refused_value(exc) from exc
        self._reachable()
        return result

    async def check(self, full: bool = False) -> list[str]:
        """A connection check: the server answers, and the schema is the one this build
        knows. (Page-level integrity is PostgreSQL's own: data checksums, amcheck.)"""
        return await self._loop.run_in_executor(self._exec, connection_check, self.url, full)

    # -- writes ------------------------------------------------------------------------------

    def set_read_only(self, reason: str | None) -> None:
        self.read_only_reason = reason

    def set_event_sink(self, sink: ev.Sink | None) -> None:
        self._event_sink = sink

    def _hand_over(self, events: list[ev.Encoded]) -> None:
        """On the event loop: this node's committed events, to the pump that orders them
        with the other nodes' (or straight to the sink before the pump runs)."""
        if self.event_pump is not None:
            self.event_pump.local(events)
        else:
            self._deliver(events)

    def _deliver(self, events: list[ev.Encoded]) -> None:
        """On the event loop: events, in id order, to the sink (the WebSocket hub)."""
        if events and self._event_sink is not None:
            try:
                self._event_sink(events)
            except Exception:  # noqa: BLE001 - a committed write stays committed
                log.exception("store.event_delivery_failed", events=len(events))

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        if self.read_only_reason:
            raise Unavailable(f"meshd is read-only: {self.read_only_reason}")
        return await self.write_internal(fn, *args)

    async def write_internal(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise Unavailable("the store is not open")
        result, last_event = await self._loop.run_in_executor(self._exec, self._run_write, fn,
                                                              args, False)
        if last_event is not None and self.event_pump is not None:
            # Acknowledged once its events reached the hub (as on SQLite): a client that
            # connects after the answer does not get them live, the writer's own socket has
            # them first. Usually at once; after a read of other nodes' events otherwise.
            await self.event_pump.handed_on(last_event, EVENTS_WAIT)
        return result

    async def trial(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write function and roll it back (the self-test in read-only mode)."""
        if self._pool is None:
            raise Unavailable("the store is not open")
        result, _none = await self._loop.run_in_executor(self._exec, self._run_write, fn, args,
                                                         True)
        return result

    def _run_write(self, fn: Callable[..., T], args: tuple, trial: bool
                   ) -> tuple[T, int | None]:
        """(the write function's result, the id of the last event it committed or None)."""
        self._fail_fast()
        unique_retries = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                outcome = self._attempt(fn, args, trial)
            except _RETRY as exc:
                if attempt == MAX_ATTEMPTS:
                    raise Unavailable(f"the write kept conflicting with others: {exc}",
                                      retry_after=1) from exc
            except pg_errors.UniqueViolation as exc:
                # A key this transaction looked up and did not find was inserted by another
                # that committed meanwhile. PostgreSQL usually reports that as 40001, but not
                # always (observed on first inserts of one memory key): on a fresh snapshot
                # the lookup sees the row. A duplicate that is no race fails every attempt.
                unique_retries += 1
                if unique_retries > MAX_UNIQUE_RETRIES:
                    raise Conflict(f"the write conflicts with existing data ({exc})") from exc
            except pg_errors.IntegrityError as exc:
                raise Conflict(f"the write conflicts with existing data ({exc})") from exc
            except psycopg.DataError as exc:
                raise _refused_value(exc) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise self._unreachable(exc) from exc
            except StopIteration as exc:  # a Future refuses to carry one
                raise RuntimeError(f"write function raised StopIteration: {exc}") from exc
            else:
                self._reachable()
                return outcome
            time.sleep(random.uniform(0, 0.002 * attempt))  # let the winner finish
        raise AssertionError("unreachable")

    def _attempt(self, fn: Callable[..., T], args: tuple, trial: bool
                 ) -> tuple[T, int | None]:
        """One attempt in a transaction of its own. Its events and statements live in its
        `_Tx`, so a retried or rolled-back attempt hands nothing on; after COMMIT the table
        counters move and the events are scheduled on the loop (before the writer's answer,
        which the executor schedules after this returns)."""
        with self._pool.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            tx = _Tx(conn)
            try:
                result = fn(tx, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if trial:
                conn.execute("ROLLBACK")
                return result, None
            if tx.events:
                # Rows, ids, notification and COMMIT in one step (`pg_events`). Threads may
                # hand their events over out of commit order: the pump orders them by id.
                tx.statements.append(event_log.INSERT)
                if self._listener is not None:
                    self._listener.own_backends.add(conn.info.backend_pid)
                started = time.monotonic()
                try:
                    tx.events = pg_events.commit_with_events(conn, tx.events, db_time())
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")  # (a no-op when COMMIT itself failed)
                    raise
                seconds = time.monotonic() - started
                self._bump(tx.statements)
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._hand_over, tx.events)
            else:
                started = time.monotonic()
                conn.execute("COMMIT")
                seconds = time.monotonic() - started
                self._bump(tx.statements)
            if self.on_batch:
                self.on_batch(1, seconds)
            return result, (tx.events[-1].id if tx.events else None)

    def _bump(self, statements: list[str]) -> None:
        if statements:
            with self._versions_lock:
                self.versions.bump(statements)

    # -- reachability ------------------------------------------------------------------------
    #
    # The first failed connection marks the database unreachable. From then on requests get
    # their 503 at once (instead of each waiting out the pool's timeout) while one probe
    # connects every PROBE_INTERVAL; its first success clears the mark, and the pool replaces
    # its broken connections as they are checked out. No operator step is needed.

    def _fail_fast(self) -> None:
        if self.unreachable is not None:
            raise Unavailable(f"the database is unreachable: {self.unreachable}",
                              retry_after=UNREACHABLE_RETRY_AFTER)

    def _unreachable(self, exc: BaseException) -> MeshError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.unreachable is None and self._loop is not None:
            self.unreachable = detail
            log.error("store.database_unreachable", backend="postgresql", detail=detail)
            self._loop.call_soon_threadsafe(self._start_probe)
            if self._on_unreachable:
                self._loop.call_soon_threadsafe(self._on_unreachable, detail)
        return Unavailable(f"the database is unreachable: {detail}",
                           retry_after=UNREACHABLE_RETRY_AFTER)

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = self._loop.create_task(self._probe_until_reachable(),
                                                 name="meshd-pg-probe")

    async def _probe_until_reachable(self) -> None:
        while self.unreachable is not None and self._pool is not None:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await asyncio.to_thread(self._connect_once)
            except psycopg.Error as exc:
                log.debug("store.probe_failed", detail=str(exc).strip()[:200])
                continue
            self._reachable()

    def _connect_once(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    def _reachable(self) -> None:
        if self.unreachable is not None:
            self.unreachable = None
            log.info("store.database_reachable", backend="postgresql")
            if self._on_unreachable and self._loop:
                self._loop.call_soon_threadsafe(self._on_unreachable, None)

    def file_size(self) -> int:
        """`pg_database_size` as last measured: what `meshd_database_bytes` and the console
        show. Called on the event loop, so a stale figure (older than SIZE_TTL) is refreshed
        in the background and this answers the last one without waiting."""
        if time.monotonic() - self._db_bytes_at > SIZE_TTL and self._pool is not None:
            self._db_bytes_at = time.monotonic()
            self._exec.submit(self._measure_size)
        return self._db_bytes

    def _measure_size(self) -> None:
        try:
            with self._pool.connection() as conn:
                row = conn.execute("SELECT pg_database_size(current_database()) AS n").fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            log.debug("store.size_unreadable", detail=str(exc).strip()[:200])
            return
        self._db_bytes = int(row["n"])
        self._db_bytes_at = time.monotonic()

    async def backup(self, backup_dir: Any, note: str) -> pg_backups.DumpManifest:
        """A verified pg_dump of meshd's tables (`store.pg_backups`), off the event loop."""
        return await asyncio.to_thread(pg_backups.take_dump, self.url, backup_dir, note)


# -- for the supervisor, which reads on connections of its own (the worker may be dead) -------


def read_sql(url: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Read-only portable SQL on a short-lived connection of its own."""
    return read_with(url, lambda reader: reader.query(sql, params))


def read_with(url: str, fn: Callable[..., T], *args: Any) -> T:
    """A store read function on a short-lived read-only connection of its own."""
    with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT),
                         row_factory=dict_row) as conn:
        conn.execute("SET default_transaction_read_only = on")
        return fn(_Reader(conn), *args)


class ReadOnlyPostgres:
    """The supervisor's `ReadStorage` on PostgreSQL (`store.readonly` on SQLite): each read on
    a fresh read-only connection in a thread, so it works while the worker is down."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = url

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(read_with, self.url, fn, *args)

    async def check(self, full: bool = False) -> list[str]:
        return await asyncio.to_thread(connection_check, self.url, full)


def connection_check(url: str, full: bool = False) -> list[str]:
    """What replaces SQLite's quick_check on PostgreSQL: the server answers, the schema is
    this build's and (full) meshd's tables are all there; the problems, empty when sound."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT),
                             row_factory=dict_row) as conn:
            found = pg_schema.version(conn)
            if found != pg_schema.SCHEMA_VERSION:
                return [f"meshd schema version {found}, expected {pg_schema.SCHEMA_VERSION}"]
            if full:
                missing = [t for t in pg_schema.TABLES if conn.execute(
                    "SELECT to_regclass(%s) IS NULL AS missing", (t,)).fetchone()["missing"]]
                if missing:
                    return [f"missing tables: {', '.join(missing)}"]
    except psycopg.Error as exc:
        return [f"the database is unreachable: {str(exc).strip().splitlines()[0]}"]
    return []
