"""How replicated things are named and read back.

Objects cannot be appended to, so each shipping interval writes one immutable journal object:
`journal/<epoch>-<first seq>-<last seq>-<crc32>.jrn`, holding the records' frames exactly as in
the local segment (each frame CRC-checked again on the way back). Backups keep their local name
under `backups/`, with their manifest uploaded last: a backup without a manifest does not count.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from meshd.store import journal as jr

JOURNAL, BACKUPS = "journal", "backups"
_OBJECT_RE = re.compile(r"^(\d{4,})-(\d{12,})-(\d{12,})-([0-9a-f]{8})\.jrn$")


@dataclass(frozen=True, slots=True, order=True)
class JournalObject:
    epoch: int
    first_seq: int
    last_seq: int
    crc: int
    size: int = 0

    @property
    def key(self) -> str:
        return (f"{JOURNAL}/{self.epoch:04d}-{self.first_seq:012d}-{self.last_seq:012d}-"
                f"{self.crc:08x}.jrn")


def parse_key(key: str, size: int = 0) -> JournalObject | None:
    m = _OBJECT_RE.match(key.rsplit("/", 1)[-1])
    if not m:
        return None
    return JournalObject(int(m[1]), int(m[2]), int(m[3]), int(m[4], 16), size)


def journal_objects(listing: dict[str, int]) -> list[JournalObject]:
    found = (parse_key(k, s) for k, s in listing.items())
    return sorted(o for o in found if o is not None)


def make_object(epoch: int, records: list[tuple[jr.Record, bytes]]) -> tuple[JournalObject,
                                                                               bytes]:
    data = b"".join(raw for _rec, raw in records)
    return JournalObject(epoch, records[0][0].seq, records[-1][0].seq, zlib.crc32(data),
                         len(data)), data


class ObjectCorrupt(ValueError):
    pass


def decode_object(obj: JournalObject, data: bytes) -> list[jr.Record]:
    """Records of a downloaded object, after checking its size, CRC and every frame."""
    if obj.size and len(data) != obj.size:
        raise ObjectCorrupt(f"{obj.key}: {len(data)} bytes, listed as {obj.size}")
    if zlib.crc32(data) != obj.crc:
        raise ObjectCorrupt(f"{obj.key}: CRC mismatch")
    records, _end, torn = jr.read_frames(data)
    if torn or not records or records[0].seq != obj.first_seq or \
            records[-1].seq != obj.last_seq:
        raise ObjectCorrupt(f"{obj.key}: frames do not match the name")
    return records


class JournalTail:
    """Reads what the worker appended to the local journal since the last call, without
    re-reading whole segments: it remembers how far into each segment it has read. A torn or
    half-written tail is left for the next call (the worker may be mid-append)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[str, int] = {}

    def read_after(self, epoch: int, seq: int, limit_bytes: int = 8 << 20
                   ) -> tuple[int, list[tuple[jr.Record, bytes]]]:
        """(epoch, records) after position (epoch, seq): records of the lowest epoch that has
        any, at most about `limit_bytes` of them, each with its raw frame."""
        segments = jr.list_segments(self.directory)
        live = {s.path.name for s in segments}
        self._offsets = {k: v for k, v in self._offsets.items() if k in live}
        for i, seg in enumerate(segments):
            if seg.epoch < epoch:
                continue
            nxt = segments[i + 1] if i + 1 < len(segments) else None
            if (seg.epoch == epoch and nxt is not None and nxt.epoch == seg.epoch
                    and nxt.first_seq <= seq + 1):
                continue  # wholly shipped already
            found = self._read(seg, epoch, seq, limit_bytes)
            if found:
                return seg.epoch, found
        return epoch, []

    def _read(self, seg: jr.Segment, epoch: int, seq: int, limit: int
              ) -> list[tuple[jr.Record, bytes]]:
        name = seg.path.name
        start = self._offsets.get(name, 0)
        try:
            with seg.path.open("rb") as fh:
                if fh.seek(0, 2) < start:
                    start = 0  # the writer cut a failed append back: read the segment again
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        out, offset, size = [], 0, 0
        for record, raw in jr.iter_frames(data):
            offset += len(raw)
            if seg.epoch > epoch or record.seq > seq:
                out.append((record, raw))
                size += len(raw)
                if size >= limit:
                    break
        self._offsets[name] = start + offset
        return out

    def rewind(self) -> None:
        """Forget offsets: after a failed upload the same records are read again."""
        self._offsets.clear()
