"""Sending to one replica: new journal records as immutable objects, verified backups, then
retention and compaction there. Every upload is read back and checked (size and SHA-256)
before it counts; the position only moves past what a replica verifiably holds.

Nothing here touches the database: it reads journal segments and backup files the worker and
the backup job have already fsync'd, so the API and the writer never wait for a replica.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from meshd import log as logging
from meshd.store import backups
from meshd.store import journal as jr
from meshd.store.replica import crypt
from meshd.store.replica import objects as ob
from meshd.store.replica.targets import Target, TargetError

log = logging.get("meshd.replica")

COMPACT_MIN_OBJECTS = 32  # a run of this many small objects is merged into one
COMPACT_BYTES = 16 << 20  # largest object compaction writes


@dataclass(frozen=True, slots=True)
class Retention:
    keep: int
    keep_daily: int
    keep_weekly: int


async def put_verified(target: Target, key: str, size: int, sha256: str, *,
                       data: bytes | None = None, path: Path | None = None) -> None:
    """Upload, then read back: a replica that stored something else fails here, not on the
    day of the restore."""
    if data is not None:
        await target.put_bytes(key, data)
    else:
        await target.put_file(key, path)
    got = await target.digest(key)
    if got != (size, sha256):
        raise TargetError(f"{target.name}: {key} reads back as {got[0]} bytes / {got[1][:12]}, "
                          f"expected {size} / {sha256[:12]}")


async def fetch_manifests(target: Target, cache: dict[str, backups.Manifest] | None = None
                          ) -> list[backups.Manifest]:
    """Manifests of the replica's backups, newest first (a .db without one does not count)."""
    cache = {} if cache is None else cache
    listing = await target.list(ob.BACKUPS)
    manifests = []
    for key in listing:
        if not key.endswith(".json"):
            continue
        if key not in cache:
            body = await target.get_bytes(key)
            if body.startswith(crypt.MAGIC):
                raise ob.ObjectCorrupt(f"{target.name} is encrypted: give its key "
                                       "(replica_key_file, or --key-file)")
            try:
                cache[key] = backups.Manifest(**orjson.loads(body))
            except (orjson.JSONDecodeError, TypeError) as exc:
                log.warning("replica.manifest_unreadable", replica=target.name, key=key,
                            error=str(exc))
                continue
        if f"{ob.BACKUPS}/{cache[key].file}" in listing:
            manifests.append(cache[key])
    return sorted(manifests, key=lambda m: m.created_at, reverse=True)


class Shipper:
    """The state of shipping to one replica; used by one task at a time."""

    def __init__(self, target: Target, journal_dir: Path, backup_dir: Path,
                 retention: Retention) -> None:
        self.target = target
        self.backup_dir = backup_dir
        self.retention = retention
        self.tail = ob.JournalTail(journal_dir)
        self.position: tuple[int, int] | None = None  # (epoch, seq) the replica holds
        self.objects_shipped = 0
        self.backups_held: int | None = None  # verified backups on the replica, once known
        self._manifests: dict[str, backups.Manifest] = {}
        self._local_backups: frozenset[str] | None = None

    def backups_changed(self) -> bool:
        """Whether a backup was taken or pruned locally since the last ship_backups: a glob
        of manifest names, cheap enough for every pass."""
        return self._local_names() != self._local_backups

    def _local_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.backup_dir.glob("*.json"))

    async def load_position(self) -> tuple[int, int]:
        objs = ob.journal_objects(await self.target.list(ob.JOURNAL))
        self.position = max(((o.epoch, o.last_seq) for o in objs), default=(0, 0))
        return self.position

    async def ship_journal(self, limit_bytes: int = 8 << 20) -> int:
        """Ship the records appended since the last call as one object (more only when they
        exceed `limit_bytes`); the number of records shipped."""
        if self.position is None:
            await self.load_position()
        shipped = 0
        try:
            while True:
                # Parsing and hashing off the event loop: a large record (a file upload) must
                # not stall the supervisor's probes.
                prepared = await asyncio.to_thread(self._prepare, limit_bytes)
                if prepared is None:
                    return shipped
                obj, data, digest, count = prepared
                await put_verified(self.target, obj.key, len(data), digest, data=data)
                self.position = (obj.epoch, obj.last_seq)
                self.objects_shipped += 1
                shipped += count
                log.debug("replica.shipped", replica=self.target.name, key=obj.key)
                if len(data) < limit_bytes:
                    return shipped  # what arrives meanwhile waits for the next interval
        except BaseException:
            self.tail.rewind()  # read the unshipped records again next time
            raise

    def _prepare(self, limit_bytes: int):
        epoch, records = self.tail.read_after(*self.position, limit_bytes)
        if not records:
            return None
        obj, data = ob.make_object(epoch, records)
        return obj, data, hashlib.sha256(data).hexdigest(), len(records)

    async def ship_backups(self) -> list[str]:
        """Upload verified local backups the replica lacks (the .db, checked, then its
        manifest), then apply the local retention rule there."""
        local_names = self._local_names()
        remote = await self.target.list(ob.BACKUPS)
        shipped = []
        for m in reversed([m for m in backups.list_backups(self.backup_dir) if m.verified]):
            json_key = f"{ob.BACKUPS}/{Path(m.file).with_suffix('.json')}"
            if json_key in remote:
                continue
            path = m.path(self.backup_dir)
            if not path.exists():
                continue
            await put_verified(self.target, f"{ob.BACKUPS}/{m.file}", m.size, m.sha256,
                               path=path)
            body = orjson.dumps(asdict(m), option=orjson.OPT_INDENT_2)
            await put_verified(self.target, json_key, len(body),
                               hashlib.sha256(body).hexdigest(), data=body)
            shipped.append(m.file)
            log.info("replica.backup_shipped", replica=self.target.name, file=m.file,
                     bytes=m.size)
        await self.apply_retention()
        self._local_backups = local_names
        return shipped

    async def apply_retention(self) -> list[str]:
        r = self.retention
        manifests = await fetch_manifests(self.target, self._manifests)
        kept = backups.retained(manifests, r.keep, r.keep_daily, r.keep_weekly)
        self.backups_held = len(kept)
        deleted = []
        for m in manifests:
            if m.file in kept:
                continue
            # The manifest goes first: a backup without one never counts.
            json_key = f"{ob.BACKUPS}/{Path(m.file).with_suffix('.json')}"
            await self.target.delete(json_key)
            self._manifests.pop(json_key, None)
            await self.target.delete(f"{ob.BACKUPS}/{m.file}")
            deleted.append(m.file)
        newest = [m for m in manifests if m.file in kept][:r.keep]
        if newest:
            epoch = newest[0].journal_epoch
            floor = min(m.journal_seq for m in newest if m.journal_epoch == epoch)
            older_ok = all(m.journal_epoch == epoch for m in newest)
            for obj in ob.journal_objects(await self.target.list(ob.JOURNAL)):
                if (obj.epoch == epoch and obj.last_seq <= floor) or (
                        obj.epoch < epoch and older_ok):
                    await self.target.delete(obj.key)
                    deleted.append(obj.key)
        if deleted:
            log.info("replica.pruned", replica=self.target.name, deleted=len(deleted))
        return deleted

    async def compact(self) -> int:
        """Merge runs of small journal objects into one (objects cannot be appended to, so
        one-second shipping leaves many): upload the merged object, verify it, then delete
        the parts. Restore tolerates the overlap while both exist. Objects merged."""
        objs = ob.journal_objects(await self.target.list(ob.JOURNAL))
        merged = 0
        for run in _small_runs(objs):
            parts = []
            try:
                for o in run:
                    part = await self.target.get_bytes(o.key)
                    await asyncio.to_thread(ob.decode_object, o, part)
                    parts.append(part)
            except ob.ObjectCorrupt as exc:
                log.error("replica.object_corrupt", replica=self.target.name, error=str(exc))
                continue
            data = b"".join(parts)
            whole, digest = await asyncio.to_thread(_merge, run[0].epoch, data)
            await put_verified(self.target, whole.key, len(data), digest, data=data)
            for o in run:
                if o.key != whole.key:
                    await self.target.delete(o.key)
            merged += len(run)
            log.info("replica.compacted", replica=self.target.name, objects=len(run),
                     first_seq=whole.first_seq, last_seq=whole.last_seq)
        return merged


def _merge(epoch: int, data: bytes) -> tuple[ob.JournalObject, str]:
    whole, _ = ob.make_object(epoch, list(jr.iter_frames(data)))
    return whole, hashlib.sha256(data).hexdigest()


def _small_runs(objs: list[ob.JournalObject]) -> list[list[ob.JournalObject]]:
    """Contiguous runs (same epoch, each starting right after the last) of objects smaller
    than a quarter of COMPACT_BYTES, cut at COMPACT_BYTES, of at least COMPACT_MIN_OBJECTS.
    The newest object is left alone: the shipper may be writing the next one."""
    runs: list[list[ob.JournalObject]] = []
    current: list[ob.JournalObject] = []
    for o in objs[:-1]:
        fits = (current and o.epoch == current[-1].epoch
                and o.first_seq == current[-1].last_seq + 1
                and sum(c.size for c in current) + o.size <= COMPACT_BYTES)
        if o.size >= COMPACT_BYTES // 4:
            runs.append(current)
            current = []
            continue
        if not fits:
            runs.append(current)
            current = []
        current.append(o)
    runs.append(current)
    return [r for r in runs if len(r) >= COMPACT_MIN_OBJECTS]
