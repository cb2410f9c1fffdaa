"""The shared spool: atomic maildir-style posting, reading in order, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshd.client import spool as spool_module
from meshd.client.records import Outgoing
from meshd.client.spool import Spool, decode, encode


def message(n: int, to: str = "b", prev: str | None = None) -> Outgoing:
    return Outgoing(client_id=f"c{n}", from_agent="a", to_agent=to, content=f"m{n}",
                    message_type="direct", created_at="2026-01-01T00:00:00.000Z", prev=prev)


def test_a_record_round_trips():
    m = message(1, prev="c0")
    assert decode(encode(m)) == m


@pytest.mark.parametrize("data", [b"{", b"[]", b'{"clientId": 1}',
                                  b'{"clientId":"c","from":"a","to":"b","content":2,'
                                  b'"messageType":"direct","createdAt":"t"}'])
def test_a_malformed_record_is_refused(data):
    with pytest.raises(ValueError):
        decode(data)


def test_nothing_is_posted_to_an_agent_without_a_mailbox(tmp_path):
    spool = Spool(tmp_path)
    assert spool.post(message(1)) is None
    assert not (tmp_path / "b").exists()


def test_posts_are_read_in_order_and_leave_no_tmp_file(tmp_path):
    spool = Spool(tmp_path)
    spool.open_mailbox("b")
    paths = [spool.post(message(n)) for n in range(5)]
    assert all(p.parent == tmp_path / "b" / "new" for p in paths)
    assert os.listdir(tmp_path / "b" / "tmp") == []
    found = spool.pending("b")
    assert [f.message.client_id for f in found] == [f"c{n}" for n in range(5)]
    assert [f.path for f in spool.pending("b", skip={paths[0]})] == paths[1:]
    spool.discard(paths[0])
    assert len(spool.pending("b")) == 4


def test_a_message_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """The rename is the publication: a writer that dies before it leaves nothing in new/."""
    spool = Spool(tmp_path)
    spool.open_mailbox("b")

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(spool_module.os, "rename", crash)
    with pytest.raises(OSError):
        spool.post(message(1))
    assert spool.pending("b") == []
    monkeypatch.undo()
    # What was written is complete in tmp/ (fsynced before any rename).
    (leftover,) = (tmp_path / "b" / "tmp").iterdir()
    assert decode(leftover.read_bytes()) == message(1)


def test_opening_a_mailbox_removes_stale_tmp_files(tmp_path):
    spool = Spool(tmp_path)
    spool.open_mailbox("b")
    stale = tmp_path / "b" / "tmp" / "old"
    fresh = tmp_path / "b" / "tmp" / "young"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = os.stat(stale).st_mtime - spool_module.STALE_TMP - 10
    os.utime(stale, (old, old))
    spool.open_mailbox("b")
    assert sorted(p.name for p in (tmp_path / "b" / "tmp").iterdir()) == ["young"]


def test_an_unreadable_file_is_reported_without_a_message(tmp_path):
    spool = Spool(tmp_path)
    spool.open_mailbox("b")
    bad = tmp_path / "b" / "new" / "0001.bad.json"
    bad.write_bytes(b"not json")
    spool.post(message(1))
    found = spool.pending("b")
    assert [(f.path == bad, f.message is None) for f in found] == [(True, True), (False, False)]


@pytest.mark.parametrize("agent_id", ["", "..", "a/b"])
def test_an_agent_id_cannot_escape_the_spool(tmp_path, agent_id):
    with pytest.raises(ValueError):
        Spool(Path(tmp_path)).mailbox(agent_id)
