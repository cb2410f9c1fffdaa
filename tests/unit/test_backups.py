"""Verified backups, their manifests and retention, journal pruning, and restore (newest
verified backup + journal replay, point in time, quarantine) on real SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from meshd.clock import db_time
from meshd.store import agents, backups, restore
from meshd.store import journal as jr
from meshd.store import sqlite as sqlite_store
from meshd.store.sqlite import SqliteStorage


class Files:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.database = self.data / "mesh.db"
        self.journal = self.data / "journal"
        self.backups = root / "backups"

    def storage(self) -> SqliteStorage:
        return SqliteStorage(self.database, self.journal, readers=1)

    def restore(self, **kw) -> restore.RestoreReport:
        return restore.restore(self.database, self.journal, self.backups, self.data, **kw)

    def backup(self, reason: str = "test") -> backups.Manifest:
        return backups.take_backup(self.database, self.backups, reason)


@pytest.fixture
def files(tmp_path) -> Files:
    return Files(tmp_path)


@pytest.fixture
async def store(files):
    storage = files.storage()
    await storage.start()
    yield storage
    await storage.close()


async def register(storage: SqliteStorage, names: list[str]) -> None:
    for name in names:
        await storage.write(agents.register, name, None, "[]", db_time())


def names_in(database: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM agents")}
    finally:
        conn.close()


def meta(database: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meshd_meta"))
    finally:
        conn.close()


def flip_bytes(path: Path, offset: int | None = None, count: int = 64) -> None:
    offset = path.stat().st_size // 2 if offset is None else offset
    with path.open("r+b") as fh:
        fh.seek(offset)
        chunk = fh.read(count)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in chunk))


def overwrite_middle(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 4)
        fh.write(os.urandom(size // 2))


# -- take_backup, list, verify ---------------------------------------------------------------

async def test_take_backup_writes_a_verified_copy_and_its_manifest(files, store):
    await register(store, ["a", "b", "c"])

    manifest = files.backup("operator")

    path = manifest.path(files.backups)
    assert manifest.verified and manifest.integrity == "ok"
    assert manifest.size == path.stat().st_size
    assert manifest.sha256 == backups.sha256_file(path)
    assert (manifest.journal_epoch, manifest.journal_seq) == (1, store.journal_seq) == (1, 3)
    assert manifest.file.endswith("-e1-s3.db") and manifest.reason == "operator"
    assert names_in(path) == {"a", "b", "c"}
    on_disk = orjson.loads(path.with_suffix(".json").read_bytes())
    assert on_disk == asdict(manifest)
    assert backups.verify(manifest, files.backups) == []
    assert backups.list_backups(files.backups) == [manifest]


async def test_the_manifest_is_written_only_after_the_copy_has_its_final_name(
        files, store, monkeypatch):
    seen = []
    write_atomic = backups.write_atomic

    def spy(path: Path, data: bytes, *args, **kw) -> None:
        manifest = orjson.loads(data)
        seen.append(((files.backups / manifest["file"]).exists(),
                     sorted(p.name for p in files.backups.glob(".tmp-*.db"))))
        write_atomic(path, data, *args, **kw)

    monkeypatch.setattr(backups, "write_atomic", spy)
    files.backup()
    assert seen == [(True, [])]


async def test_take_backup_leaves_no_temporary_files(files, store):
    await register(store, ["a"])
    files.backup()
    assert [p.name for p in files.backups.iterdir() if p.name.startswith(".")] == []


async def test_a_failed_backup_raises_and_leaves_older_backups_alone(files, store):
    first = files.backup()
    before = {p.name: p.read_bytes() for p in files.backups.iterdir()}
    not_a_db = files.data / "garbage.db"
    not_a_db.write_bytes(os.urandom(8192))

    with pytest.raises(backups.BackupError):
        backups.take_backup(not_a_db, files.backups)

    assert {p.name: p.read_bytes() for p in files.backups.iterdir()} == before
    assert backups.list_backups(files.backups) == [first]


async def test_list_backups_is_newest_first_and_skips_unreadable_manifests(files, store):
    older = files.backup()
    await register(store, ["a"])
    newer = files.backup()
    (files.backups / "broken.json").write_text("{not json")
    (files.backups / "other.json").write_text('{"unexpected": 1}')

    assert backups.list_backups(files.backups) == [newer, older]


async def test_verify_reports_a_missing_file_a_size_change_and_a_hash_change(files, store):
    await register(store, [f"agent-{i}" for i in range(50)])
    manifest = files.backup()
    path = manifest.path(files.backups)
    original = path.read_bytes()

    flip_bytes(path)
    (problem,) = backups.verify(manifest, files.backups)
    assert "SHA-256" in problem

    path.write_bytes(original + b"\0" * 10)
    (problem,) = backups.verify(manifest, files.backups)
    assert f"size {len(original) + 10}" in problem and str(manifest.size) in problem

    path.unlink()
    assert backups.verify(manifest, files.backups) == [f"{manifest.file} is missing"]

    path.write_bytes(original)
    assert backups.verify(manifest, files.backups) == []


def test_integrity_reports_a_damaged_file_and_passes_a_sound_one(tmp_path):
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 200,)] * 2000)
    conn.commit()
    conn.close()
    assert backups.integrity(path) == [] and backups.integrity(path, full=False) == []

    overwrite_middle(path)
    assert backups.integrity(path, full=False)
    assert backups.integrity(path)


# -- retention ---------------------------------------------------------------------------------

def fabricate(backup_dir: Path, label: str, created: datetime, seq: int = 0, epoch: int = 1,
              integrity: str = "ok") -> backups.Manifest:
    backup_dir.mkdir(parents=True, exist_ok=True)
    manifest = backups.Manifest(
        file=f"{label}.db", created_at=created.isoformat(), size=1, sha256="0" * 64,
        journal_seq=seq, journal_epoch=epoch, schema_version=4, integrity=integrity,
        seconds=0.1)
    (backup_dir / manifest.file).write_bytes(b"x")
    (backup_dir / f"{label}.json").write_bytes(orjson.dumps(asdict(manifest)))
    return manifest


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


RETENTION = {  # label: created (2026-03-09 is a Monday: ISO week 11)
    "a": "2026-03-10 12:00",  # Tue, week 11
    "b": "2026-03-10 08:00",  # Tue, week 11
    "c": "2026-03-09 20:00",  # Mon, week 11
    "d": "2026-03-09 10:00",  # Mon, week 11
    "e": "2026-03-08 10:00",  # Sun, week 10
    "f": "2026-03-05 10:00",  # Thu, week 10
    "g": "2026-03-01 10:00",  # Sun, week 9
    "h": "2026-02-20 10:00",  # Fri, week 8
}


@pytest.mark.parametrize(("keep", "daily", "weekly", "kept"), [
    (2, 3, 2, "abce"),  # last 2: a b; days 03-10 03-09 03-08: a c e; weeks 11 10: a e
    (2, 3, 3, "abceg"),  # and week 9's newest
    (1, 0, 0, "a"),
    (0, 5, 0, "acefg"),  # the newest of each of the last 5 days
    (0, 0, 4, "aegh"),  # the newest of each of the last 4 weeks
    (10, 0, 0, "abcdefgh"),
])
def test_prune_keeps_the_last_n_plus_daily_and_weekly_backups(tmp_path, keep, daily, weekly,
                                                              kept):
    for label, created in RETENTION.items():
        fabricate(tmp_path, label, at(created))

    deleted = backups.prune(tmp_path, keep, daily, weekly)

    expected_deleted = sorted(f"{label}.db" for label in RETENTION if label not in kept)
    assert sorted(deleted) == expected_deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{label}{ext}" for label in kept for ext in (".db", ".json"))


def test_prune_removes_only_stale_temporary_files(tmp_path):
    fabricate(tmp_path, "a", at("2026-03-10 12:00"))
    stale = tmp_path / ".tmp-1-20260310T000000000000.db"
    fresh = tmp_path / ".tmp-2-20260310T000000000000.db"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    backups.prune(tmp_path, 1, 0, 0)

    assert not stale.exists() and fresh.exists()


def seg(directory: Path, epoch: int, first_seq: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    name = jr.segment_name(epoch, first_seq)
    (directory / name).write_bytes(b"")
    return name


def test_prune_journal_deletes_segments_every_kept_backup_contains(tmp_path):
    journal, backup_dir = tmp_path / "journal", tmp_path / "backups"
    s1, s101, s201 = seg(journal, 1, 1), seg(journal, 1, 101), seg(journal, 1, 201)
    fabricate(backup_dir, "old", at("2026-03-01 10:00"), seq=150)
    fabricate(backup_dir, "new", at("2026-03-02 10:00"), seq=250)

    # keep=2: the floor is seq 150; segment 1 (seqs 1-100) goes, 101 holds 151+.
    assert backups.prune_journal(journal, backup_dir, keep=2) == [s1]
    assert sorted(p.name for p in journal.iterdir()) == [s101, s201]
    # keep=1: the floor is 250; 101 goes, but never the newest segment.
    assert backups.prune_journal(journal, backup_dir, keep=1) == [s101]
    assert sorted(p.name for p in journal.iterdir()) == [s201]


def test_prune_journal_never_deletes_the_newest_segment(tmp_path):
    journal, backup_dir = tmp_path / "journal", tmp_path / "backups"
    only = seg(journal, 1, 1)
    fabricate(backup_dir, "a", at("2026-03-02 10:00"), seq=10_000)
    assert backups.prune_journal(journal, backup_dir, keep=10) == []
    assert [p.name for p in journal.iterdir()] == [only]


def test_prune_journal_ignores_unverified_backups_and_keeps_the_journal_without_any(tmp_path):
    journal, backup_dir = tmp_path / "journal", tmp_path / "backups"
    names = [seg(journal, 1, 1), seg(journal, 1, 101)]
    assert backups.prune_journal(journal, backup_dir, keep=3) == []
    fabricate(backup_dir, "bad", at("2026-03-02 10:00"), seq=500, integrity="failed")
    assert backups.prune_journal(journal, backup_dir, keep=3) == []
    assert sorted(p.name for p in journal.iterdir()) == names


def test_prune_journal_drops_older_epochs_once_every_kept_backup_is_in_the_new_one(tmp_path):
    journal, backup_dir = tmp_path / "journal", tmp_path / "backups"
    old = [seg(journal, 1, 1), seg(journal, 1, 101)]
    new = seg(journal, 2, 120)
    fabricate(backup_dir, "e1", at("2026-03-01 10:00"), seq=100, epoch=1)
    fabricate(backup_dir, "e2", at("2026-03-02 10:00"), seq=119, epoch=2)

    # A kept backup is still in epoch 1: its segments stay.
    assert backups.prune_journal(journal, backup_dir, keep=2) == []
    # Only epoch-2 backups kept: epoch 1's segments go, the current one stays.
    assert sorted(backups.prune_journal(journal, backup_dir, keep=1)) == old
    assert [p.name for p in journal.iterdir()] == [new]


# -- restore -----------------------------------------------------------------------------------

async def test_restore_replays_the_journal_after_the_backup_and_quarantines_the_files(files):
    storage = files.storage()
    await storage.start()
    await register(storage, ["a1", "a2"])
    manifest = files.backup()
    await register(storage, ["b1", "b2", "b3"])
    await storage.close()
    overwrite_middle(files.database)
    wal, shm = Path(f"{files.database}-wal"), Path(f"{files.database}-shm")
    wal.write_bytes(b"stale wal")
    shm.write_bytes(b"stale shm")
    broken = files.database.read_bytes()

    report = files.restore()

    assert not wal.exists() and not shm.exists()  # a stale WAL must not meet the new file
    assert report.backup == manifest.file and report.skipped == []
    assert (report.replayed, report.journal_seq, report.journal_epoch) == (3, 5, 1)
    assert report.to_time is None
    assert names_in(files.database) == {"a1", "a2", "b1", "b2", "b3"}
    assert meta(files.database)["journal_seq"] == "5"
    assert backups.integrity(files.database) == []
    quarantine = files.data / "quarantine"
    moved = {Path(p).name.split("-", 1)[1]: Path(p) for p in report.quarantined}
    assert set(moved) == {"mesh.db", "mesh.db-wal", "mesh.db-shm"}
    assert all(p.parent == quarantine for p in moved.values())
    assert moved["mesh.db"].read_bytes() == broken
    assert moved["mesh.db-wal"].read_bytes() == b"stale wal"
    assert not list(files.data.glob(".restore-*"))

    # The store opens on the restored file with nothing left to replay, and writes on.
    storage = files.storage()
    await storage.start()
    try:
        assert storage.replayed == 0 and storage.journal_seq == 5
        await register(storage, ["c1"])
    finally:
        await storage.close()
    assert "c1" in names_in(files.database)


async def test_restore_skips_a_corrupt_newest_backup_for_the_previous_verified_one(files):
    storage = files.storage()
    await storage.start()
    await register(storage, [f"a{i}" for i in range(40)])
    older = files.backup()
    await register(storage, [f"b{i}" for i in range(40)])
    newest = files.backup()
    await register(storage, ["c"])
    await storage.close()
    flip_bytes(newest.path(files.backups))
    overwrite_middle(files.database)

    report = files.restore()

    assert report.backup == older.file
    (skipped,) = report.skipped
    assert skipped.startswith(newest.file) and "SHA-256" in skipped
    assert report.replayed == 41 and report.journal_seq == 81
    assert names_in(files.database) == {*(f"a{i}" for i in range(40)),
                                        *(f"b{i}" for i in range(40)), "c"}


async def test_restore_ignores_a_torn_journal_tail(files):
    storage = files.storage()
    await storage.start()
    files.backup()
    await register(storage, ["a", "b"])
    await storage.close()
    (segment,) = jr.list_segments(files.journal)
    with segment.path.open("ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x01\x02")

    report = files.restore()

    assert report.replayed == 2
    assert names_in(files.database) == {"a", "b"}


async def test_restore_to_a_time_stops_there_and_starts_a_new_epoch(files, monkeypatch):
    storage = files.storage()
    await storage.start()
    files.backup()
    # Journal times are meshd's clock at commit: set it, so no test has to wait for seconds.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    clock = {"now": start}
    monkeypatch.setattr(sqlite_store, "db_time", lambda moment=None: db_time(clock["now"]))
    await register(storage, ["a1", "a2"])
    clock["now"] = start + timedelta(seconds=1)
    await register(storage, ["a3"])
    clock["now"] = start + timedelta(seconds=2)
    await register(storage, ["b1", "b2"])
    await storage.close()

    report = files.restore(to_time=start + timedelta(seconds=1, milliseconds=500))

    assert report.to_time == db_time(start + timedelta(seconds=1))
    assert (report.replayed, report.journal_seq, report.journal_epoch) == (3, 3, 2)
    assert names_in(files.database) == {"a1", "a2", "a3"}
    assert (meta(files.database)["journal_epoch"], meta(files.database)["journal_seq"]) == ("2", "3")

    # New writes go to epoch 2 and the abandoned timeline is never replayed again.
    storage = files.storage()
    await storage.start()
    try:
        assert storage.journal_epoch == 2 and storage.replayed == 0
        await register(storage, ["c1"])
    finally:
        await storage.close()
    epochs = [(s.epoch, s.first_seq) for s in jr.list_segments(files.journal)]
    assert epochs == [(1, 1), (2, 4)]
    storage = files.storage()
    await storage.start()
    await storage.close()
    assert names_in(files.database) == {"a1", "a2", "a3", "c1"}


async def test_restore_to_a_time_before_the_newest_backup_uses_the_backup_before_it(files):
    storage = files.storage()
    await storage.start()
    older = files.backup()
    await register(storage, ["a"])
    await asyncio.sleep(1.1)  # journal times have one-second resolution
    moment = datetime.now(UTC)
    await asyncio.sleep(1.1)
    await register(storage, ["b"])
    files.backup()
    await storage.close()

    report = files.restore(to_time=moment)
    assert report.backup == older.file
    assert "a" in names_in(files.database) and "b" not in names_in(files.database)
    # A named backup newer than the time is still refused.
    newest = restore.choose_backup(files.backups)[0]
    with pytest.raises(restore.RestoreError, match="newer than"):
        files.restore(backup_name=newest.file, to_time=moment)


async def test_restore_refuses_without_a_verified_or_named_backup(files):
    storage = files.storage()
    await storage.start()
    await storage.close()

    with pytest.raises(restore.RestoreError, match="no verified backup"):
        files.restore()
    manifest = files.backup()
    with pytest.raises(restore.RestoreError, match="no backup named"):
        files.restore(backup_name="nope.db")
    flip_bytes(manifest.path(files.backups))
    with pytest.raises(restore.RestoreError, match="no verified backup"):
        files.restore()
    assert files.database.exists() and not (files.data / "quarantine").exists()
