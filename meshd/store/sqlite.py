"""SQLite backend: one writer thread with group commit and journal, reads beside it.

Every write is a function run on the writer thread (`store.writer`) inside one transaction
shared by a batch of queued writes (each in its own savepoint). The batch's statements are
appended to the journal and fsync'd before COMMIT, and futures resolve only after COMMIT: an
acknowledged write is durable.

Reads run on their own connections (WAL: they never wait on the writer). A read function
declared small (`store.base.small_read`: one row, one bounded page) runs on the event loop's
own connection, with no thread hand-off, within a budget of SQLite steps; anything else, and a
small read that overruns its budget, runs on the reader pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from errno import EDQUOT, ENOSPC, EROFS
from pathlib import Path
from typing import Any, TypeVar

from meshd import log as logging
from meshd import progress
from meshd.clock import db_time
from meshd.errors import Conflict, CorruptDatabase, InsufficientStorage, MeshError, Unavailable
from meshd.store import backups, event_log, schema
from meshd.store import events as ev
from meshd.store import journal as jr
from meshd.store.base import Row, runs_inline
from meshd.store.versions import TableVersions
from meshd.store.writer import Outcome, Write, WriterThread, settle

T = TypeVar("T")
log = logging.get("meshd.store")

MAX_BATCH = 512
# How much work a small read may do on the event loop before SQLite interrupts it and it runs on
# the reader pool instead, in SQLite virtual machine steps (a step took 40 ns on the loaded
# development machine: about 2 ms; a 50-message inbox page is about 1,300 steps), counted by a
# progress handler called every INLINE_CHECK_STEPS steps. Steps, not a clock: a wall-clock
# budget sent 1 to 4 % of inbox reads to the pool a second time on the loaded machine (read
# preempted mid-way), and reading the thread's CPU clock is a system call: 13 % of the worker's
# profile samples for the inbox, against 20 % for the read itself. What a step cannot bound,
# copying a large value, is bounded by the read being declared small: one row, or a page of at
# most 100 rows, which the response then encodes on the loop anyway.
INLINE_READ_STEPS = 50_000
INLINE_CHECK_STEPS = 1000
LARGE_CHUNK = 1 << 20
REPLAY_CHUNK = 1000
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_DISK_ERRNOS = {ENOSPC, EDQUOT, EROFS}
_SQLITE_FULL = 13


def is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = _dict_row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    if query_only:
        conn.execute("PRAGMA query_only = 1")
    return conn


def replay_journal(
    conn: sqlite3.Connection, journal_dir: Path, epoch: int, after_seq: int,
    until: str | None = None, since: jr.Scan | None = None,
) -> tuple[int, int]:
    """Apply the epoch's journal records past `after_seq` (and, for a point-in-time restore,
    not later than `until`, a DB-format time) in order; (records applied, last seq)."""
    pending = [r for r in jr.read_all(journal_dir, epoch, after_seq, since)
               if until is None or r.time <= until]
    pending.sort(key=lambda r: r.seq)
    with progress.Bar("replaying journal") as bar:
        _apply_chunks(conn, pending, bar)
    if pending:
        log.info("journal.replayed", records=len(pending), first_seq=pending[0].seq,
                 last_seq=pending[-1].seq, epoch=epoch)
    return len(pending), pending[-1].seq if pending else after_seq


def _apply_chunks(conn: sqlite3.Connection, pending: list, bar: progress.Bar) -> None:
    for start in range(0, len(pending), REPLAY_CHUNK):
        chunk = pending[start:start + REPLAY_CHUNK]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in chunk:
                for sql, params in record.statements:
                    conn.execute(sql, params)
            conn.execute("UPDATE meshd_meta SET value = ? WHERE key = 'journal_seq'",
                         (str(chunk[-1].seq),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        bar.update(start + len(chunk), len(pending))


class _RolledBack(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__("rolled back")
        self.result = result


class _Reader:
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # Plain tuples, then one list of column names for all rows: the connection's
        # row factory would rebuild cursor.description for every row (a quarter of the time
        # of a 10,000-row read such as the dashboard's).
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(sql, params).fetchall()
        if not rows:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self.conn.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return next(iter(row.values())) if row else None


class _Tx(_Reader):
    """Records each executed statement for the journal; reads are not recorded."""

    __slots__ = ("statements", "events")

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.statements: list[list[Any]] = []
        self.events: list[ev.Encoded] = []

    def emit(self, event: ev.Event) -> None:
        encoded = ev.encode(event)  # an unencodable event fails this write
        params = event_log.row_values(encoded, db_time())
        cursor = self.conn.execute(event_log.INSERT, params)
        self.statements.append([event_log.INSERT, list(params)])  # replay gives the same id
        self.events.append(event_log.with_id(encoded, cursor.lastrowid))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = self.conn.execute(sql, params)
        self.statements.append([sql, list(params)])
        return cursor.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return sum(self.execute(sql, row) for row in rows)

    def insert_large(self, table: str, key_column: str, key: str, column: str,
                     text: str) -> None:
        """Insert a large ASCII value (a file's base64) a chunk at a time through incremental
        blob I/O into a (key, value) table whose value is the last column: bound as a
        parameter, SQLite would copy it twice more. The journal records an INSERT that
        replays the same row."""
        cursor = self.conn.execute(
            f"INSERT INTO {table} ({key_column}, {column}) VALUES (?, zeroblob(?))",
            (key, len(text)))
        with self.conn.blobopen(table, column, cursor.lastrowid) as blob:
            for start in range(0, len(text), LARGE_CHUNK):
                blob.write(text[start:start + LARGE_CHUNK].encode("ascii"))
        self.statements.append([
            f"INSERT INTO {table} ({key_column}, {column}) VALUES (?, CAST(? AS BLOB))",
            [key, text]])


class SqliteStorage:
    def __init__(
        self,
        path: Path,
        journal_dir: Path,
        *,
        readers: int = 4,
        on_corruption: Callable[[str], None] | None = None,
        on_disk: Callable[[str | None], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.journal_dir = Path(journal_dir)
        self.read_only_reason: str | None = None
        self.migration: schema.MigrationReport | None = None
        # A journal scan made ahead of opening (a warm standby's): opening resumes after it.
        self.journal_scan: jr.Scan | None = None
        self.replayed = 0
        self._readers = readers
        self._on_corruption = on_corruption
        self._on_disk = on_disk  # called with the error when writes start failing, None after
        self._disk_refused = False
        # The batch function is looked up at each batch, not bound here: a bench wraps it.
        self._writer = WriterThread(lambda batch: self._run_batch(batch), self._complete,
                                    max_batch=MAX_BATCH)
        self._accepting = False  # writes are queued only between start and close
        self._rexec = ThreadPoolExecutor(readers, thread_name_prefix="meshd-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._inline: _Reader | None = None  # the event loop's own read connection
        self._inline_checks = 0  # progress handler calls left for the current inline read
        self._inline_overran = False
        # Small reads that overran the budget and went to the pool again (tests read it).
        self.inline_overruns = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._journal: jr.Journal | None = None
        self._seq = 0
        self.journal_epoch = 1
        self._corruption_reported = False
        # Called on the writer thread after each journaled batch: (writes, fsync seconds).
        self.on_batch: Callable[[int, float], None] | None = None
        # replica_sync: called on the writer thread with (epoch, last seq) after the journal
        # fsync and before COMMIT; False means no replica holds the batch: it is aborted.
        self.replica_sync: Callable[[int, int], bool] | None = None
        self._event_sink: ev.Sink | None = None
        # Bumped after each COMMIT for the tables it wrote: caches of reads check it.
        self.versions = TableVersions()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer.start()
        try:
            await self._writer.call(self._open)
        except BaseException:
            await self._writer.stop()
            raise
        self._inline = self._open_inline_reader()
        self._accepting = True

    def _open_inline_reader(self) -> _Reader:
        """The loop thread's read connection. It never waits: no busy timeout (a busy
        database sends the read to the pool, whose connections wait), and a progress handler
        interrupts a read past its budget."""
        conn = connect(self.path, query_only=True)
        conn.execute("PRAGMA busy_timeout = 0")
        conn.set_progress_handler(self._inline_over_budget, INLINE_CHECK_STEPS)
        return _Reader(conn)

    def _inline_over_budget(self) -> int:
        self._inline_checks -= 1
        if self._inline_checks < 0:
            self._inline_overran = True
            return 1  # SQLite interrupts the statement
        return 0

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists() and self.path.stat().st_size > 0
        conn = connect(self.path)
        conn.row_factory = None  # schema code reads plain tuples
        if existed and schema.has_tables(conn):
            version = schema.user_version(conn)
            if version > schema.SCHEMA_VERSION:
                conn.close()
                raise schema.SchemaTooNew(
                    f"{self.path} has schema version {version}, newer than this meshd build "
                    f"supports ({schema.SCHEMA_VERSION}); upgrade meshd or restore a backup "
                    "made by this version"
                )
            if version < schema.SCHEMA_VERSION:
                copy = self._copy_before_migration(conn, version)
                log.info("store.migration_copy", path=str(copy), from_version=version)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # The journal is fsync'd before every COMMIT, so SQLite itself need not fsync the WAL
        # on commit: after a power loss the journal replays what the WAL lost.
        conn.execute("PRAGMA synchronous = NORMAL")
        started = time.monotonic()
        self.migration = schema.migrate(conn)
        conn.row_factory = _dict_row
        if self.migration.migrated:
            log.info(
                "store.migrated",
                from_version=self.migration.from_version,
                to_version=self.migration.to_version,
                conflicts=len(self.migration.conflicts),
                seconds=round(time.monotonic() - started, 3),
            )
            for conflict in self.migration.conflicts:
                log.warning("store.migration_conflict", table=conflict["table"],
                            reason=conflict["reason"], row=conflict["row"])
            for ref in self.migration.dangling:
                log.warning("store.migration_dangling_reference", **ref,
                            detail="rows kept; they name an agent moved to migration_conflicts")
        self._conn = conn
        epoch = int(self._meta("journal_epoch") or 1)
        db_seq = int(self._meta("journal_seq") or 0)
        self._journal = jr.Journal(self.journal_dir, epoch)
        self._journal.open(self.journal_scan)
        if self._journal.torn_tail_bytes:
            log.warning("journal.torn_tail_cut", bytes=self._journal.torn_tail_bytes)
        # Nothing past the database's own sequence (the usual case, a restore included): no
        # need to read the journal at all.
        self.replayed = self._replay(db_seq, epoch) if self._journal.last_seq > db_seq else 0
        self._seq = max(db_seq, self._journal.last_seq)
        self.journal_epoch = epoch
        log.info("store.opened", path=str(self.path), journal_mode=mode,
                 schema_version=schema.SCHEMA_VERSION, journal_seq=self._seq,
                 replayed=self.replayed)

    def _copy_before_migration(self, conn: sqlite3.Connection, version: int) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        copy = self.path.with_name(f"{self.path.name}.pre-meshd-v{version}-{stamp}.bak")
        target = sqlite3.connect(copy)
        try:
            conn.backup(target)
        finally:
            target.close()
        return copy

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meshd_meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def _replay(self, after_seq: int, epoch: int) -> int:
        """Apply journal records the database does not have yet (a crash between journal
        fsync and COMMIT, or a restore onto an older backup)."""
        count, _last = replay_journal(self._conn, self.journal_dir, epoch, after_seq,
                                      since=self._journal.resumed_from)
        return count

    async def close(self) -> None:
        # New writes are refused from here on; those already queued run and are answered
        # before the writer's connection closes.
        self._accepting = False
        if self._writer.running:
            if self._conn is not None:
                await self._writer.call(self._close_writer)
            await self._writer.stop()
        if self._inline is not None:
            self._inline.conn.close()
            self._inline = None
        with self._conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._rexec.shutdown(wait=True)

    def _close_writer(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            log.warning("store.checkpoint_failed", error=str(exc))
        self._conn.close()
        self._conn = None
        self._journal.close()

    # -- reads -------------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline is not None and runs_inline(fn, args):
            done, value = self._read_inline(fn, args)
            if done:
                return value
        return await self._loop.run_in_executor(self._rexec, self._run_read, fn, args)

    def _read_inline(self, fn: Callable[..., T], args: tuple) -> tuple[bool, T | None]:
        """A small read on the loop's connection: (True, its result), or (False, None) when it
        must go to the pool instead: it overran INLINE_READ_STEPS (interrupted by the
        progress handler, so the loop is held at most about that long) or met a busy
        database. Read functions have no side effects, so running one again is safe."""
        self._inline_overran = False
        self._inline_checks = INLINE_READ_STEPS // INLINE_CHECK_STEPS
        try:
            return True, fn(self._inline, *args)
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                raise self._storage_error(exc) from exc
            if self._inline_overran:
                self.inline_overruns += 1
            return False, None  # interrupted, busy, or any other error: the pool decides

    def _reader(self) -> _Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            conn = connect(self.path, query_only=True)
            with self._conns_lock:
                self._reader_conns.append(conn)
            reader = self._local.reader = _Reader(conn)
        return reader

    def _run_read(self, fn: Callable[..., T], args: tuple) -> T:
        try:
            return fn(self._reader(), *args)
        except sqlite3.DatabaseError as exc:
            raise self._storage_error(exc) from exc

    async def check(self, full: bool = False) -> list[str]:
        """`PRAGMA quick_check` (or `integrity_check`): the problems found, empty when sound."""
        pragma = "integrity_check" if full else "quick_check"

        def run(reader: _Reader) -> list[str]:
            rows = reader.conn.execute(f"PRAGMA {pragma}").fetchall()
            problems = [next(iter(r.values())) for r in rows]
            return [] if problems == ["ok"] else problems

        try:
            return await self.read(run)
        except CorruptDatabase as exc:
            return [exc.message]

    # -- writes ------------------------------------------------------------------------------

    def set_read_only(self, reason: str | None) -> None:
        self.read_only_reason = reason

    def set_event_sink(self, sink: ev.Sink | None) -> None:
        self._event_sink = sink

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        if self.read_only_reason:
            raise Unavailable(f"meshd is read-only: {self.read_only_reason}")
        return await self.write_internal(fn, *args)

    async def write_internal(self, fn: Callable[..., T], *args: Any) -> T:
        """A write that read-only mode does not refuse: meshd's own records (catastrophe
        events, protocol steps) must be kept while the API refuses writes."""
        if not self._accepting:
            raise Unavailable("the store is not open")
        return await self._writer.submit(fn, args)

    async def trial(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write function on the writer and roll it back: nothing is committed or
        journaled. The self-test exercises the write path this way in read-only mode."""

        def rolled_back(tx: _Tx, *inner: Any) -> T:
            raise _RolledBack(fn(tx, *inner))

        try:
            await self.write_internal(rolled_back, *args)
        except _RolledBack as done:
            return done.result
        raise RuntimeError("trial write was not rolled back")

    def _complete(self, batch: list[Write], outcomes: list[Outcome]) -> None:
        """On the loop, once per batch: its events to the hub, then each writer answered."""
        self._deliver([e for ok, _value, events in outcomes if ok for e in events])
        for write, (ok, value, _events) in zip(batch, outcomes, strict=True):
            settle(write, ok, value)

    def _deliver(self, events: list[ev.Encoded]) -> None:
        """The one path from a committed write to the WebSocket: in commit order, before any
        writer of the batch is answered."""
        if events and self._event_sink is not None:
            try:
                self._event_sink(events)
            except Exception:  # noqa: BLE001 - a committed write stays committed
                log.exception("store.event_delivery_failed", events=len(events))

    def _run_batch(self, batch: list[Write]) -> list[Outcome]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            err = self._storage_error(exc)
            return [(False, err, [])] * len(batch)
        outcomes: list[tuple[bool, Any, list[ev.Encoded]]] = []
        records: list[jr.Record] = []
        now = db_time()
        for write in batch:
            tx = _Tx(conn)
            try:
                conn.execute("SAVEPOINT op")
                result = write.fn(tx, *write.args)
                conn.execute("RELEASE op")
            except sqlite3.DatabaseError as exc:
                if is_corruption(exc) or self._disk_full(exc):
                    conn.execute("ROLLBACK")
                    err = self._storage_error(exc)
                    return [(False, err, [])] * len(batch)
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(exc, sqlite3.IntegrityError):
                    exc = Conflict(f"the write conflicts with existing data ({exc})")
                outcomes.append((False, exc, []))
                continue
            except Exception as exc:  # noqa: BLE001 - handed to the request that caused it
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(exc, StopIteration):  # a Future refuses to carry one
                    exc = RuntimeError(f"write function raised StopIteration: {exc}")
                outcomes.append((False, exc, []))
                continue
            if tx.statements:
                records.append(jr.Record(self._seq + len(records) + 1, jr.WRITE, now,
                                         tx.statements))
            outcomes.append((True, result, tx.events))
        if not records:
            conn.execute("COMMIT")
            return outcomes
        last_seq = records[-1].seq
        try:
            conn.execute("UPDATE meshd_meta SET value = ? WHERE key = 'journal_seq'",
                         (str(last_seq),))
            self._journal.append(records)
        except (OSError, sqlite3.DatabaseError) as exc:
            conn.execute("ROLLBACK")
            err = self._storage_error(exc)
            log.error("journal.append_failed", error=str(exc), records=len(records))
            return [(False, err, []) if ok else (ok, v, []) for ok, v, _e in outcomes]
        self._seq = last_seq
        if self.on_batch:
            self.on_batch(len(records), self._journal.last_fsync_seconds)
        if self.replica_sync is not None and not self.replica_sync(self.journal_epoch, last_seq):
            self._abort(records[0].seq, last_seq)  # shipped too: replay skips the batch
            with contextlib.suppress(sqlite3.DatabaseError):
                conn.execute("ROLLBACK")
            log.warning("store.replica_sync_failed", first_seq=records[0].seq,
                        last_seq=last_seq)
            err = Unavailable("no replica confirmed the write within replica_sync_timeout; "
                              "nothing was committed", retry_after=2)
            return [(False, err, []) if ok else (ok, v, []) for ok, v, _e in outcomes]
        try:
            conn.execute("COMMIT")
            if self._disk_refused:
                self._report_disk(None)
        except sqlite3.DatabaseError as exc:
            self._abort(records[0].seq, last_seq)
            with contextlib.suppress(sqlite3.DatabaseError):
                conn.execute("ROLLBACK")
            err = self._storage_error(exc)
            log.error("store.commit_failed", error=str(exc), first_seq=records[0].seq,
                      last_seq=last_seq)
            return [(False, err, []) if ok else (ok, v, []) for ok, v, _e in outcomes]
        # Committed: outside the try above, so nothing here can be mistaken for a failed COMMIT.
        self.versions.bump(sql for r in records for sql, _params in r.statements)
        return outcomes

    def _abort(self, first: int, last: int) -> None:
        """Mark a journaled batch whose COMMIT failed, so replay never applies it."""
        self._seq = last + 1
        try:
            self._journal.append([jr.Record(self._seq, jr.ABORT, db_time(), [first, last])])
        except OSError as exc:
            log.error("journal.abort_record_failed", error=str(exc), first_seq=first,
                      last_seq=last)

    @staticmethod
    def _disk_full(exc: BaseException) -> bool:
        if isinstance(exc, OSError):
            return exc.errno in _DISK_ERRNOS
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) == _SQLITE_FULL

    def _storage_error(self, exc: BaseException) -> MeshError:
        if is_corruption(exc):
            self._report_corruption(str(exc))
            return CorruptDatabase(
                "the database is corrupt; meshd is restoring it", retry_after=10
            )
        if self._disk_full(exc):
            self._report_disk(str(exc))
            return InsufficientStorage(f"the disk refused the write: {exc}", retry_after=30)
        return Unavailable(f"the database could not complete the write: {exc}")

    def _report_disk(self, detail: str | None) -> None:
        """Once when writes start failing for lack of space, once when they work again."""
        full = detail is not None
        if full == self._disk_refused:
            return
        self._disk_refused = full
        if full:
            log.error("store.disk_full", detail=detail, path=str(self.path))
        else:
            log.info("store.disk_ok", path=str(self.path))
        if self._on_disk and self._loop:
            self._loop.call_soon_threadsafe(self._on_disk, detail)

    def _report_corruption(self, detail: str) -> None:
        if self._corruption_reported:
            return
        self._corruption_reported = True
        log.error("store.corruption_detected", detail=detail, path=str(self.path))
        if self._on_corruption and self._loop:
            self._loop.call_soon_threadsafe(self._on_corruption, detail)

    @property
    def journal_seq(self) -> int:
        return self._seq

    async def backup(self, backup_dir: Path, note: str) -> backups.Manifest:
        """A verified backup of this database (`store.backups`), off the event loop."""
        return await asyncio.to_thread(backups.take_backup, self.path, backup_dir, note)

    def file_size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0
