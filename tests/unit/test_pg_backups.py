"""PostgreSQL backups: `meshd backup` (pg_dump, verified by a restore into a scratch database)
and `meshd restore` from such a dump, through the real CLI against the session's cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshd.store import agents, pg_backups, postgres
from meshd.store import events as ev

NOW = "2026-01-01 00:00:00"


@pytest.fixture
def pg_url(pg_cluster):
    name = "backups_under_test"
    pg_cluster.drop_database(name)
    url = pg_cluster.clone_template(name)
    yield url
    pg_cluster.drop_database(name)


def meshd(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshd", *args, "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


def names(url: str) -> list[str]:
    return [r["name"] for r in postgres.read_sql(url, "SELECT name FROM agents ORDER BY rowid")]


async def test_backup_then_restore_through_the_cli(pg_url, tmp_path):
    storage = postgres.PostgresStorage(pg_url)
    await storage.start()
    try:
        for i in range(5):
            await storage.write(agents.register, f"a{i}", None, None, NOW)
    finally:
        await storage.close()
    backup_dir = tmp_path / "backups"
    args = ("--database", pg_url, "--backup-dir", str(backup_dir), "--data-dir",
            str(tmp_path / "data"))

    done = meshd("backup", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["verified"] and manifest["row_counts"]["agents"] == 5
    assert (backup_dir / manifest["file"]).exists()
    listed = meshd("backups", *args, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["file"] == manifest["file"] and row["verified"] and row["journal_seq"] is None
    assert not [p for p in backup_dir.iterdir() if p.name.startswith(".tmp")]
    # No scratch database is left behind by the verification.
    left = postgres.read_sql(pg_url, "SELECT datname FROM pg_database"
                                     " WHERE datname LIKE 'meshd_verify%'")
    assert left == []

    storage = postgres.PostgresStorage(pg_url)
    await storage.start()
    try:
        await storage.write(lambda tx: tx.execute("DELETE FROM agents WHERE name = 'a1'"))
        await storage.write(agents.register, "after-backup", None, None, NOW)
    finally:
        await storage.close()
    assert "a1" not in names(pg_url)

    done = meshd("restore", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert names(pg_url) == [f"a{i}" for i in range(5)]  # same rows, same order

    storage = postgres.PostgresStorage(pg_url)  # and the restored database takes writes
    await storage.start()
    try:
        await storage.write(agents.register, "after-restore", None, None, NOW)
    finally:
        await storage.close()
    assert names(pg_url)[-1] == "after-restore"


def test_verification_refuses_a_dump_whose_rows_differ(pg_url, tmp_path):
    dump = tmp_path / "x.pgdump"
    subprocess.run([pg_backups.tool("pg_dump"), "--format=custom", "--file", str(dump),
                    "--dbname", pg_url], check=True, capture_output=True)
    counts = {t: 0 for t in pg_backups.TABLES} | {"agents": 1}
    with pytest.raises(pg_backups.BackupError, match="row counts differ"):
        pg_backups.verify_dump(pg_url, dump, counts)


def test_prune_keeps_the_newest(tmp_path):
    for stamp in ("20260101", "20260102", "20260103"):
        (tmp_path / f"{stamp}{pg_backups.SUFFIX}").write_bytes(b"x")
        (tmp_path / f"{stamp}{pg_backups.SUFFIX}.json").write_bytes(b"{}")
    assert pg_backups.prune(tmp_path, 2) == [f"20260101{pg_backups.SUFFIX}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"20260102{pg_backups.SUFFIX}", f"20260102{pg_backups.SUFFIX}.json",
        f"20260103{pg_backups.SUFFIX}", f"20260103{pg_backups.SUFFIX}.json"]



async def emit(url: str, *types: str) -> None:
    storage = postgres.PostgresStorage(url)
    await storage.start()
    try:
        for kind in types:
            await storage.write(ev.emit_only, ev.Event(kind, {"kind": kind}))
    finally:
        await storage.close()


def events(url: str) -> list[tuple]:
    return [(r["id"], r["type"]) for r in postgres.read_sql(
        url, "SELECT id, type FROM events ORDER BY id")]


async def test_backup_and_restore_keep_the_event_log_and_ids_never_go_back(pg_url, tmp_path):
    """The event log is dumped and restored with the reported versions; after the restore the
    next event id comes after every id the database had issued (a WebSocket client that saw
    the newest resumes with `?since=` and must not be handed an id it already holds)."""
    storage = postgres.PostgresStorage(pg_url)
    await storage.start()
    try:
        agent_id, _ = await storage.write(agents.register, "a", None, None, NOW)
        await storage.write(agents.touch, agent_id, NOW, "3.0.0")
    finally:
        await storage.close()
    await emit(pg_url, "e1", "e2", "e3")
    backup_dir = tmp_path / "backups"
    args = ("--database", pg_url, "--backup-dir", str(backup_dir), "--data-dir",
            str(tmp_path / "data"))
    done = meshd("backup", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["row_counts"]["events"] == 3
    await emit(pg_url, "e4", "e5")  # issued after the backup, lost by the restore

    done = meshd("restore", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert events(pg_url) == [(1, "e1"), (2, "e2"), (3, "e3")]
    [agent] = postgres.read_sql(pg_url, "SELECT heartbeat_at, agent_version FROM agents")
    assert agent == {"heartbeat_at": NOW, "agent_version": "3.0.0"}
    await emit(pg_url, "after")
    assert events(pg_url)[-1] == (6, "after")


async def test_restoring_a_dump_without_the_event_log_keeps_its_place(pg_url, tmp_path):
    """A dump taken before the event log was dumped has no `events` table: the restore keeps
    the database's (emptied: its events describe changes the restore undid) and its ids go on."""
    await emit(pg_url, "e1", "e2")
    dump = tmp_path / f"old{pg_backups.SUFFIX}"
    tables = [a for t in pg_backups.TABLES if t != "events" for a in ("--table", t)]
    subprocess.run([pg_backups.tool("pg_dump"), "--format=custom", "--no-owner", *tables,
                    "--file", str(dump), "--dbname", pg_url], check=True, capture_output=True)
    assert "events" not in pg_backups.dumped_tables(dump)
    await emit(pg_url, "e3")

    counts = pg_backups.restore(pg_url, dump)
    assert counts["events"] == 0
    await emit(pg_url, "after")
    assert events(pg_url) == [(4, "after")]
