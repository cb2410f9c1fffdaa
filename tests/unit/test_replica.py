"""Replicas on a file:// target with a real SQLite store: journal objects, backups, retention,
compaction, restore into a new directory, the drill, and URL checks."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshd.clock import db_time
from meshd.store import agents, backups
from meshd.store import journal as jr
from meshd.store.replica import crypt, pull, ship, urls
from meshd.store.replica import objects as ob
from meshd.store.replica.targets import FileTarget, TargetError, open_target
from meshd.store.sqlite import SqliteStorage


class Host:
    """One machine's files: data dir, journal, backups."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.database = self.data / "mesh.db"
        self.journal = self.data / "journal"
        self.backups = root / "backups"


@pytest.fixture
def replica_dir(tmp_path) -> Path:
    path = tmp_path / "replica"
    path.mkdir()
    return path


@pytest.fixture
def target(replica_dir) -> FileTarget:
    return FileTarget(urls.parse(f"file://{replica_dir}"))


@pytest.fixture
async def host(tmp_path):
    h = Host(tmp_path / "host")
    h.storage = SqliteStorage(h.database, h.journal, readers=1)
    await h.storage.start()
    yield h
    await h.storage.close()


def shipper(h: Host, target, keep: int = 10) -> ship.Shipper:
    return ship.Shipper(target, h.journal, h.backups, ship.Retention(keep, 0, 0))


async def register(h: Host, names: list[str]) -> None:
    for name in names:
        await h.storage.write(agents.register, name, None, "[]", db_time())


def names_in(database: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM agents")}
    finally:
        conn.close()


async def next_second() -> None:
    start = db_time()
    while db_time() == start:
        await asyncio.sleep(0.02)


def journal_keys(replica_dir: Path) -> list[ob.JournalObject]:
    return ob.journal_objects({f"journal/{p.name}": p.stat().st_size
                               for p in (replica_dir / "journal").glob("*.jrn")})


async def test_each_ship_writes_one_verified_object_named_by_epoch_seq_and_crc(
        host, target, replica_dir):
    s = shipper(host, target)
    await register(host, ["a1", "a2"])
    assert await s.ship_journal() == 2
    assert await s.ship_journal() == 0  # nothing new: no empty object
    await register(host, ["a3"])
    assert await s.ship_journal() == 1
    objs = journal_keys(replica_dir)
    assert [(o.epoch, o.first_seq, o.last_seq) for o in objs] == [(1, 1, 2), (1, 3, 3)]
    for o in objs:
        records = ob.decode_object(o, (replica_dir / o.key).read_bytes())
        assert [r.seq for r in records] == list(range(o.first_seq, o.last_seq + 1))
    # A new shipper (a supervisor restart) starts from what the replica holds.
    fresh = shipper(host, target)
    assert await fresh.load_position() == (1, 3)
    assert await fresh.ship_journal() == 0


async def test_host_loss_restore_from_replica_into_a_new_directory(host, target, tmp_path):
    s = shipper(host, target)
    await register(host, ["before-1", "before-2"])
    backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    await register(host, ["after-1", "after-2", "after-3"])
    await s.ship_journal()
    await register(host, ["never-shipped"])
    new = Host(tmp_path / "new-host")
    report = await pull.restore_from(target, new.database, new.data, new.backups)
    assert names_in(new.database) == {"before-1", "before-2", "after-1", "after-2", "after-3"}
    assert report.replayed == 3 and report.gap is None
    assert backups.integrity(new.database) == []
    # The new host continues the journal where the replica's ends.
    storage = SqliteStorage(new.database, new.journal, readers=1)
    await storage.start()
    try:
        assert storage.journal_seq == report.journal_seq == 5
    finally:
        await storage.close()
    with pytest.raises(pull.PullError, match="new data directory"):
        await pull.restore_from(target, new.database, new.data, new.backups)


async def test_a_corrupt_object_is_a_gap_restore_stops_before_it_and_the_drill_fails(
        host, target, replica_dir, tmp_path):
    s = shipper(host, target)
    await register(host, ["b"])
    backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    for name in ("c1", "c2", "c3"):
        await register(host, [name])
        await s.ship_journal()
    assert (await pull.drill(target, tmp_path / "drill")).ok
    middle = journal_keys(replica_dir)[1]
    path = replica_dir / middle.key
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    new = Host(tmp_path / "new")
    report = await pull.restore_from(target, new.database, new.data, new.backups)
    assert names_in(new.database) == {"b", "c1"}
    assert report.gap == (3, 4)
    assert report.journal_epoch == 2  # new writes never reuse the abandoned sequences
    result = await pull.drill(target, tmp_path / "drill")
    assert not result.ok and "gap" in result.problems[0]
    assert not (tmp_path / "drill").exists()


async def test_drill_checks_row_counts_of_the_manifest(host, target, replica_dir, tmp_path):
    s = shipper(host, target)
    await register(host, ["x"])
    manifest = backups.take_backup(host.database, host.backups)
    assert manifest.row_counts["agents"] == 1
    await s.ship_backups()
    json_path = replica_dir / "backups" / Path(manifest.file).with_suffix(".json")
    json_path.write_bytes(json_path.read_bytes().replace(b'"agents": 1', b'"agents": 7'))
    result = await pull.drill(target, tmp_path / "drill")
    assert not result.ok and "row counts" in result.problems[0]


async def test_retention_on_the_replica_matches_the_local_rule(host, target, replica_dir):
    s = shipper(host, target, keep=1)
    await register(host, ["r1"])
    await s.ship_journal()
    first = backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    await register(host, ["r2"])
    await s.ship_journal()
    second = backups.take_backup(host.database, host.backups)
    await register(host, ["r3"])
    await s.ship_journal()
    assert await s.ship_backups() == [second.file]
    held = {p.name for p in (replica_dir / "backups").iterdir()}
    assert held == {second.file, Path(second.file).with_suffix(".json").name}
    assert first.file not in held
    # Journal objects wholly inside the kept backup are gone; the ones after it stay.
    assert [(o.first_seq, o.last_seq) for o in journal_keys(replica_dir)] == [(3, 3)]


async def test_compaction_merges_small_objects_and_restore_reads_through_it(
        host, target, replica_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ship, "COMPACT_MIN_OBJECTS", 3)
    s = shipper(host, target)
    backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    names = [f"n{i}" for i in range(6)]
    for name in names:
        await register(host, [name])
        await s.ship_journal()
    assert len(journal_keys(replica_dir)) == 6
    assert await s.compact() == 5  # the newest object is left alone
    objs = journal_keys(replica_dir)
    assert [(o.first_seq, o.last_seq) for o in objs] == [(1, 5), (6, 6)]
    new = Host(tmp_path / "new")
    await pull.restore_from(target, new.database, new.data, new.backups)
    assert names_in(new.database) == set(names)
    inv = await pull.inventory(target)
    assert inv["journal"] == [{"epoch": 1, "first_seq": 1, "last_seq": 6, "objects": 2,
                               "bytes": objs[0].size + objs[1].size, "gaps": 0}]
    assert len(inv["backups"]) == 1


async def test_point_in_time_restore_from_replica(host, target, tmp_path):
    s = shipper(host, target)
    backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    await register(host, ["early"])
    await next_second()  # journal times have one-second precision
    cut = datetime.now(UTC)
    await next_second()
    await register(host, ["late"])
    await s.ship_journal()
    new = Host(tmp_path / "new")
    report = await pull.restore_from(target, new.database, new.data, new.backups, to_time=cut)
    assert names_in(new.database) == {"early"}
    assert report.journal_epoch == 2


async def test_a_missing_file_target_directory_fails_instead_of_filling_the_mount_point(
        tmp_path):
    t = FileTarget(urls.parse(f"file://{tmp_path}/not-mounted"))
    with pytest.raises(TargetError, match="does not exist"):
        await t.put_bytes("journal/x", b"1")
    assert not (tmp_path / "not-mounted").exists()


@pytest.mark.parametrize("text", [
    "file:///mnt/replica", "sftp://backup@host.example:2222/srv/mesh?known_hosts=/etc/kh",
    "s3://bucket/prefix/x", "s3://bucket?endpoint=http://127.0.0.1:9000&region=eu-west-1"])
def test_good_replica_urls(text):
    assert urls.parse(text).scheme == text.split(":")[0]


@pytest.mark.parametrize("text, message", [
    ("ftp://host/x", "scheme"), ("file://relative/x", "absolute"), ("file:rel", "absolute"),
    ("sftp://user:secret@host/x", "password"), ("sftp://host", "directory"),
    ("s3:///prefix", "bucket"), ("s3://bucket/x?token=abc", "unknown parameter"),
    ("s3://bucket?endpoint=ftp://x", "endpoint"), ("sftp://host:99999/x", "not a URL")])
def test_bad_replica_urls(text, message):
    with pytest.raises(urls.ReplicaURLError, match=message) as info:
        urls.parse(text)
    assert ":secret@" not in str(info.value)


def test_url_names_never_hold_the_query():
    u = urls.parse("s3://bucket/p?endpoint=http://127.0.0.1:9000")
    assert u.name == "s3://bucket/p"


def test_journal_tail_reads_only_new_complete_records(tmp_path):
    journal = jr.Journal(tmp_path, 1)
    journal.open()
    journal.append([jr.Record(1, jr.WRITE, "t", []), jr.Record(2, jr.WRITE, "t", [])])
    tail = ob.JournalTail(tmp_path)
    assert [r.seq for r, _ in tail.read_after(1, 0)[1]] == [1, 2]
    assert tail.read_after(1, 2)[1] == []
    segment = jr.list_segments(tmp_path)[0].path
    half = jr.encode(jr.Record(3, jr.WRITE, "t", ["x" * 100]))
    with segment.open("ab") as fh:
        fh.write(half[:20])  # an append in progress
    assert tail.read_after(1, 2)[1] == []
    with segment.open("ab") as fh:
        fh.write(half[20:])
    epoch, found = tail.read_after(1, 2)
    assert (epoch, [r.seq for r, _ in found]) == (1, [3])
    assert found[0][1] == half  # the frame exactly as in the segment
    # A later epoch (after a point-in-time restore) follows the earlier one.
    journal.close()
    later = jr.Journal(tmp_path, 2)
    later.open()
    later.append([jr.Record(1, jr.WRITE, "t", [])])
    assert tail.read_after(1, 3)[0] == 2


async def test_an_encrypted_replica_holds_no_plaintext_and_restores_with_its_key(
        host, replica_dir, tmp_path):
    key = os.urandom(32)
    target = open_target(urls.parse(f"file://{replica_dir}"), {}, key)
    s = shipper(host, target)
    await register(host, ["secret-agent-name"])
    backups.take_backup(host.database, host.backups)
    await s.ship_backups()
    await register(host, ["second-secret-name"])
    assert await s.ship_journal() == 2
    for path in replica_dir.rglob("*"):
        if path.is_file():
            assert b"secret" not in path.read_bytes(), path
            assert b"SQLite format" not in path.read_bytes(), path
    # Listed sizes are the plaintext's, so the CRC/size checks hold as without encryption.
    obj = journal_keys(replica_dir)[0]
    listed = ob.journal_objects(await target.list("journal"))[0]
    assert listed.size == crypt.plain_size(obj.size) < obj.size
    new = Host(tmp_path / "new")
    await pull.restore_from(target, new.database, new.data, new.backups)
    assert names_in(new.database) == {"secret-agent-name", "second-secret-name"}
    assert (await pull.drill(target, tmp_path / "drill")).ok
    wrong = open_target(urls.parse(f"file://{replica_dir}"), {}, os.urandom(32))
    other = Host(tmp_path / "other")
    with pytest.raises(ob.ObjectCorrupt, match="does not open"):
        await pull.restore_from(wrong, other.database, other.data, other.backups)


def test_encryption_detects_truncation_and_tampering():
    key = os.urandom(32)
    data = os.urandom(crypt.CHUNK * 2 + 5)
    sealed = crypt.encrypt_bytes(key, data)
    assert crypt.decrypt_bytes(key, sealed) == data
    assert crypt.plain_size(len(sealed)) == len(data)
    first = crypt.HEADER + 4 + int.from_bytes(sealed[crypt.HEADER:crypt.HEADER + 4], "big")
    for bad in (sealed[:-1], sealed[:first], sealed[:40] + bytes([sealed[40] ^ 1]) +
                sealed[41:]):
        with pytest.raises(crypt.DecryptError):
            crypt.decrypt_bytes(key, bad)

def test_key_files_are_checked_when_settings_load(tmp_path):
    from meshd import config

    path = tmp_path / "key"
    path.write_text("ab" * 16)
    with pytest.raises(config.ConfigError, match="32 bytes"):
        config.load({"replica": "file:///x", "replica_key_file": str(path)}, environ={})
    path.write_text("not hex\n")
    with pytest.raises(config.ConfigError, match="not hex"):
        config.load({"replica": "file:///x", "replica_key_file": str(path)}, environ={})
    path.write_text(os.urandom(32).hex() + "\n")
    settings = config.load({"replica": "file:///x", "replica_key_file": str(path)},
                           environ={})
    assert crypt.load_key(settings.replica_key_file) and settings.replica == ("file:///x",)
    with pytest.raises(config.ConfigError, match="replica_sync"):
        config.load({"replica_sync": "true"}, environ={})
    with pytest.raises(config.ConfigError, match="replica"):
        config.load({"replica": "file:///x,ftp://y"}, environ={})


def test_a_credentials_file_overlays_the_environment_and_must_exist(tmp_path):
    from meshd import config
    from meshd.store.replica.targets import read_credentials

    path = tmp_path / "creds"
    path.write_text("# comment\nAWS_ACCESS_KEY_ID=from-file\nMESHD_SFTP_PASSWORD='pw'\n")
    env = read_credentials(path, {"AWS_ACCESS_KEY_ID": "from-env", "OTHER": "x"})
    assert env == {"AWS_ACCESS_KEY_ID": "from-file", "OTHER": "x", "MESHD_SFTP_PASSWORD": "pw"}
    with pytest.raises(config.ConfigError, match="replica_credentials"):
        config.load({"replica": "file:///x", "replica_credentials": str(tmp_path / "none")},
                    environ={})
