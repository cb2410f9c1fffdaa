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
from dataclasses import dataclass
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


def scan_segment(path: Path) -> tuple[int | None, int, bool]:
    """Check a segment's frames by CRC without decoding them: (last good sequence or None,
    the offset where good records end, whether a bad tail follows). Opening the journal needs
    only this, not every record parsed."""
    data = path.read_bytes()
    offset, last_start = 0, None
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
        return None, offset, torn
    length, _crc = _HEADER.unpack_from(data, last_start)
    try:
        seq = orjson.loads(data[last_start + _HEADER.size:last_start + _HEADER.size + length])[0]
    except (orjson.JSONDecodeError, ValueError, IndexError):
        return None, last_start, True
    return seq, offset, torn


def read_segment(path: Path) -> tuple[list[Record], int, bool]:
    """Good records of one segment, the byte offset where they end, and whether a bad tail
    (torn write or checksum mismatch) follows them."""
    return read_frames(path.read_bytes())


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


def read_all(directory: Path, epoch: int | None = None, after_seq: int = 0
             ) -> Iterator[Record]:
    """Records past `after_seq` (of one epoch when given), aborted sequences left out.

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
        good, _end, torn = read_segment(seg.path)
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
        self._fh = None
        self._size = 0
        self.last_fsync_seconds = 0.0  # of the latest append, for the metrics

    def open(self) -> None:
        """Find the last good record of this epoch and cut any torn tail, so appends continue
        from a clean end."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = [s for s in list_segments(self.directory) if s.epoch == self.epoch]
        if not segments:
            return
        # Appends only ever go to the newest segment: only it can end in a torn record, and
        # it alone tells the last sequence (its name carries its first).
        newest = segments[-1]
        last, end, torn = scan_segment(newest.path)
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
