"""Reading a replica back: what it holds (`meshd replicas`), a restore on a fresh machine
(`meshd restore --from URL`), and the scheduled restore drill that proves the restore works.

A restore downloads the newest backup there (checked by size and SHA-256), then the journal
objects after it (each CRC-checked), writes them as a local journal segment, and hands the
rest to the local restore: replay, integrity_check, rename into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from meshd import log as logging
from meshd.clock import db_time
from meshd.locks import fsync_path, write_atomic
from meshd.store import backups
from meshd.store import journal as jr
from meshd.store import restore as restore_mod
from meshd.store.replica import objects as ob
from meshd.store.replica.ship import fetch_manifests
from meshd.store.replica.targets import Target

log = logging.get("meshd.replica")


class PullError(RuntimeError):
    pass


@dataclass(slots=True)
class JournalRange:
    records: list[tuple[jr.Record, bytes]]
    last_seq: int  # the highest sequence the replica holds for the epoch
    gap: tuple[int, int] | None = None  # (first missing, next present) when not contiguous
    corrupt: list[str] = field(default_factory=list)


async def fetch_journal(target: Target, epoch: int, after_seq: int) -> JournalRange:
    """The epoch's records after `after_seq`, deduplicated (compaction leaves overlaps for a
    moment), cut at the first gap: records past a gap cannot be replayed."""
    objs = [o for o in ob.journal_objects(await target.list(ob.JOURNAL))
            if o.epoch == epoch and o.last_seq > after_seq]
    by_seq: dict[int, tuple[jr.Record, bytes]] = {}
    corrupt = []
    for obj in objs:
        try:
            data = await target.get_bytes(obj.key)
            frames = await asyncio.to_thread(_frames, obj, data)
        except ob.ObjectCorrupt as exc:
            corrupt.append(str(exc))
            log.error("replica.object_corrupt", replica=target.name, error=str(exc))
            continue
        for record, raw in frames:
            if record.seq > after_seq:
                by_seq.setdefault(record.seq, (record, raw))
    last = max([after_seq, *by_seq, *(o.last_seq for o in objs)])
    records, expected, gap = [], after_seq + 1, None
    for seq in sorted(by_seq):
        if seq != expected:
            gap = (expected, seq)
            break
        records.append(by_seq[seq])
        expected += 1
    if gap is None and expected <= last:
        gap = (expected, last)  # listed, but no good object holds it
    return JournalRange(records, last, gap, corrupt)


def _frames(obj: ob.JournalObject, data: bytes) -> list[tuple[jr.Record, bytes]]:
    """Checked, then split (off the event loop: a drill runs in the supervisor)."""
    ob.decode_object(obj, data)
    return list(jr.iter_frames(data))


async def inventory(target: Target) -> dict[str, Any]:
    manifests = await fetch_manifests(target)
    objs = ob.journal_objects(await target.list(ob.JOURNAL))
    epochs: dict[int, dict[str, Any]] = {}
    for o in objs:
        e = epochs.setdefault(o.epoch, {"epoch": o.epoch, "first_seq": o.first_seq,
                                        "last_seq": o.last_seq, "objects": 0, "bytes": 0,
                                        "gaps": 0, "_next": o.first_seq})
        if o.first_seq > e["_next"]:
            e["gaps"] += 1
        e["_next"] = max(e["_next"], o.last_seq + 1)
        e["last_seq"] = max(e["last_seq"], o.last_seq)
        e["objects"] += 1
        e["bytes"] += o.size
    for e in epochs.values():
        e.pop("_next")
    return {"replica": target.name,
            "backups": [{"file": m.file, "created_at": m.created_at, "size": m.size,
                         "journal_epoch": m.journal_epoch, "journal_seq": m.journal_seq}
                        for m in manifests],
            "journal": sorted(epochs.values(), key=lambda e: e["epoch"])}


async def download_backup(target: Target, manifest: backups.Manifest, backup_dir: Path
                          ) -> list[str]:
    """Fetch a backup and its manifest into `backup_dir`; the problems, empty when it checks
    (size, SHA-256, integrity_check)."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    final = manifest.path(backup_dir)
    tmp = backup_dir / f".tmp-replica-{os.getpid()}-{manifest.file}"
    try:
        await target.get_file(f"{ob.BACKUPS}/{manifest.file}", tmp)
        fsync_path(tmp)
        os.replace(tmp, final)
    except ob.ObjectCorrupt as exc:  # an encrypted copy that does not open
        return [str(exc)]
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    problems = await asyncio.to_thread(backups.verify, manifest, backup_dir)
    if problems:
        final.unlink(missing_ok=True)
        return problems
    write_atomic(final.with_suffix(".json"),
                 orjson.dumps(asdict(manifest), option=orjson.OPT_INDENT_2))
    return []


@dataclass(frozen=True, slots=True)
class PullReport:
    replica: str
    backup: str
    replayed: int
    journal_seq: int
    journal_epoch: int
    replica_last_seq: int
    gap: tuple[int, int] | None
    skipped: list[str]
    seconds: float
    to_time: str | None = None


async def restore_from(target: Target, database: Path, data_dir: Path, backup_dir: Path,
                       to_time: datetime | None = None) -> PullReport:
    """Build `database` in an empty data directory from what the replica holds."""
    started = time.monotonic()
    journal_dir = data_dir / "journal"
    if database.exists() or jr.list_segments(journal_dir):
        raise PullError(f"{data_dir} already holds a database or journal; restore from a "
                        "replica into a new data directory")
    manifests = [m for m in await fetch_manifests(target) if m.verified]
    if to_time is not None:
        manifests = [m for m in manifests if m.created <= to_time.astimezone(UTC)]
    skipped, chosen = [], None
    for manifest in manifests:
        problems = await download_backup(target, manifest, backup_dir)
        if not problems:
            chosen = manifest
            break
        skipped.append(f"{manifest.file}: {'; '.join(problems[:2])}")
        log.warning("replica.backup_skipped", replica=target.name, file=manifest.file,
                    problems=problems[:3])
    if chosen is None:
        raise PullError(f"no verified backup on {target.name}"
                        + (f" before {db_time(to_time)}" if to_time else "")
                        + (f" ({'; '.join(skipped)})" if skipped else ""))
    got = await fetch_journal(target, chosen.journal_epoch, chosen.journal_seq)
    journal_dir.mkdir(parents=True, exist_ok=True)
    if got.records:
        path = journal_dir / jr.segment_name(chosen.journal_epoch, got.records[0][0].seq)
        path.write_bytes(b"".join(raw for _r, raw in got.records))
        fsync_path(path)
        fsync_path(journal_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    report = await asyncio.to_thread(
        restore_mod.restore, database, journal_dir, backup_dir, data_dir,
        backup_name=chosen.file, to_time=to_time)
    epoch = report.journal_epoch
    if got.gap or to_time:
        # The replica holds records past where this restore stops: new writes start a new
        # epoch so they never share sequence numbers with the abandoned ones there.
        objs = ob.journal_objects(await target.list(ob.JOURNAL))
        epoch = max([epoch] + [o.epoch + 1 for o in objs])
        await asyncio.to_thread(_set_epoch, database, epoch)
    if got.gap:
        log.error("replica.journal_gap", replica=target.name, missing_from=got.gap[0],
                  next_present=got.gap[1])
    result = PullReport(target.name, chosen.file, report.replayed, report.journal_seq, epoch,
                        got.last_seq, got.gap, skipped, round(time.monotonic() - started, 3),
                        report.to_time)
    log.info("replica.restored", **asdict(result))
    return result


def _set_epoch(database: Path, epoch: int) -> None:
    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.execute("UPDATE meshd_meta SET value = ? WHERE key = 'journal_epoch'",
                         (str(epoch),))
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class DrillResult:
    replica: str
    at: str
    ok: bool
    problems: list[str]
    backup: str | None = None
    replayed: int = 0
    journal_seq: int = 0
    replica_last_seq: int = 0
    seconds: float = 0.0


async def drill(target: Target, scratch: Path) -> DrillResult:
    """Restore the replica into `scratch` as on a fresh machine, then check: integrity_check
    of the result, the backup's per-table row counts against its manifest, and that replay
    reached the replica's last sequence with no gap. The scratch copy is deleted after."""
    import shutil

    started = time.monotonic()
    shutil.rmtree(scratch, ignore_errors=True)
    problems: list[str] = []
    report = None
    try:
        report = await restore_from(target, scratch / "mesh.db", scratch, scratch / "backups")
        if report.gap:  # also when the replica lists records past the last readable one
            problems.append(f"journal gap: seq {report.gap[0]} missing (next present "
                            f"{report.gap[1]})")
        manifest = next(m for m in backups.list_backups(scratch / "backups")
                        if m.file == report.backup)
        if manifest.row_counts is not None:
            counts = await asyncio.to_thread(backups.row_counts, manifest.path(scratch /
                                                                              "backups"))
            wrong = {t: (n, counts.get(t)) for t, n in manifest.row_counts.items()
                     if counts.get(t) != n}
            if wrong:
                problems.append(f"row counts differ from the manifest: {wrong}")
    except (PullError, restore_mod.RestoreError, OSError, RuntimeError, ValueError,
            sqlite3.Error) as exc:
        problems.append(str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = DrillResult(target.name, db_time(), not problems, problems,
                         report.backup if report else None,
                         report.replayed if report else 0,
                         report.journal_seq if report else 0,
                         report.replica_last_seq if report else 0,
                         round(time.monotonic() - started, 3))
    (log.info if result.ok else log.error)("replica.drill", **asdict(result))
    return result
