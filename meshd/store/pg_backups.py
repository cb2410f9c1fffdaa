"""Backups of a PostgreSQL mesh: `pg_dump` of meshd's tables, verified by restoring the dump
into a scratch database and comparing every table's row count with the counts taken in the
very snapshot the dump read (`pg_dump --snapshot`), then a manifest beside it.

These are logical backups for moving or rewinding one mesh; point-in-time recovery of a
production cluster is PostgreSQL's own (pgBackRest or WAL-G on the WAL archive), see
docs/postgresql.md. `restore` puts such a dump back in place of meshd's tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from psycopg import conninfo

from meshd import log as logging
from meshd.locks import write_atomic
from meshd.store import pg_schema

log = logging.get("meshd.store.pg_backups")

SUFFIX = ".pgdump"
TIMEOUT = 3600
EVENTS = "events"
# Every table meshd owns, the event log (schema version 3) among them: a resuming WebSocket
# client reads from it, so a restore must bring it back.
TABLES = pg_schema.TABLES
assert EVENTS in TABLES


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DumpManifest:
    file: str
    created_at: str
    reason: str
    sha256: str
    size: int
    schema_version: int
    row_counts: dict[str, int]
    verified: bool


def tool(name: str) -> str:
    """`pg_dump` / `pg_restore`: on PATH, else the newest server install's (Debian keeps the
    versioned binaries in /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    root = Path("/usr/lib/postgresql")
    candidates = sorted(root.glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools")
    return str(candidates[-1])


def _with_database(url: str, dbname: str) -> str:
    info = conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return conninfo.make_conninfo(**info)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[:500]}")


def _counts(conn: psycopg.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def _has_table(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def _event_position(conn: psycopg.Connection) -> int:
    """The highest event id this database issued: its newest row or, past pruned or deleted
    rows, its sequence's last value; 0 without an event log."""
    if not _has_table(conn, EVENTS):
        return 0
    return conn.execute(
        f"SELECT GREATEST(COALESCE((SELECT MAX(id) FROM {EVENTS}), 0), COALESCE("
        f"pg_sequence_last_value(pg_get_serial_sequence('{EVENTS}', 'id')), 0))").fetchone()[0]


def dumped_tables(dump: Path) -> set[str]:
    """The tables a custom-format dump holds (from its table of contents)."""
    done = subprocess.run([tool("pg_restore"), "--list", str(dump)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise BackupError(f"pg_restore --list failed: {done.stderr.strip()[:500]}")
    # A TOC line: "215; 1259 16390 TABLE public events owner" (";" starts a comment line;
    # "TABLE DATA public events owner" is the same table's rows).
    found = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if not line.startswith(";") and len(words) >= 6 and words[3] == "TABLE" \
                and words[4] != "DATA":
            found.add(words[5])
    return found


def take_dump(url: str, backup_dir: Path, reason: str = "operator") -> DumpManifest:
    """Dump meshd's tables, verify the dump in a scratch database, write its manifest."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    name = f"{now.strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z{SUFFIX}"
    tmp = backup_dir / f".tmp-{os.getpid()}-{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            counts = _counts(conn)
            version = pg_schema.version(conn)
            tables = [arg for t in TABLES for arg in ("--table", t)]
            # The exporting transaction stays open while pg_dump reads its snapshot.
            _run([tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                  f"--snapshot={snapshot}", *tables, "--file", str(tmp), "--dbname", url])
            conn.execute("COMMIT")
        verify_dump(url, tmp, counts)
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            os.fsync(fh.fileno())
        final = backup_dir / name
        os.replace(tmp, final)
        manifest = DumpManifest(final.name, now.isoformat(), reason, digest.hexdigest(),
                                final.stat().st_size, version, counts, True)
        write_atomic(final.with_name(final.name + ".json"), orjson.dumps(asdict(manifest)))
    except (OSError, psycopg.Error, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"PostgreSQL backup failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("backup.completed", backend="postgresql", file=manifest.file, size=manifest.size,
             rows=sum(counts.values()), reason=reason)
    return manifest


def verify_dump(url: str, dump: Path, counts: dict[str, int]) -> None:
    """Restore the dump into a scratch database on the same server and compare row counts;
    the scratch database is dropped whatever happens."""
    scratch = f"meshd_verify_{os.getpid()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    try:
        scratch_url = _with_database(url, scratch)
        _run([tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
              "--dbname", scratch_url, str(dump)])
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            restored = _counts(conn)
        if restored != counts:
            differ = {t: (counts[t], restored.get(t)) for t in counts
                      if restored.get(t) != counts[t]}
            raise BackupError(f"the restored dump's row counts differ: {differ}")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def restore(url: str, dump: Path) -> dict[str, int]:
    """Replace meshd's tables in the database at `url` with the dump's (schema, data and
    identity positions, as dumped); the row counts now. The caller stops meshd's worker
    first: writes would race the load.

    Event ids never go backwards: a WebSocket client that saw id N before the restore resumes
    with `?since=N`, so the event id sequence restarts past both the dump's events and the
    ones this database had issued. A dump taken before the event log was dumped (it has no
    `events` table) keeps the database's table and position, emptied: those events describe
    changes the restore took away."""
    dumped = dumped_tables(dump)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        floor = _event_position(conn)
        gone = [t for t in TABLES if t != EVENTS or EVENTS in dumped]
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(gone)} CASCADE")
        if EVENTS not in dumped and _has_table(conn, EVENTS):
            conn.execute(f"DELETE FROM {EVENTS}")  # the sequence keeps its place
    _run([tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
          "--single-transaction", "--dbname", url, str(dump)])
    with psycopg.connect(url, autocommit=True) as conn:
        if _has_table(conn, EVENTS):
            after = max(floor, _event_position(conn))
            if after:
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{EVENTS}', 'id'), %s)",
                             (after,))
        counts = _counts(conn)
    log.info("restore.completed", backend="postgresql", file=str(dump),
             rows=sum(counts.values()))
    return counts


def list_dumps(backup_dir: Path) -> list[DumpManifest]:
    """The dumps that have a manifest (a dump is renamed into place only once verified),
    newest first."""
    found = []
    for path in sorted(backup_dir.glob(f"*{SUFFIX}.json"), reverse=True):
        try:
            found.append(DumpManifest(**orjson.loads(path.read_bytes())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def prune(backup_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` dumps (and their manifests); the names deleted."""
    dumps = sorted(backup_dir.glob(f"*{SUFFIX}"))
    gone = dumps[:-keep] if keep > 0 else []
    for dump in gone:
        dump.unlink(missing_ok=True)
        dump.with_name(dump.name + ".json").unlink(missing_ok=True)
    return [d.name for d in gone]
