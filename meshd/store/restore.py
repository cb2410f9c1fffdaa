"""Restore: newest verified backup + replay of the journal after it, built under a temporary
name and renamed into place; the broken files are kept in `data/quarantine/`, never deleted.

The caller holds `data/writer.lock` and no worker runs: restore is the only writer then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from meshd import log as logging
from meshd.clock import db_time
from meshd.locks import fsync_path
from meshd.store import backups
from meshd.store import journal as jr
from meshd.store.sqlite import replay_journal

log = logging.get("meshd.restore")


class RestoreError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RestoreReport:
    backup: str
    skipped: list[str]
    replayed: int
    journal_seq: int
    journal_epoch: int
    quarantined: list[str]
    seconds: float
    to_time: str | None = None


def choose_backup(backup_dir: Path, name: str | None = None,
                  before: datetime | None = None) -> tuple[backups.Manifest, list[str]]:
    """The named backup, or the newest one (taken before `before`, for a point in time)
    that still verifies; (manifest, skipped reasons)."""
    manifests = backups.list_backups(backup_dir)
    if before is not None and not name:
        manifests = [m for m in manifests if m.created <= before.astimezone(UTC)]
        if not manifests:
            raise RestoreError(f"no backup in {backup_dir} was taken before {db_time(before)}")
    if name:
        manifests = [m for m in manifests if m.file == name or m.file == Path(name).name]
        if not manifests:
            raise RestoreError(f"no backup named {name} in {backup_dir}")
    skipped = []
    for manifest in manifests:
        problems = backups.verify(manifest, backup_dir)
        if not problems:
            return manifest, skipped
        skipped.append(f"{manifest.file}: {'; '.join(problems[:2])}")
        log.warning("restore.backup_skipped", file=manifest.file, problems=problems[:3])
    raise RestoreError(
        f"no verified backup in {backup_dir}" + (f" ({'; '.join(skipped)})" if skipped else ""))


def quarantine(database: Path, data_dir: Path) -> list[str]:
    """Move the database and its -wal/-shm aside together (a stale WAL would be replayed into
    the restored file); kept for forensics."""
    target_dir = data_dir / "quarantine"
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():
            dest = target_dir / f"{stamp}-{path.name}"
            os.replace(path, dest)
            moved.append(str(dest))
    return moved


def restore(
    database: Path, journal_dir: Path, backup_dir: Path, data_dir: Path,
    *, backup_name: str | None = None, to_time: datetime | None = None,
) -> RestoreReport:
    started = time.monotonic()
    manifest, skipped = choose_backup(backup_dir, backup_name, to_time)
    until = db_time(to_time) if to_time else None
    tmp = database.with_name(f".restore-{database.name}")
    replayed, last_seq, epoch = _build(tmp, manifest, journal_dir, backup_dir, to_time)
    moved = quarantine(database, data_dir)
    os.replace(tmp, database)
    _remove_sidecars(tmp)
    fsync_path(database.parent)
    report = RestoreReport(backup=manifest.file, skipped=skipped, replayed=replayed,
                           journal_seq=last_seq, journal_epoch=epoch, quarantined=moved,
                           seconds=round(time.monotonic() - started, 3), to_time=until)
    log.info("restore.completed", backup=report.backup, replayed=replayed,
             journal_seq=last_seq, epoch=epoch, skipped=len(skipped),
             seconds=report.seconds, to_time=until)
    return report


def restore_copy(
    output: Path, journal_dir: Path, backup_dir: Path,
    *, backup_name: str | None = None, to_time: datetime | None = None,
) -> RestoreReport:
    """The same restore built at `output` (Litestream's `restore -o`): reads the backups and
    the journal, touches nothing live, takes no lock. `output` must not exist yet."""
    started = time.monotonic()
    if output.exists():
        raise RestoreError(f"{output} exists; name a new file")
    manifest, skipped = choose_backup(backup_dir, backup_name, to_time)
    tmp = output.with_name(f".restore-{output.name}")
    replayed, last_seq, epoch = _build(tmp, manifest, journal_dir, backup_dir, to_time)
    os.replace(tmp, output)
    _remove_sidecars(tmp)
    fsync_path(output.parent)
    report = RestoreReport(backup=manifest.file, skipped=skipped, replayed=replayed,
                           journal_seq=last_seq, journal_epoch=epoch, quarantined=[],
                           seconds=round(time.monotonic() - started, 3),
                           to_time=db_time(to_time) if to_time else None)
    log.info("restore.copy_completed", output=str(output), backup=report.backup,
             replayed=replayed, journal_seq=last_seq, epoch=epoch)
    return report


def next_epoch(journal_dir: Path, manifest: backups.Manifest) -> int:
    """The journal epoch a point-in-time restore from `manifest` starts: records after the
    chosen moment stay on disk but belong to the abandoned timeline."""
    return max([manifest.journal_epoch] + [s.epoch for s in jr.list_segments(journal_dir)]) + 1


def _build(tmp: Path, manifest: backups.Manifest, journal_dir: Path, backup_dir: Path,
           to_time: datetime | None) -> tuple[int, int, int]:
    """Backup copied to `tmp`, journal replayed into it, checked and fsync'd:
    (replayed, last seq, epoch)."""
    until = db_time(to_time) if to_time else None
    if until and manifest.created.astimezone(UTC) > to_time.astimezone(UTC):
        raise RestoreError(f"backup {manifest.file} is newer than {until}; name an older one")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp}{suffix}").unlink()
    shutil.copyfile(manifest.path(backup_dir), tmp)
    conn = sqlite3.connect(tmp, isolation_level=None)
    # The temporary file is fsync'd once before its rename, and thrown away if anything fails:
    # syncing every replayed commit would only slow the restore (it made it 5x slower under
    # other disk load).
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA journal_mode = MEMORY")
    try:
        replayed, last_seq = replay_journal(conn, journal_dir, manifest.journal_epoch,
                                            manifest.journal_seq, until)
        epoch = manifest.journal_epoch
        if until:
            epoch = next_epoch(journal_dir, manifest)
            conn.execute("UPDATE meshd_meta SET value = ? WHERE key = 'journal_epoch'",
                         (str(epoch),))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    problems = backups.integrity(tmp, full=True)
    if problems:
        raise RestoreError(f"the restored file failed integrity_check: {problems[:3]}")
    fsync_path(tmp)
    return replayed, last_seq, epoch


def _remove_sidecars(tmp: Path) -> None:
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp}{suffix}").unlink()
