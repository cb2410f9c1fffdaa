"""`meshd migrate --to postgresql://...`: copy a SQLite mesh into PostgreSQL, verified by row
counts and checksums, resumable.

Rows are copied table by table (parents first), a chunk per transaction, in SQLite rowid order
and with their rowids, so list order (`ORDER BY x, rowid`) is the same on both sides and an
interrupted copy resumes after the highest rowid already in the target. The event log is
copied by its id (SQLite's rowid alias), and its identity then starts past every id SQLite
issued: a WebSocket client resuming with `?since=ID` never sees ids go backwards. A row whose parent is
missing (Node databases had no foreign key enforcement; meshd's own migration keeps rows that
name a moved duplicate agent) cannot enter PostgreSQL's foreign keys: it goes to
`migration_conflicts` as JSON with the reason, never dropped.

Verification reads both sides in rowid order: for every table, the number of rows copied plus
those moved equals the source's, and a SHA-256 over every copied row's values (as text) is the
same on both sides.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from meshd import log as logging
from meshd.clock import db_time
from meshd.store import pg_schema, schema

log = logging.get("meshd.store.pg_migrate")

CHUNK = 1000
# Copy order: every parent before its children.
ORDER = (
    "meshd_meta", "migration_conflicts", "agents", "agent_tokens", "agent_groups",
    "system_updates",
    "messages", "skills", "agent_group_members", "collective_memory", "memory_history",
    "agent_files", "file_contents", "update_acknowledgments", "catastrophe_events",
    "agent_health_status", "protocol_runs", "protocol_steps", "events",
)
# The column a table's rows are copied, resumed and verified in the order of: SQLite's rowid,
# kept in PostgreSQL's `rowid` identity, except for the event log, whose id (SQLite's rowid
# alias) is its identity: the ids a resuming WebSocket client already holds.
KEYS = {"events": "id", "meshd_meta": ""}
PARENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "agent_group_members": (("group_id", "agent_groups"), ("agent_id", "agents")),
    "collective_memory": (("group_id", "agent_groups"), ("agent_id", "agents")),
    "agent_tokens": (("agent_id", "agents"),),
    "agent_files": (("agent_id", "agents"),),
    "file_contents": (("file_id", "agent_files"),),
    "update_acknowledgments": (("update_id", "system_updates"), ("agent_id", "agents")),
    "agent_health_status": (("agent_id", "agents"),),
}
MOVED_PREFIX = "pg-migrate-"
SKIP_META = ("journal_seq", "journal_epoch", "schema_version")


class MigrateError(RuntimeError):
    pass


@dataclass
class TableReport:
    source_rows: int = 0
    copied: int = 0  # this run
    target_rows: int = 0
    moved: int = 0
    checksum: str = ""
    verified: bool = False


@dataclass
class MigrateReport:
    tables: dict[str, TableReport] = field(default_factory=dict)
    resumed: bool = False

    @property
    def verified(self) -> bool:
        return all(t.verified for t in self.tables.values())


def _source(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise MigrateError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    version = schema.user_version(conn)
    if version != schema.SCHEMA_VERSION:
        conn.close()
        raise MigrateError(
            f"{path} has schema version {version}; this meshd copies version "
            f"{schema.SCHEMA_VERSION}: run this meshd on it once first (it migrates the file, "
            "keeping a copy), then migrate")
    return conn


def _source_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _target_columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        " AND table_schema = current_schema() ORDER BY ordinal_position", (table,)).fetchall()
    return [r[0] for r in rows]


def _orphan_filter(table: str, alias: str = "t") -> str:
    """SQL (on SQLite) true for a row whose every parent exists."""
    parts = [f"{alias}.{column} IN (SELECT id FROM {parent})"
             for column, parent in PARENTS.get(table, ())]
    return " AND ".join(parts) if parts else "1"


def _value(v: Any) -> Any:
    return v.decode("ascii", "replace") if isinstance(v, bytes) else v


def _text(v: Any) -> str:
    """One value as the checksum sees it: the same on both engines."""
    if v is None:
        return "\x00"
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _digest(rows: Iterator[tuple]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update("\x1f".join(_text(v) for v in row).encode())
        h.update(b"\x1e")
        n += 1
    return h.hexdigest(), n


def migrate(source: Path, url: str) -> MigrateReport:
    """Copy (or finish copying) `source` into the PostgreSQL database at `url`, then verify.
    meshd must not write to `source` meanwhile (the caller holds the writer lock)."""
    src = _source(source)
    report = MigrateReport()
    try:
        with psycopg.connect(url, autocommit=True) as dst:
            pg_schema.migrate(dst)
            present = {r[0] for r in src.execute("SELECT name FROM sqlite_master"
                                                 " WHERE type = 'table'")}
            started = dst.execute("SELECT value FROM meshd_meta WHERE key = 'migrated_from'"
                                  ).fetchone()
            if started and started[0] != str(source.resolve()):
                raise MigrateError(f"the target already holds a mesh migrated from {started[0]}")
            report.resumed = started is not None
            if not started:
                busy = [t for t in ORDER if t != "meshd_meta" and dst.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]]
                if busy:
                    raise MigrateError(f"the target database is not empty ({', '.join(busy)})")
                with dst.transaction():
                    dst.execute("INSERT INTO meshd_meta (key, value) VALUES ('migrated_from', %s)",
                                (str(source.resolve()),))
            for table in ORDER:
                if table in present:
                    report.tables[table] = _copy(src, dst, table)
            _reset_identities(src, dst)
            for table in ORDER:
                if table in present:
                    _move_orphans(src, dst, table, report.tables[table])
                    _verify(src, dst, table, report.tables[table])
            with dst.transaction():
                dst.execute("INSERT INTO meshd_meta (key, value) VALUES ('migrated_at', %s)"
                            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (db_time(),))
    finally:
        src.close()
    log.info("migrate.completed", source=str(source), verified=report.verified,
             rows=sum(t.target_rows for t in report.tables.values()),
             moved=sum(t.moved for t in report.tables.values()), resumed=report.resumed)
    return report


def _copy(src: sqlite3.Connection, dst: psycopg.Connection, table: str) -> TableReport:
    result = TableReport()
    key = _key(table)
    columns = _copied_columns(src, dst, table)
    if table == "meshd_meta":
        with dst.transaction():
            for key, value in src.execute("SELECT key, value FROM meshd_meta"):
                if key not in SKIP_META:
                    dst.execute("INSERT INTO meshd_meta (key, value) VALUES (%s, %s)"
                                " ON CONFLICT (key) DO NOTHING", (key, value))
        return result
    after = dst.execute(f"SELECT COALESCE(MAX({key}), 0) FROM {table}").fetchone()[0]
    names = ", ".join(columns)
    insert = (f"INSERT INTO {table} ({key}, {names}) OVERRIDING SYSTEM VALUE"
              f" VALUES (%s, {', '.join('%s' for _ in columns)})")
    select = (f"SELECT t.{key}, {', '.join('t.' + c for c in columns)} FROM {table} t"
              f" WHERE t.{key} > ? AND {_orphan_filter(table)} ORDER BY t.{key} LIMIT {CHUNK}")
    while True:
        rows = src.execute(select, (after,)).fetchall()
        if not rows:
            break
        with dst.transaction(), dst.cursor() as cur:
            cur.executemany(insert, [tuple(_value(v) for v in row) for row in rows])
        result.copied += len(rows)
        after = rows[-1][0]
    return result


def _key(table: str) -> str:
    return KEYS.get(table, "rowid")


def _copied_columns(src: sqlite3.Connection, dst: psycopg.Connection, table: str) -> list[str]:
    """The columns both sides have, less the key (copied first, on its own)."""
    target = set(_target_columns(dst, table))
    return [c for c in _source_columns(src, table)
            if c in target and c not in ("rowid", _key(table))]


def _sqlite_sequence(src: sqlite3.Connection, table: str) -> int:
    """The highest id an AUTOINCREMENT table ever issued, rows since deleted included."""
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table: no sqlite_sequence
        return 0
    return int(row[0]) if row else 0


def _reset_identities(src: sqlite3.Connection, dst: psycopg.Connection) -> None:
    """Explicit keys do not move the identity sequences: start them after the copied ones.
    The event log's starts past every id SQLite issued (a pruned or deleted newest event
    included), so a resuming WebSocket client never sees an id go backwards."""
    for table in ORDER:
        key = _key(table)
        if not key:  # meshd_meta: no identity
            continue
        issued = _sqlite_sequence(src, table) if key == "id" else 0
        dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'),"
                    f" GREATEST(COALESCE((SELECT MAX({key}) FROM {table}), 0), %s) + 1, false)",
                    (issued,))


def _move_orphans(src: sqlite3.Connection, dst: psycopg.Connection, table: str,
                  result: TableReport) -> None:
    if table not in PARENTS:
        return
    names = _source_columns(src, table)
    orphans = src.execute(f"SELECT t.rowid AS _rowid, t.* FROM {table} t"
                          f" WHERE NOT ({_orphan_filter(table)}) ORDER BY t.rowid").fetchall()
    with dst.transaction():
        for raw in orphans:
            row = dict(zip(["_rowid", *names], (_value(v) for v in raw), strict=True))
            dst.execute(
                "INSERT INTO migration_conflicts (id, table_name, row_json, reason, moved_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (f"{MOVED_PREFIX}{table}-{row['_rowid']}", table, orjson.dumps(row).decode(),
                 "references a row missing in the source (no foreign key in SQLite)",
                 db_time()))
    result.moved = len(orphans)
    if orphans:
        log.warning("migrate.rows_moved", table=table, rows=len(orphans))


def _verify(src: sqlite3.Connection, dst: psycopg.Connection, table: str,
            result: TableReport) -> None:
    if table == "meshd_meta":
        result.verified = True
        return
    key = _key(table)
    columns = [key, *_copied_columns(src, dst, table)] if key == "id" \
        else _copied_columns(src, dst, table)
    cols = ", ".join(columns)
    result.source_rows = src.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    own = f" WHERE id NOT LIKE '{MOVED_PREFIX}%'" if table == "migration_conflicts" else ""
    result.target_rows = dst.execute(f"SELECT COUNT(*) FROM {table}{own}").fetchone()[0]
    source_sum, _ = _digest(iter(src.execute(
        f"SELECT {', '.join('t.' + c for c in columns)} FROM {table} t"
        f" WHERE {_orphan_filter(table)} ORDER BY t.{key}")))
    with dst.transaction(), dst.cursor(name=f"verify_{table}") as cur:  # server-side
        cur.execute(f"SELECT {cols} FROM {table}{own} ORDER BY {key}")
        target_sum, _ = _digest(iter(cur))
    result.checksum = target_sum
    result.verified = (source_sum == target_sum
                       and result.target_rows + result.moved == result.source_rows)
    if not result.verified:
        raise MigrateError(
            f"{table}: verification failed (source {result.source_rows} rows, target "
            f"{result.target_rows} + {result.moved} moved; checksums {source_sum[:12]} vs "
            f"{target_sum[:12]})")
