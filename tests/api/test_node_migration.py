"""Migration of a database written by the Node.js server: every row of every table of
tests/fixtures/node-agent-mesh.db is served by meshd afterwards, a copy is taken first,
migrating again changes nothing, duplicates are moved (never dropped) and a newer schema is
refused. The fixture itself is never opened for writing: each test migrates a copy."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from meshd import config
from meshd.api.app import make_app
from meshd.store import schema
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, AUTH, call

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "node-agent-mesh.db"
DB_TIME = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
# Every table of the Node server's schema: a table added to the fixture must be checked here.
NODE_TABLES = {
    "agents", "messages", "skills", "agent_groups", "agent_group_members", "collective_memory",
    "agent_files", "system_updates", "update_acknowledgments", "catastrophe_events",
    "agent_health_status",
}


def read_rows(path: Path) -> dict[str, list[dict]]:
    """Every row of every table, read-only, by table name."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name")]
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")]
                for t in tables}
    finally:
        conn.close()


def dump(path: Path) -> tuple[int, list, dict[str, list[dict]]]:
    """user_version, schema objects and rows: the whole state of a database file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return version, objects, read_rows(path)


def settings_for(tmp_path: Path, database: Path) -> config.Settings:
    return config.load(
        {"data_dir": str(tmp_path / "data"), "backup_dir": str(tmp_path / "backups"),
         "database": str(database), "api_key": API_KEY, "access_log": "false",
         "log_format": "json"},
        environ={},
    )


async def open_store(tmp_path: Path, database: Path):
    settings = settings_for(tmp_path, database)
    store = open_storage(settings)
    await store.start()
    return settings, store


@pytest.fixture(scope="module")
def node() -> dict[str, list[dict]]:
    """The fixture's rows, read from the untouched file."""
    rows = read_rows(FIXTURE)
    assert set(rows) == NODE_TABLES
    assert all(rows[t] for t in NODE_TABLES), "every table of the fixture holds rows"
    return rows


@pytest.fixture
def db_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "node" / "agent-mesh.db"
    copy.parent.mkdir()
    shutil.copyfile(FIXTURE, copy)
    return copy


@pytest.fixture
async def migrated(tmp_path, db_copy):
    _settings, store = await open_store(tmp_path, db_copy)
    yield store
    await store.close()


@pytest.fixture
async def client(aiohttp_client, tmp_path, db_copy, migrated):
    return await aiohttp_client(make_app(settings_for(tmp_path, db_copy), migrated),
                                headers=AUTH)


async def get_ok(client, path: str):
    status, body = await call(client, "GET", path)
    assert status == 200, (path, body)
    return body


def assert_db_times(row: dict, *keys: str) -> None:
    for key in keys:
        if row[key] is not None:
            assert re.match(DB_TIME, row[key]), (key, row[key])


# -- the migration itself ------------------------------------------------------------------


async def test_fixture_is_migrated_to_the_current_schema(migrated, db_copy):
    assert migrated.migration.from_version == 0
    assert migrated.migration.to_version == schema.SCHEMA_VERSION
    assert migrated.migration.migrated
    assert migrated.migration.conflicts == []
    conn = sqlite3.connect(db_copy)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM migration_conflicts").fetchone()[0] == 0
    finally:
        conn.close()


async def test_every_original_row_is_still_in_the_file(migrated, db_copy, node):
    """Nothing rewritten: each Node column keeps its value (columns are only added)."""
    after = read_rows(db_copy)
    for table, rows in node.items():
        kept = [{k: r[k] for k in rows[0]} for r in after[table]]
        assert kept == rows, table


async def test_a_copy_is_taken_before_migrating(migrated, db_copy, node):
    copies = sorted(db_copy.parent.glob(f"{db_copy.name}.pre-meshd-v0-*.bak"))
    assert len(copies) == 1, copies
    assert re.fullmatch(
        r"agent-mesh\.db\.pre-meshd-v0-\d{8}T\d{6}\.bak", copies[0].name)
    version, _objects, rows = dump(copies[0])
    assert version == 0
    assert rows == node
    assert FIXTURE.read_bytes() != db_copy.read_bytes()  # the copy, not the fixture, migrated


async def test_opening_the_migrated_file_again_changes_nothing(tmp_path, db_copy):
    _settings, store = await open_store(tmp_path, db_copy)
    await store.close()
    first = dump(db_copy)
    copies = set(db_copy.parent.glob("*.bak"))
    _settings, store = await open_store(tmp_path, db_copy)
    try:
        assert store.migration.from_version == schema.SCHEMA_VERSION
        assert store.migration.to_version == schema.SCHEMA_VERSION
        assert not store.migration.migrated
        assert store.migration.conflicts == []
    finally:
        await store.close()
    assert dump(db_copy) == first
    assert first[0] == schema.SCHEMA_VERSION
    assert set(db_copy.parent.glob("*.bak")) == copies  # no second copy


async def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    store = open_storage(settings_for(tmp_path, path))
    with pytest.raises(schema.SchemaTooNew, match="newer"):
        await store.start()
    await store.close()
    with pytest.raises(schema.SchemaTooNew, match="newer"):
        schema.check_version(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.bak"))


# -- every row is served -------------------------------------------------------------------


async def test_every_agent_is_served(client, node):
    expected = {r["id"]: {**r, "capabilities": orjson.loads(r["capabilities"])}
                for r in node["agents"]}
    listed = await get_ok(client, "/api/agents")
    assert {a["id"]: a for a in listed} == expected
    for agent_id, row in expected.items():
        served = await get_ok(client, f"/api/agents/{agent_id}")
        assert served == row
        assert_db_times(served, "last_seen", "created_at")


async def test_every_message_is_served(client, node):
    by_recipient = defaultdict(list)
    for row in node["messages"]:
        by_recipient[row["to_agent"]].append(row)
    for to_agent, rows in by_recipient.items():
        resp = await client.get(f"/api/messages/{to_agent}")
        assert resp.status == 200
        raw = await resp.read()
        served = {m["id"]: m for m in orjson.loads(raw)}
        assert set(served) == {r["id"] for r in rows}
        for row in rows:
            message = served[row["id"]]
            assert {k: message[k] for k in row} == row
            # The text is sent as UTF-8, byte for byte what the Node server stored.
            assert orjson.dumps(row["content"])[1:-1] in raw
    unicode = [r for r in node["messages"] if not r["content"].isascii()]
    assert len(unicode) == 1
    resp = await client.get(f"/api/messages/{unicode[0]['to_agent']}")
    assert "héllo β — unicode ✓".encode() in await resp.read()


async def test_the_skill_is_served(client, node):
    agents = {a["id"]: a["name"] for a in node["agents"]}
    served = {s["id"]: s for s in await get_ok(client, "/api/skills")}
    assert set(served) == {r["id"] for r in node["skills"]}
    for row in node["skills"]:
        skill = served[row["id"]]
        assert {k: skill[k] for k in row} == row
        assert skill["agent_name"] == agents[row["agent_id"]]


async def test_the_group_and_its_member_are_served(client, node):
    agents = {a["id"]: a for a in node["agents"]}
    listed = {g["id"]: g for g in await get_ok(client, "/api/groups")}
    assert set(listed) == {g["id"] for g in node["agent_groups"]}
    for row in node["agent_groups"]:
        expected = {**row, "metadata": orjson.loads(row["metadata"])}
        assert {k: listed[row["id"]][k] for k in row} == expected
        detail = await get_ok(client, f"/api/groups/{row['id']}")
        assert {k: detail[k] for k in row} == expected
        members = [m for m in node["agent_group_members"] if m["group_id"] == row["id"]]
        assert len(detail["members"]) == len(members)
        served = {m["agent_id"]: m for m in detail["members"]}
        for member in members:
            got = served[member["agent_id"]]
            assert {k: got[k] for k in member} == member
            agent = agents[member["agent_id"]]
            assert got["name"] == agent["name"]
            assert got["capabilities"] == orjson.loads(agent["capabilities"])
        in_group = await get_ok(client, f"/api/groups/{row['id']}/agents")
        assert {a["id"]: a["role"] for a in in_group} == {
            m["agent_id"]: m["role"] for m in members}
    for member in node["agent_group_members"]:
        groups = await get_ok(client, f"/api/agents/{member['agent_id']}/groups")
        assert member["group_id"] in {g["id"] for g in groups}


async def test_collective_memory_is_served(client, node):
    by_group = defaultdict(list)
    for row in node["collective_memory"]:
        by_group[row["group_id"]].append(row)
    for group_id, rows in by_group.items():
        listed = {m["id"]: m for m in await get_ok(client, f"/api/groups/{group_id}/memory")}
        assert set(listed) == {r["id"] for r in rows}
        for row in rows:
            expected = {**row, "value": orjson.loads(row["value"])}
            assert listed[row["id"]] == expected
            key = quote(row["key"], safe="")
            assert await get_ok(client, f"/api/groups/{group_id}/memory/{key}") == expected
            history = await get_ok(client, f"/api/groups/{group_id}/memory/{key}/history")
            assert history == {
                "key": row["key"], "currentVersion": row["version"],
                "lastUpdated": row["updated_at"], "lastUpdatedBy": row["agent_id"],
                "versions": [{"version": row["version"], "value": expected["value"],
                              "memoryType": row["memory_type"], "agentId": row["agent_id"],
                              "change": "created" if row["version"] == 1 else "updated",
                              "changedAt": row["updated_at"]}],
            }


async def test_the_file_is_served_as_json_and_raw(client, node):
    for row in node["agent_files"]:
        served = await get_ok(client, f"/api/files/{row['id']}")
        assert {k: served[k] for k in row} == row
        assert served["fileData"] == row["file_data"]
        data = base64.b64decode(row["file_data"])
        assert len(data) == row["file_size"]
        for path in (f"/api/files/{row['id']}?raw=1", f"/api/files/{row['id']}/download"):
            resp = await client.get(path)
            assert resp.status == 200
            assert await resp.read() == data
            assert resp.headers["Content-Type"].startswith(row["file_type"])
            assert f'filename="{row["filename"]}"' in resp.headers["Content-Disposition"]
            assert resp.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        listed = await get_ok(client, f"/api/files?agentId={row['agent_id']}")
        assert [f["id"] for f in listed] == [row["id"]]
        assert listed[0]["fileSize"] == row["file_size"]
        assert listed[0]["createdAt"] == row["created_at"]
        assert "fileData" not in listed[0] and "file_data" not in listed[0]


async def test_the_update_and_its_acknowledgment_are_served(client, node):
    agents = {a["id"]: a for a in node["agents"]}
    listed = {u["id"]: u for u in await get_ok(client, "/api/updates")}
    assert set(listed) == {u["id"] for u in node["system_updates"]}
    for row in node["system_updates"]:
        assert {k: listed[row["id"]][k] for k in row} == row
        assert await get_ok(client, f"/api/updates/{row['id']}") == listed[row["id"]]
        acks = [a for a in node["update_acknowledgments"] if a["update_id"] == row["id"]]
        served = {a["id"]: a for a in
                  await get_ok(client, f"/api/updates/{row['id']}/acknowledgments")}
        assert set(served) == {a["id"] for a in acks}
        for ack in acks:
            got = served[ack["id"]]
            assert {k: got[k] for k in ack} == ack
            assert got["agent_name"] == agents[ack["agent_id"]]["name"]
            assert got["agent_endpoint"] == agents[ack["agent_id"]]["endpoint"]
        adoption = await get_ok(client, f"/api/updates/{row['id']}/adoption")
        assert adoption["acknowledged"] == len(acks)


async def test_the_catastrophe_event_is_served(client, node):
    listed = {e["id"]: e for e in await get_ok(client, "/api/catastrophe")}
    assert set(listed) == {e["id"] for e in node["catastrophe_events"]}
    for row in node["catastrophe_events"]:
        served = await get_ok(client, f"/api/catastrophe/{row['id']}")
        assert {k: served[k] for k in row} == row
        assert served["affectedAgents"] == orjson.loads(row["affected_agents"])
        assert served["resolution_notes"] is None
        assert {**listed[row["id"]], "protocolRuns": []} == served  # a key added, none changed
        assert_db_times(served, "occurred_at", "resolved_at")


async def test_the_health_row_is_served(client, node):
    for row in node["agent_health_status"]:
        served = await get_ok(client, f"/api/agents/{row['agent_id']}/health")
        assert served == {
            "agentId": row["agent_id"], "status": row["status"],
            "lastHeartbeat": row["last_heartbeat"], "uptimeSeconds": row["uptime_seconds"],
            "cpuUsage": row["cpu_usage"], "memoryUsage": row["memory_usage"],
            "customMetrics": orjson.loads(row["custom_metrics"]),
            "lastUpdated": row["last_updated"],
        }
    dashboard = await get_ok(client, "/api/health/dashboard")
    assert dashboard["totalAgents"] == len(node["agents"])
    assert {a["agentId"] for a in dashboard["agentList"]} == {a["id"] for a in node["agents"]}


# -- writes after the migration ------------------------------------------------------------


async def test_writes_work_after_migration(client, node):
    first = node["agents"][0]
    status, body = await call(client, "POST", "/api/agents/register",
                              {"name": first["name"], "endpoint": first["endpoint"]})
    assert (status, body["agentId"], body["existed"]) == (200, first["id"], True)
    served = await get_ok(client, f"/api/agents/{first['id']}")
    assert served["capabilities"] == orjson.loads(first["capabilities"])  # kept
    assert served["created_at"] == first["created_at"]

    status, body = await call(client, "POST", "/api/agents/register",
                              {"name": "after-migration", "capabilities": ["x"]})
    assert status == 200 and body["existed"] is False
    new_id = body["agentId"]
    assert len(await get_ok(client, "/api/agents")) == len(node["agents"]) + 1

    status, body = await call(client, "POST", "/api/messages",
                              {"from": new_id, "to": first["id"], "content": "après ✓"})
    assert status == 200, body
    inbox = await get_ok(client, f"/api/messages/{first['id']}")
    assert inbox[0]["id"] == body["messageId"] and inbox[0]["content"] == "après ✓"

    memory = node["collective_memory"][0]
    status, body = await call(client, "POST", f"/api/groups/{memory['group_id']}/memory",
                              {"agentId": node["agent_group_members"][0]["agent_id"],
                               "key": memory["key"], "value": {"after": True}})
    assert status == 200, body
    assert body["version"] == memory["version"] + 1
    history = await get_ok(
        client, f"/api/groups/{memory['group_id']}/memory/{memory['key']}/history")
    assert [v["version"] for v in history["versions"]] == [memory["version"],
                                                             memory["version"] + 1]


# -- an old Node database with duplicates --------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, endpoint TEXT, capabilities TEXT,
  last_seen DATETIME DEFAULT CURRENT_TIMESTAMP, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE messages (id TEXT PRIMARY KEY, from_agent TEXT NOT NULL, to_agent TEXT NOT NULL,
  content TEXT NOT NULL, message_type TEXT DEFAULT 'direct', read BOOLEAN DEFAULT 0,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE skills (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, name TEXT NOT NULL,
  description TEXT, endpoint TEXT, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE agent_groups (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
  metadata TEXT, created_by TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE agent_group_members (group_id TEXT NOT NULL, agent_id TEXT NOT NULL,
  role TEXT DEFAULT 'member', joined_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (group_id, agent_id),
  FOREIGN KEY (group_id) REFERENCES agent_groups(id) ON DELETE CASCADE,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE TABLE collective_memory (id TEXT PRIMARY KEY, group_id TEXT NOT NULL,
  agent_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  memory_type TEXT DEFAULT 'shared', version INTEGER DEFAULT 1,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  FOREIGN KEY (group_id) REFERENCES agent_groups(id) ON DELETE CASCADE,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE INDEX idx_messages_to_agent ON messages(to_agent);
CREATE INDEX idx_collective_memory_key ON collective_memory(group_id, key);
"""
T1, T2, T3 = "2025-01-01 10:00:00", "2025-01-02 10:00:00", "2025-01-03 10:00:00"
OLD_AGENTS = [
    ("a-first", "TestAgent1", "http://localhost:3001", '["messaging"]', T1, T1),
    ("a-solo", "TestAgent2", None, "[]", T1, T1),
    ("a-second", "TestAgent1", "http://localhost:3009", '["other"]', T2, T2),
    ("a-third", "TestAgent1", None, None, T3, T3),
]
OLD_MESSAGES = [
    ("m1", "a-first", "a-solo", "hello", "direct", 0, T1),
    ("m2", "a-second", "a-solo", "from the duplicate", "direct", 1, T2),
]
OLD_MEMORY = [
    ("mem-v1", "g1", "a-first", "plan", '"one"', "shared", 1, T1, T1),
    ("mem-v3", "g1", "a-solo", "plan", '"three"', "shared", 3, T1, T3),
    ("mem-v2", "g1", "a-first", "plan", '"two"', "shared", 2, T1, T2),
    ("mem-other", "g1", "a-first", "notes", '{"n": 1}', "shared", 1, T1, T1),
]


def build_old_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.executemany("INSERT INTO agents VALUES (?, ?, ?, ?, ?, ?)", OLD_AGENTS)
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", OLD_MESSAGES)
    conn.execute("INSERT INTO agent_groups VALUES ('g1', 'Old', NULL, '{}', 'a-first', ?)", (T1,))
    conn.executemany("INSERT INTO agent_group_members VALUES ('g1', ?, 'member', ?)",
                     [("a-first", T1), ("a-solo", T1), ("a-second", T2)])
    conn.executemany("INSERT INTO collective_memory VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     OLD_MEMORY)
    conn.commit()
    conn.close()


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    path = tmp_path / "old" / "agent-mesh.db"
    path.parent.mkdir()
    build_old_database(path)
    return path


async def test_old_node_database_duplicates_are_moved_not_dropped(tmp_path, old_db):
    before = read_rows(old_db)
    _settings, store = await open_store(tmp_path, old_db)
    try:
        report = store.migration
    finally:
        await store.close()
    after = read_rows(old_db)

    # One row per name, the first registered keeps it.
    assert sorted((a["name"], a["id"]) for a in after["agents"]) == [
        ("TestAgent1", "a-first"), ("TestAgent2", "a-solo")]
    # The highest version of a duplicated memory key is kept.
    assert sorted((m["key"], m["id"]) for m in after["collective_memory"]) == [
        ("notes", "mem-other"), ("plan", "mem-v3")]
    # Messages gained the columns of later Node builds, and kept every row.
    assert [(m["id"], m["status"], m["timeout_ms"]) for m in after["messages"]] == [
        ("m1", "pending", None), ("m2", "pending", None)]

    moved = {(c["table_name"], orjson.loads(c["row_json"])["id"]): c
             for c in after["migration_conflicts"]}
    assert set(moved) == {("agents", "a-second"), ("agents", "a-third"),
                          ("collective_memory", "mem-v1"), ("collective_memory", "mem-v2")}
    for (table, row_id), conflict in moved.items():
        original = next(r for r in before[table] if r["id"] == row_id)
        assert orjson.loads(conflict["row_json"]) == original
        assert conflict["reason"]
        assert re.match(DB_TIME, conflict["moved_at"])
    assert "name" in moved[("agents", "a-second")]["reason"]
    assert "memory" in moved[("collective_memory", "mem-v1")]["reason"]

    # Every original row is either still in its table or in migration_conflicts.
    for table, rows in before.items():
        key = ("group_id", "agent_id") if table == "agent_group_members" else ("id",)
        kept = {tuple(r[k] for k in key) for r in after[table]}
        for row in rows:
            ident = tuple(row[k] for k in key)
            assert ident in kept or (table, row["id"]) in moved, (table, row)

    # The report names the same rows.
    assert report.from_version == 0 and report.to_version == schema.SCHEMA_VERSION
    assert sorted((c["table"], c["row"]["id"]) for c in report.conflicts) == sorted(moved)
    assert all(c["reason"] for c in report.conflicts)

    # The constraints hold from now on.
    conn = sqlite3.connect(old_db)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO agents (id, name) VALUES ('x', 'TestAgent2')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO collective_memory (id, group_id, agent_id, key, value)"
                         " VALUES ('y', 'g1', 'a-solo', 'plan', '1')")
    finally:
        conn.close()


async def test_moving_a_duplicate_agent_does_not_cascade(tmp_path, old_db):
    """agent_group_members references agents ON DELETE CASCADE: moving the duplicate agent
    out must not delete its membership."""
    _settings, store = await open_store(tmp_path, old_db)
    await store.close()
    members = read_rows(old_db)["agent_group_members"]
    assert sorted(m["agent_id"] for m in members) == ["a-first", "a-second", "a-solo"]
    # The membership that now names a moved agent is reported, so it can be reassigned.
    assert {"agent_id": "a-second", "table": "agent_group_members", "column": "agent_id",
            "rows": 1} in store.migration.dangling


async def test_old_node_database_is_served_and_writable(aiohttp_client, tmp_path, old_db):
    settings, store = await open_store(tmp_path, old_db)
    try:
        client = await aiohttp_client(make_app(settings, store), headers=AUTH)
        agents = await get_ok(client, "/api/agents")
        assert sorted(a["id"] for a in agents) == ["a-first", "a-solo"]
        inbox = await get_ok(client, "/api/messages/a-solo")
        assert {m["id"]: m["status"] for m in inbox} == {"m1": "pending", "m2": "pending"}
        memory = await get_ok(client, "/api/groups/g1/memory/plan")
        assert (memory["id"], memory["version"], memory["value"]) == ("mem-v3", 3, "three")

        status, body = await call(client, "POST", "/api/agents/register", {"name": "TestAgent1"})
        assert (status, body["agentId"], body["existed"]) == (200, "a-first", True)
        status, body = await call(client, "POST", "/api/messages",
                                  {"from": "a-first", "to": "a-solo", "content": "new",
                                   "timeoutMs": 60000})
        assert status == 200, body
        status, body = await call(client, "PATCH", f"/api/messages/{body['messageId']}/status",
                                  {"status": "delivered"})
        assert status == 200, body
        status, body = await call(client, "POST", "/api/groups/g1/memory",
                                  {"agentId": "a-solo", "key": "plan", "value": "four"})
        assert (status, body.get("version")) == (200, 4)
    finally:
        await store.close()
