"""PostgreSQL backups: `meshd backup` (pg_dump, verified by a restore into a scratch database)
and `meshd restore` from such a dump, through the real CLI against the session's cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshd.store import agents, pg_backups, postgres

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
    counts = {t: 0 for t in pg_backups.pg_schema.TABLES} | {"agents": 1}
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

