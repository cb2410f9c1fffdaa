"""The write-ahead journal: frames round-trip, a torn or bad-checksum tail ends reading, abort
records cancel their sequences, segments are listed in order, and the writer cuts a torn tail
before appending."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from meshd.store import journal as jr


def write(seq: int, time: str = "2026-01-01 00:00:00", n: int = 1) -> jr.Record:
    statements = [["INSERT INTO t (id, v) VALUES (?, ?)", [f"id-{seq}-{i}", i]]
                  for i in range(n)]
    return jr.Record(seq, jr.WRITE, time, statements)


def segment(directory: Path, epoch: int, first_seq: int, records: list[jr.Record]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / jr.segment_name(epoch, first_seq)
    path.write_bytes(b"".join(jr.encode(r) for r in records))
    return path


def test_encode_then_read_round_trips_every_field(tmp_path):
    records = [write(1), write(2, n=3),
               jr.Record(3, jr.WRITE, "2026-01-01 00:00:01",
                         [["UPDATE t SET v = ?, blob = ? WHERE id = ?", [None, "é\n\u2603", "x"]]]),
               jr.Record(4, jr.ABORT, "2026-01-01 00:00:02", [2, 3])]
    path = segment(tmp_path, 1, 1, records)

    read, end, torn = jr.read_segment(path)

    assert read == records
    assert end == path.stat().st_size
    assert torn is False


def test_a_frame_is_length_and_crc_then_json(tmp_path):
    data = jr.encode(write(7))
    length, crc = struct.unpack_from("<II", data)
    payload = data[8:]
    assert length == len(payload) and crc == zlib.crc32(payload)


def test_an_empty_segment_has_no_records_and_no_tail(tmp_path):
    path = segment(tmp_path, 1, 1, [])
    assert jr.read_segment(path) == ([], 0, False)


@pytest.mark.parametrize("tail", [
    b"\x01\x02\x03",  # not even a whole header
    struct.pack("<II", 500, 0) + b"x" * 20,  # a header promising more than was written
    struct.pack("<II", 0, 1),  # an empty payload with the wrong checksum
], ids=["short-header", "short-payload", "empty-bad-crc"])
def test_a_torn_tail_ends_reading_after_the_good_records(tmp_path, tail):
    records = [write(1), write(2)]
    path = segment(tmp_path, 1, 1, records)
    good_end = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(tail)

    read, end, torn = jr.read_segment(path)

    assert read == records
    assert end == good_end
    assert torn is True


def test_a_bad_checksum_stops_reading_even_with_good_frames_after_it(tmp_path):
    records = [write(1), write(2), write(3)]
    path = segment(tmp_path, 1, 1, records)
    first_end = len(jr.encode(records[0]))
    data = bytearray(path.read_bytes())
    data[first_end + 8 + 3] ^= 0xFF  # a byte of the second record's payload
    path.write_bytes(bytes(data))

    read, end, torn = jr.read_segment(path)

    assert read == records[:1]
    assert end == first_end
    assert torn is True


def test_a_payload_that_is_not_a_record_counts_as_a_bad_tail(tmp_path):
    payload = b"[1, 2]"  # valid JSON with a good checksum, but not four fields
    path = segment(tmp_path, 1, 1, [write(1)])
    with path.open("ab") as fh:
        fh.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)

    read, _end, torn = jr.read_segment(path)

    assert [r.seq for r in read] == [1]
    assert torn is True


def test_abort_records_remove_their_sequences_from_read_all(tmp_path):
    segment(tmp_path, 1, 1, [write(1), write(2), write(3),
                             jr.Record(4, jr.ABORT, "2026-01-01 00:00:00", [2, 3]),
                             write(5)])
    assert [r.seq for r in jr.read_all(tmp_path)] == [1, 5]


def test_read_all_reads_segments_in_order_and_filters_by_epoch(tmp_path):
    segment(tmp_path, 1, 11, [write(11), write(12)])
    segment(tmp_path, 1, 1, [write(1), write(2)])
    segment(tmp_path, 2, 13, [write(13)])

    assert [r.seq for r in jr.read_all(tmp_path)] == [1, 2, 11, 12, 13]
    assert [r.seq for r in jr.read_all(tmp_path, epoch=1)] == [1, 2, 11, 12]
    assert [r.seq for r in jr.read_all(tmp_path, epoch=2)] == [13]
    assert list(jr.read_all(tmp_path, epoch=3)) == []


def test_read_all_skips_a_torn_tail_and_keeps_later_segments(tmp_path):
    first = segment(tmp_path, 1, 1, [write(1), write(2)])
    with first.open("ab") as fh:
        fh.write(b"\x00\x01")
    segment(tmp_path, 1, 3, [write(3)])
    assert [r.seq for r in jr.read_all(tmp_path)] == [1, 2, 3]


def test_list_segments_orders_by_epoch_then_first_seq_and_ignores_strangers(tmp_path):
    for name in ("0002-000000000001.seg", "0001-000000000100.seg", "0001-000000000009.seg",
                 "notes.seg", "1-2-3.seg", "0001-abc.seg", "0001-000000000001.tmp"):
        (tmp_path / name).write_bytes(b"")

    listed = [(s.epoch, s.first_seq, s.path.name) for s in jr.list_segments(tmp_path)]

    assert listed == [(1, 9, "0001-000000000009.seg"), (1, 100, "0001-000000000100.seg"),
                      (2, 1, "0002-000000000001.seg")]
    assert jr.segment_name(3, 42) == "0003-000000000042.seg"


def test_the_writer_cuts_a_torn_tail_and_appends_after_the_last_good_record(tmp_path):
    journal = jr.Journal(tmp_path, epoch=1)
    journal.open()
    journal.append([write(1), write(2)])
    journal.close()
    (path,) = tmp_path.glob("*.seg")
    good_size = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b"\xff" * 11)

    journal = jr.Journal(tmp_path, epoch=1)
    journal.open()
    assert journal.torn_tail_bytes == 11
    assert journal.last_seq == 2
    assert path.stat().st_size == good_size
    journal.append([write(3)])
    journal.close()

    read, _end, torn = jr.read_segment(path)
    assert [r.seq for r in read] == [1, 2, 3]
    assert torn is False


def test_the_writer_only_opens_its_own_epoch(tmp_path):
    segment(tmp_path, 1, 1, [write(1), write(2), write(3)])
    journal = jr.Journal(tmp_path, epoch=2)
    journal.open()
    assert journal.last_seq == 0
    journal.append([write(4)])
    journal.close()
    assert sorted(p.name for p in tmp_path.glob("*.seg")) == [
        "0001-000000000001.seg", "0002-000000000004.seg"]


def test_a_full_segment_rolls_over_to_one_named_after_its_first_seq(tmp_path, monkeypatch):
    monkeypatch.setattr(jr, "SEGMENT_BYTES", 200)
    journal = jr.Journal(tmp_path, epoch=1)
    journal.open()
    for seq in range(1, 7):
        journal.append([write(seq, n=2)])
    journal.close()

    segments = jr.list_segments(tmp_path)
    assert len(segments) > 1
    assert segments[0].first_seq == 1
    for seg in segments:
        records, _end, torn = jr.read_segment(seg.path)
        assert records[0].seq == seg.first_seq and not torn
    assert [r.seq for r in jr.read_all(tmp_path)] == [1, 2, 3, 4, 5, 6]
