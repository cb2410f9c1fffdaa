"""Write-ahead journal of mutations: every committed write, fsync'd before SQLite commits it.

Records are length-prefixed, CRC-checked frames in segment files under `data/journal/`. A record
holds the statements (SQL + parameters) of one write transaction; replaying them in sequence
order onto a backup rebuilds the database exactly, because ids and times are parameters.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from meshd import log as logging
from meshd.locks import fsync_path

log = logging.get("meshd.journal")

_HEADER = struct.Struct("<II")  # payload length, crc32 of payload
SEGMENT_BYTES = 64 << 20
WRITE, ABORT = "w", "a"


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    kind: str  # WRITE: statements to replay; ABORT: `statements` holds [first, last] seq
    time: str
    statements: list[Any]


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    epoch: int
    first_seq: int


def segment_name(epoch: int, first_seq: int) -> str:
    return f"{epoch:04d}-{first_seq:012d}.seg"


def newest_segment(directory: Path) -> Path | None:
    """The segment appends go to now (of the newest epoch), or None."""
    segments = list_segments(directory)
    return segments[-1].path if segments else None


def list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.glob("*.seg"):
        try:
            epoch_text, seq_text = path.stem.split("-")
            segments.append(Segment(path, int(epoch_text), int(seq_text)))
        except ValueError:
            continue
    return sorted(segments, key=lambda s: (s.epoch, s.first_seq))


def encode(record: Record) -> bytes:
    return b"".join(frame(record))


def frame(record: Record) -> tuple[bytes, bytes]:
    """Header and payload, kept apart so a large record (a file upload) is not copied again."""
    payload = orjson.dumps([record.seq, record.kind, record.time, record.statements])
    return _HEADER.pack(len(payload), zlib.crc32(payload)), payload


@dataclass(frozen=True, slots=True)
class Scan:
    """Where the good frames of a segment end, as one scan found them; handed to the next scan
    of the same segment, it is where that scan resumes (appends never rewrite a good frame)."""

    path: Path
    last_seq: int | None
    last_start: int  # offset of the last good frame (meaningful when last_seq is set)
    last_crc: int
    end: int  # offset where the good frames end
    torn: bool  # bytes that are not a good frame follow
    resumed: bool = field(default=False, compare=False)  # it resumed after an earlier scan


def scan_segment(path: Path) -> tuple[int | None, int, bool]:
    """Check a segment's frames by CRC without decoding them: (last good sequence or None,
    the offset where good records end, whether a bad tail follows). Opening the journal needs
    only this, not every record parsed."""
    scan = scan_from(path)
    return scan.last_seq, scan.end, scan.torn


def scan_from(path: Path, since: Scan | None = None) -> Scan:
    """As scan_segment, resuming after an earlier scan of the same file when its last good
    frame is still there unchanged (a warm standby scans ahead, so its promotion reads only
    what was appended since). A cut-back since then rewrites that frame: a full scan."""
    with path.open("rb") as fh:
        if since is not None and since.path == path and since.last_seq is not None:
            fh.seek(since.last_start)
            data = fh.read()
            if _frame_is(data, 0, since.last_crc, since.end - since.last_start):
                scan = _scan(path, data, since.last_start, since.end - since.last_start)
                return replace(scan, resumed=True)
            fh.seek(0)
        return _scan(path, fh.read(), 0, 0)


def _frame_is(data: bytes, offset: int, crc: int, size: int) -> bool:
    if offset + _HEADER.size > len(data) or size > len(data) - offset:
        return False
    length, stored = _HEADER.unpack_from(data, offset)
    return (stored == crc and _HEADER.size + length == size
            and zlib.crc32(memoryview(data)[offset + _HEADER.size:offset + size]) == crc)


def _scan(path: Path, data: bytes, base: int, offset: int) -> Scan:
    """Frames of `data` (the file from byte `base`) from `offset` on, the frame just before
    `offset` (if any) starting at 0 and already known good."""
    last_start = 0 if offset else None
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            break
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data) or zlib.crc32(memoryview(data)[offset + _HEADER.size:end]) != crc:
            break
        last_start, offset = offset, end
    torn = offset < len(data)
    if last_start is None:
        return Scan(path, None, base, 0, base + offset, torn)
    length, crc = _HEADER.unpack_from(data, last_start)
    try:
        seq = orjson.loads(data[last_start + _HEADER.size:last_start + _HEADER.size + length])[0]
    except (orjson.JSONDecodeError, ValueError, IndexError):
        return Scan(path, None, base, 0, base + last_start, True)
    return Scan(path, seq, base + last_start, crc, base + offset, torn)


def read_segment(path: Path, offset: int = 0) -> tuple[list[Record], int, bool]:
    """Good records of one segment (from a frame boundary at `offset`), the byte offset where
    they end (counted from `offset`), and whether a bad tail (torn write or checksum mismatch)
    follows them."""
    with path.open("rb") as fh:
        fh.seek(offset)
        return read_frames(fh.read())


def read_frames(data: bytes) -> tuple[list[Record], int, bool]:
    """As read_segment, for frames already in memory (a replica's journal object)."""
    records: list[Record] = []
    offset = 0
    for record, raw in iter_frames(data):
        records.append(record)
        offset += len(raw)
    return records, offset, offset < len(data)


def iter_frames(data: bytes) -> Iterator[tuple[Record, bytes]]:
    """Each good record with its raw frame, stopping at the first torn or bad one."""
    offset = 0
    view = memoryview(data)
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if end > len(data) or zlib.crc32(view[start:end]) != crc:
            return
        try:
            seq, kind, time, statements = orjson.loads(view[start:end])
        except (orjson.JSONDecodeError, ValueError):
            return
        yield Record(seq, kind, time, statements), bytes(view[offset:end])
        offset = end


def read_all(directory: Path, epoch: int | None = None, after_seq: int = 0,
             since: Scan | None = None) -> Iterator[Record]:
    """Records past `after_seq` (of one epoch when given), aborted sequences left out.

    `since`, a scan that found a good frame of sequence <= `after_seq`, lets its segment be
    read from that frame on: sequences grow along a segment and an abort record follows the
    batch it aborts, so nothing before it can matter.

    Segments wholly at or before `after_seq` are not read at all (their names carry their first
    sequence), so replay costs the writes since the backup, not the whole kept journal. A bad
    record inside an older segment (not a torn tail: appends only go to the newest) is
    skipped with the rest of that segment, and later segments are still read, so the
    acknowledged writes after it are kept."""
    segments = [s for s in list_segments(directory) if epoch is None or s.epoch == epoch]
    records: list[Record] = []
    for i, seg in enumerate(segments):
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        if nxt is not None and nxt.epoch == seg.epoch and nxt.first_seq <= after_seq + 1:
            continue
        offset = (since.last_start if since is not None and since.path == seg.path
                  and since.last_seq is not None and since.last_seq <= after_seq else 0)
        good, _end, torn = read_segment(seg.path, offset)
        records.extend(r for r in good if r.seq > after_seq or r.kind == ABORT)
        if torn and nxt is not None:
            log.error("journal.bad_record", segment=seg.path.name, after=len(good))
    aborted: set[int] = set()
    for rec in records:
        if rec.kind == ABORT:
            first, last = rec.statements
            aborted.update(range(first, last + 1))
    for rec in records:
        if rec.kind == WRITE and rec.seq not in aborted:
            yield rec


class Journal:
    """Appends records; used only from the writer thread, so it needs no lock."""

    def __init__(self, directory: Path, epoch: int) -> None:
        self.directory = directory
        self.epoch = epoch
        self.last_seq = 0
        self.torn_tail_bytes = 0
        self.resumed_from: Scan | None = None  # the earlier scan `open` resumed after
        self._fh = None
        self._size = 0
        self.last_fsync_seconds = 0.0  # of the latest append, for the metrics

    def open(self, since: Scan | None = None) -> None:
        """Find the last good record of this epoch and cut any torn tail, so appends continue
        from a clean end (resuming after `since`, an earlier scan, when it still holds)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = [s for s in list_segments(self.directory) if s.epoch == self.epoch]
        if not segments:
            return
        # Appends only ever go to the newest segment: only it can end in a torn record, and
        # it alone tells the last sequence (its name carries its first).
        newest = segments[-1]
        scan = scan_from(newest.path, since)
        self.resumed_from = since if scan.resumed else None
        last, end, torn = scan.last_seq, scan.end, scan.torn
        self.last_seq = last if last is not None else newest.first_seq - 1
        if torn:
            self.torn_tail_bytes += newest.path.stat().st_size - end
            with newest.path.open("r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        self._open_segment(newest.path)

    def _open_segment(self, path: Path) -> None:
        if self._fh:
            self._fh.close()
        created = not path.exists()
        self._fh = path.open("ab")
        self._size = self._fh.tell()
        if created:
            fsync_path(self.directory)

    def append(self, records: list[Record]) -> None:
        """Write and fsync; on any error cut the file back so no partial record remains."""
        if self._fh is None or self._size >= SEGMENT_BYTES:
            self._open_segment(self.directory / segment_name(self.epoch, records[0].seq))
        start = self._size
        written = 0
        try:
            for record in records:
                for part in frame(record):
                    self._fh.write(part)
                    written += len(part)
            self._fh.flush()
            started = time.perf_counter()
            os.fsync(self._fh.fileno())
            self.last_fsync_seconds = time.perf_counter() - started
        except OSError:
            self._cut_back(start)
            raise
        self._size += written
        self.last_seq = max(self.last_seq, records[-1].seq)

    def _cut_back(self, offset: int) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        path = Path(self._fh.name)
        try:
            with path.open("r+b") as fh:
                fh.truncate(offset)
        except OSError:
            pass  # a torn tail is skipped on the next read anyway
        self._fh = None

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
