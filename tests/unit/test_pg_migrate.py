"""`meshd migrate --to postgresql://...`: a SQLite mesh written through the real API is copied
into PostgreSQL, verified (counts and checksums), resumes after an interruption, and the API
then answers the same on PostgreSQL as it did on SQLite."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys

import pytest

from meshd import config
from meshd.api.app import make_app
from meshd.store import agents, pg_backups, pg_migrate, pg_schema, postgres, schema
from meshd.store import events as ev
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, AUTH, call, register

NOW = "2026-01-01 00:00:00"
LISTINGS = ("/api/agents", "/api/groups", "/api/files", "/api/updates",
            "/api/catastrophe", "/api/health/dashboard")


@pytest.fixture
def target(pg_cluster):
    name = "migrate_target"
    pg_cluster.drop_database(name)
    pg_cluster.create_database(name)  # empty: migrate creates the schema
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


def settings_for(tmp_path, database) -> config.Settings:
    return config.load({"data_dir": str(tmp_path / "data"), "api_key": API_KEY,
                        "database": str(database), "access_log": "false",
                        "log_format": "json"}, environ={})


async def snapshot(aiohttp_client, settings, agent_ids) -> dict:
    """What the API answers for every listing and inbox, on one backend."""
    storage = open_storage(settings)
    await storage.start()
    try:
        client = await aiohttp_client(make_app(settings, storage), headers=AUTH)
        seen = {}
        for path in (*LISTINGS, *(f"/api/messages/{a}" for a in agent_ids)):
            status, body = await call(client, "GET", path)
            assert status == 200, (path, body)
            seen[path] = body
        await client.close()
        return seen
    finally:
        await storage.close()


async def fill(aiohttp_client, settings) -> list[str]:
    storage = open_storage(settings)
    await storage.start()
    try:
        client = await aiohttp_client(make_app(settings, storage), headers=AUTH)
        ids = [await register(client, f"agent-{i}") for i in range(6)]
        _, group = await call(client, "POST", "/api/groups", {"name": "G", "createdBy": ids[0]})
        for agent in ids[:3]:
            await call(client, "POST", f"/api/groups/{group['groupId']}/members",
                       {"agentId": agent})
        for version in range(3):
            await call(client, "POST", f"/api/groups/{group['groupId']}/memory",
                       {"agentId": ids[0], "key": "k", "value": {"v": version}})
        for i in range(40):  # many share a created_at second: order then comes from rowid
            status, _ = await call(client, "POST", "/api/messages", {
                "from": ids[i % 6], "to": ids[(i + 1) % 6], "content": f"m{i} 100%"})
            assert status == 200
        data = base64.b64encode(b"\x00\x01file" * 100).decode()
        status, _ = await call(client, "POST", "/api/files/upload",
                               {"agentId": ids[1], "filename": "f.bin", "fileData": data})
        assert status == 200
        await call(client, "POST", "/api/updates", {
            "version": "1.1.0", "updateType": "feature", "title": "t", "createdBy": "ops"})
        await call(client, "POST", "/api/catastrophe", {
            "eventType": "server_down", "severity": "minor", "title": "x"})
        await client.close()
    finally:
        await storage.close()
    return ids


async def test_migrate_copies_verifies_resumes_and_serves_the_same(
        aiohttp_client, tmp_path, target, monkeypatch):
    sqlite_settings = settings_for(tmp_path, tmp_path / "data" / "mesh.db")
    ids = await fill(aiohttp_client, sqlite_settings)
    before = await snapshot(aiohttp_client, sqlite_settings, ids)
    # A membership naming an agent that no longer exists (a Node database had no foreign
    # keys): PostgreSQL's would refuse it, so it is moved to migration_conflicts.
    conn = sqlite3.connect(sqlite_settings.database)
    conn.execute("INSERT INTO agent_group_members (group_id, agent_id, role, joined_at)"
                 " SELECT id, 'gone-agent', 'member', '2020-01-01 00:00:00' FROM agent_groups")
    conn.commit()
    conn.close()

    # Interrupted after the first chunk of messages: the rows copied so far stay.
    monkeypatch.setattr(pg_migrate, "CHUNK", 10)
    real_copy = pg_migrate._copy

    def failing_copy(src, dst, table):
        if table == "messages":
            raise ConnectionError("network cut")
        return real_copy(src, dst, table)

    monkeypatch.setattr(pg_migrate, "_copy", failing_copy)
    with pytest.raises(ConnectionError):
        pg_migrate.migrate(sqlite_settings.database, target)
    monkeypatch.setattr(pg_migrate, "_copy", real_copy)

    done = subprocess.run(
        [sys.executable, "-m", "meshd", "migrate", "--json", "--to", target,
         "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] and report["resumed"]
    tables = report["tables"]
    assert tables["messages"]["target_rows"] == 40
    assert tables["agent_group_members"]["moved"] == 1
    assert tables["agent_group_members"]["target_rows"] == 3
    assert all(t["verified"] for t in tables.values())

    # The moved membership aside (it counted in member_count on SQLite), the same answers.
    after = await snapshot(aiohttp_client, settings_for(tmp_path, target), ids)
    assert after == before

    again = subprocess.run(  # a second run finds nothing to copy and verifies again
        [sys.executable, "-m", "meshd", "migrate", "--json", "--to", target,
         "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert sum(t["copied"] for t in json.loads(again.stdout)["tables"].values()) == 0


def test_migrate_refuses_a_target_holding_another_mesh(tmp_path, pg_cluster):
    name = "migrate_busy"
    pg_cluster.drop_database(name)
    url = pg_cluster.clone_template(name)
    try:
        with sqlite3.connect(tmp_path / "x.db") as conn:
            conn.execute(f"PRAGMA user_version = {pg_migrate.schema.SCHEMA_VERSION}")
        import psycopg

        with psycopg.connect(url, autocommit=True) as dst:
            dst.execute("INSERT INTO agents (id, name) VALUES ('a', 'a')")
        with pytest.raises(pg_migrate.MigrateError, match="not empty"):
            pg_migrate.migrate(tmp_path / "x.db", url)
    finally:
        pg_cluster.drop_database(name)


async def test_migrate_carries_the_event_log_and_the_later_columns(tmp_path, target):
    """The event log (SQLite v10) keeps its ids, and PostgreSQL's next id comes after every id
    SQLite issued, a deleted newest one included: a WebSocket client resuming with `?since=`
    never sees ids go backwards. The columns of v9 and v11 (heartbeat evidence, reported
    versions, roll-back target) come along."""
    settings = settings_for(tmp_path, tmp_path / "data" / "mesh.db")
    storage = open_storage(settings)
    await storage.start()
    try:
        agent_id, _ = await storage.write(agents.register, "a", None, None, NOW)
        await storage.write(agents.touch, agent_id, NOW, "2.1.0")
        for i in range(5):
            await storage.write(ev.emit_only, ev.Event("probe", {"n": i},
                                                       [agent_id] if i % 2 else None))
    finally:
        await storage.close()
    conn = sqlite3.connect(settings.database)
    with conn:
        conn.execute("INSERT INTO system_updates (id, version, update_type, title, created_by,"
                     " created_at, rollback_to) VALUES ('u', '2.0.0', 'rollback', 't', 'ops', ?,"
                     " '1.9.0')", (NOW,))
        conn.execute("DELETE FROM events WHERE id = (SELECT MAX(id) FROM events)")
    events = conn.execute("SELECT id, type, data, audience, created_at FROM events"
                          " ORDER BY id").fetchall()
    issued = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0]
    conn.close()
    assert len(events) == 4 and issued == 5

    report = pg_migrate.migrate(settings.database, target)
    assert report.verified and report.tables["events"].target_rows == 4

    copied = postgres.read_sql(target, "SELECT id, type, data, audience, created_at FROM events"
                                       " ORDER BY id")
    assert [tuple(r.values()) for r in copied] == events
    [agent] = postgres.read_sql(target, "SELECT heartbeat_at, agent_version FROM agents")
    assert agent == {"heartbeat_at": NOW, "agent_version": "2.1.0"}
    [update] = postgres.read_sql(target, "SELECT rollback_to FROM system_updates")
    assert update["rollback_to"] == "1.9.0"

    storage = postgres.PostgresStorage(target)
    await storage.start()
    try:
        await storage.write(ev.emit_only, ev.Event("after", {}))
    finally:
        await storage.close()
    newest = postgres.read_sql(target, "SELECT id, type FROM events ORDER BY id DESC LIMIT 1")
    assert newest == [{"id": issued + 1, "type": "after"}]


def test_every_table_of_either_schema_is_copied_and_dumped(tmp_path, target):
    """A table added by a later migration on either side, missing from the copy or from the
    dump, would be lost by `meshd migrate` or by a backup and restore."""
    import psycopg

    with psycopg.connect(target, autocommit=True) as dst:
        pg_schema.migrate(dst)
        pg_tables = {r[0] for r in dst.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema()")} - set(pg_schema.NODE_TABLES)
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        schema.migrate(conn)
        sqlite_tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%'")}
    assert set(pg_migrate.ORDER) == pg_tables
    assert sqlite_tables <= pg_tables
    assert set(pg_backups.TABLES) == pg_tables
