"""A scan resumed after an earlier one (the warm standby's read-ahead) finds what a full scan
finds, and falls back to a full scan when the frame it ended on was cut back and rewritten."""

from __future__ import annotations

from meshd.store import journal as jr
from meshd.worker import standby
from tests.unit.test_journal import segment, write


def test_a_resumed_scan_reads_only_what_was_appended_and_agrees_with_a_full_one(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2, n=3)])
    ahead = jr.scan_from(path)
    assert (ahead.last_seq, ahead.end, ahead.torn) == (2, path.stat().st_size, False)
    with path.open("ab") as fh:
        fh.write(jr.encode(write(3)) + jr.encode(write(4)) + b"\x07\x00")  # and a torn tail

    resumed = jr.scan_from(path, ahead)
    full = jr.scan_from(path)
    assert resumed == full
    assert (resumed.last_seq, resumed.torn) == (4, True)
    assert resumed.end == path.stat().st_size - 2


def test_a_cut_back_under_the_read_ahead_means_a_full_scan(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2)])
    ahead = jr.scan_from(path)
    # The writer cut back a failed batch (seq 2) and wrote another batch in its place.
    path.write_bytes(jr.encode(write(1)) + jr.encode(write(2, n=2)) + jr.encode(write(3)))

    resumed = jr.scan_from(path, ahead)
    assert resumed == jr.scan_from(path)
    assert (resumed.last_seq, resumed.end, resumed.torn) == (3, path.stat().st_size, False)


def test_a_shorter_file_or_another_segment_is_scanned_from_the_start(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2), write(3)])
    ahead = jr.scan_from(path)
    path.write_bytes(jr.encode(write(1)))
    assert jr.scan_from(path, ahead).last_seq == 1
    other = segment(tmp_path, 1, 2, [write(2)])
    assert jr.scan_from(other, ahead).last_seq == 2


def test_the_writer_resumes_after_a_read_ahead_and_appends_where_good_records_end(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2)])
    ahead = standby.read_ahead(tmp_path, None)
    with path.open("ab") as fh:
        fh.write(jr.encode(write(3)) + b"\xff" * 5)

    journal = jr.Journal(tmp_path, epoch=1)
    journal.open(ahead)
    assert journal.last_seq == 3 and journal.torn_tail_bytes == 5
    journal.append([write(4)])
    journal.close()
    assert [r.seq for r in jr.read_all(tmp_path)] == [1, 2, 3, 4]


def test_read_ahead_of_an_empty_journal_directory_is_nothing(tmp_path):
    assert standby.read_ahead(tmp_path, None) is None
    assert standby.read_ahead(tmp_path / "missing", None) is None


def test_replay_after_a_read_ahead_reads_the_same_records_from_its_frame_on(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2), write(3)])
    ahead = jr.scan_from(path)  # ends on seq 3
    aborted = jr.Record(6, jr.ABORT, "2026-01-01 00:00:00", [4, 5])
    with path.open("ab") as fh:
        fh.write(b"".join(jr.encode(r) for r in (write(4), write(5), aborted, write(7))))

    for after in (3, 4, 5, 6):
        full = [r.seq for r in jr.read_all(tmp_path, 1, after)]
        assert [r.seq for r in jr.read_all(tmp_path, 1, after, ahead)] == full
    assert [r.seq for r in jr.read_all(tmp_path, 1, 3, ahead)] == [7]
    # A read-ahead past the database's sequence is not used: seqs 2 and 3 still replay.
    assert [r.seq for r in jr.read_all(tmp_path, 1, 1, ahead)] == [2, 3, 7]


def test_the_journal_says_when_it_resumed_after_a_read_ahead(tmp_path):
    path = segment(tmp_path, 1, 1, [write(1), write(2)])
    ahead = jr.scan_from(path)
    journal = jr.Journal(tmp_path, epoch=1)
    journal.open(ahead)
    assert journal.resumed_from == ahead
    journal.close()
    path.write_bytes(jr.encode(write(1)) + jr.encode(write(2, n=3)))  # cut back, rewritten
    journal = jr.Journal(tmp_path, epoch=1)
    journal.open(ahead)
    assert journal.resumed_from is None and journal.last_seq == 2
    journal.close()
