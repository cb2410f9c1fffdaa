"""Verified online backups of the database, their manifests, retention, and restore.

A backup is one step of SQLite's online backup API from a read connection: in WAL mode it copies
a snapshot without blocking the writer. It is written under a temporary name, checked with
`PRAGMA integrity_check`, renamed into place, and only then described by a manifest (SHA-256,
size, last journal sequence): a file without a manifest never counts as a backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from meshd import log as logging
from meshd import progress
from meshd.locks import fsync_path, write_atomic
from meshd.store import dburl
from meshd.store import journal as jr

log = logging.get("meshd.backups")


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Manifest:
    file: str
    created_at: str  # ISO UTC
    size: int
    sha256: str
    journal_seq: int
    journal_epoch: int
    schema_version: int
    integrity: str
    seconds: float
    reason: str = "scheduled"
    row_counts: dict[str, int] | None = None  # per table: what a restore drill checks

    @property
    def verified(self) -> bool:
        return self.integrity == "ok"

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def path(self, backup_dir: Path) -> Path:
        return backup_dir / self.file


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def header_problems(path: Path) -> list[str]:
    """What SQLite's checks miss: a zero-byte file is an empty database to SQLite (and opening
    it deletes its -wal), and a file cut short below the page count in its header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        return [str(exc)]
    if size == 0:
        return [f"{path.name} is empty (0 bytes)"]
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return [f"{path.name} is not a database (bad header)"]
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages and size < page_size * pages:
        return [f"{path.name} is {size} bytes, shorter than its {pages} pages of {page_size}"]
    return []


def integrity(path: Path, full: bool = True) -> list[str]:
    """integrity_check (or quick_check) of a file: the problems, empty when sound."""
    if dburl.is_url(path):  # a connection check: page integrity is PostgreSQL's own
        from meshd.store import postgres  # only on PostgreSQL: the worker on SQLite skips it

        return postgres.connection_check(str(path), full)
    pragma = "integrity_check" if full else "quick_check"
    problems = header_problems(path)
    if problems:
        return problems
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of a database file, recorded in its manifest so a restore drill can tell
    a restored copy holds what the backup held."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def journal_position(path: Path) -> tuple[int, int]:
    """(epoch, seq) recorded in a database file's meta table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = dict(conn.execute(
            "SELECT key, value FROM meshd_meta WHERE key IN ('journal_seq', 'journal_epoch')"))
    finally:
        conn.close()
    return int(rows.get("journal_epoch", 1)), int(rows.get("journal_seq", 0))


PACED_COPY_LIMIT = 1 << 30  # databases up to this size are staged in memory, then paced
PACED_STEP_PAGES = 256


def copy_snapshot(source: sqlite3.Connection, target_path: Path, size: int) -> int:
    """Copy a consistent snapshot of `source` to `target_path`; its schema version.

    One step of the backup API takes the snapshot (a stepped copy from a live WAL database
    restarts on every write). Written to disk in one go, its hundreds of megabytes of dirty
    pages then stall the writer's journal fsyncs for tens of milliseconds. So a database up to
    PACED_COPY_LIMIT is copied into memory in one step, and from there to the file a megabyte
    at a time with an fdatasync after each, keeping the disk queue short."""
    target = sqlite3.connect(target_path)
    try:
        if size > PACED_COPY_LIMIT:
            source.backup(target)
        else:
            staged = sqlite3.connect(":memory:")
            try:
                source.backup(staged)
                target.execute("PRAGMA synchronous = OFF")
                fd = os.open(target_path, os.O_RDWR)

                def step(_status: int, remaining: int, total: int) -> None:
                    os.fdatasync(fd)
                    bar.update(total - remaining, total)

                try:
                    with progress.Bar("copying backup") as bar:
                        staged.backup(target, pages=PACED_STEP_PAGES, progress=step, sleep=0)
                finally:
                    os.close(fd)
            finally:
                staged.close()
        # A self-contained file: checking or copying it later creates no -wal/-shm.
        target.execute("PRAGMA journal_mode = DELETE")
        return target.execute("PRAGMA user_version").fetchone()[0]
    finally:
        target.close()


def take_backup(database: Path, backup_dir: Path, reason: str = "scheduled") -> Manifest:
    """Copy, verify, rename, describe. Raises BackupError and leaves older backups alone."""
    started = time.monotonic()
    now = datetime.now(UTC)
    tmp = backup_dir / f".tmp-{os.getpid()}-{now.strftime('%Y%m%dT%H%M%S%f')}.db"
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            schema_version = copy_snapshot(source, tmp, database.stat().st_size)
        finally:
            source.close()
        problems = integrity(tmp, full=True)
        if problems:
            raise BackupError(f"the copy failed integrity_check: {'; '.join(problems[:3])}")
        epoch, seq = journal_position(tmp)
        counts = row_counts(tmp)
        fsync_path(tmp)
        name = f"{now.strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z-e{epoch}-s{seq}.db"
        final = backup_dir / name
        os.replace(tmp, final)
        fsync_path(backup_dir)
        manifest = Manifest(
            file=name, created_at=now.isoformat(), size=final.stat().st_size,
            sha256=sha256_file(final), journal_seq=seq, journal_epoch=epoch,
            schema_version=schema_version, integrity="ok",
            seconds=round(time.monotonic() - started, 3), reason=reason, row_counts=counts)
        write_atomic(final.with_suffix(".json"), orjson.dumps(asdict(manifest),
                                                              option=orjson.OPT_INDENT_2))
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"backup of {database} failed: {exc}") from exc
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                leftover.unlink()
    log.info("backup.completed", file=manifest.file, bytes=manifest.size,
             journal_seq=seq, seconds=manifest.seconds, reason=reason)
    return manifest


def list_backups(backup_dir: Path) -> list[Manifest]:
    """Every backup with a readable manifest, newest first."""
    manifests = []
    for path in backup_dir.glob("*.json"):
        try:
            manifests.append(Manifest(**orjson.loads(path.read_bytes())))
        except (orjson.JSONDecodeError, TypeError, OSError):
            log.warning("backup.manifest_unreadable", path=str(path))
    return sorted(manifests, key=lambda m: m.created_at, reverse=True)


def verify(manifest: Manifest, backup_dir: Path) -> list[str]:
    """Problems with a backup file now: missing, wrong size or hash, failed integrity."""
    path = manifest.path(backup_dir)
    if not path.exists():
        return [f"{manifest.file} is missing"]
    if path.stat().st_size != manifest.size:
        return [f"{manifest.file} has size {path.stat().st_size}, manifest says {manifest.size}"]
    if sha256_file(path) != manifest.sha256:
        return [f"{manifest.file} does not match its SHA-256"]
    return integrity(path, full=True)


def retained(manifests: list[Manifest], keep: int, keep_daily: int, keep_weekly: int
             ) -> set[str]:
    """Names kept by the retention rule, from manifests newest first (local and replica
    retention share it, so a replica holds what the local disk holds)."""
    kept = {m.file for m in manifests[:keep]}
    days: dict[str, str] = {}
    weeks: dict[tuple[int, int], str] = {}
    for m in manifests:  # newest first: the first seen of a day/week is its newest
        days.setdefault(m.created.strftime("%Y-%m-%d"), m.file)
        weeks.setdefault(m.created.isocalendar()[:2], m.file)
    kept.update(list(days.values())[:keep_daily])
    kept.update(list(weeks.values())[:keep_weekly])
    return kept


def prune(backup_dir: Path, keep: int, keep_daily: int, keep_weekly: int) -> list[str]:
    """Keep the newest `keep`, plus the newest of each of the last `keep_daily` days and
    `keep_weekly` ISO weeks; delete the rest. Returns the deleted file names."""
    manifests = list_backups(backup_dir)
    kept = retained(manifests, keep, keep_daily, keep_weekly)
    deleted = []
    for m in manifests:
        if m.file in kept:
            continue
        for path in (m.path(backup_dir), m.path(backup_dir).with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        deleted.append(m.file)
    for stray in backup_dir.glob(".tmp-*"):  # a crash mid-backup leaves only temp names
        with contextlib.suppress(OSError):
            if time.time() - stray.stat().st_mtime > 3600:
                stray.unlink()
    if deleted:
        log.info("backup.pruned", deleted=len(deleted), kept=len(kept))
    return deleted


def prune_journal(journal_dir: Path, backup_dir: Path, keep: int) -> list[str]:
    """Delete journal segments wholly older than the oldest of the last `keep` backups of the
    current epoch; older daily/weekly backups restore to their own time without them."""
    manifests = [m for m in list_backups(backup_dir) if m.verified][:keep]
    if not manifests:
        return []
    epoch = manifests[0].journal_epoch
    floor = min(m.journal_seq for m in manifests if m.journal_epoch == epoch)
    segments = [s for s in jr.list_segments(journal_dir) if s.epoch == epoch]
    deleted = []
    # A segment can go when the next one starts at or below floor + 1: all its records are
    # in every kept backup. The newest segment is never deleted (the worker appends to it).
    for seg, nxt in zip(segments, segments[1:], strict=False):
        if nxt.first_seq <= floor + 1:
            seg.path.unlink()
            deleted.append(seg.path.name)
    older_epochs = [s for s in jr.list_segments(journal_dir) if s.epoch < epoch]
    if older_epochs and all(m.journal_epoch == epoch for m in manifests):
        for seg in older_epochs:
            seg.path.unlink()
            deleted.append(seg.path.name)
    if deleted:
        log.info("journal.pruned", segments=deleted, floor_seq=floor)
    return deleted
