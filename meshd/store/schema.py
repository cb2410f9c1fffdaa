"""Numbered schema migrations, recorded in `PRAGMA user_version`, each run once.

Version 1 is the Node server's schema (created with IF NOT EXISTS, so a Node-written database is
adopted as is, with the columns old Node builds lacked added). Later versions only ever add.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from meshd import progress
from meshd.clock import db_time, new_id

NODE_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, endpoint TEXT, capabilities TEXT,
  last_seen DATETIME DEFAULT CURRENT_TIMESTAMP, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS messages (
  id TEXT PRIMARY KEY, from_agent TEXT NOT NULL, to_agent TEXT NOT NULL, content TEXT NOT NULL,
  message_type TEXT DEFAULT 'direct', read BOOLEAN DEFAULT 0, status TEXT DEFAULT 'pending',
  timeout_ms INTEGER, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS skills (
  id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT,
  endpoint TEXT, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS agent_groups (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT, metadata TEXT,
  created_by TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS agent_group_members (
  group_id TEXT NOT NULL, agent_id TEXT NOT NULL, role TEXT DEFAULT 'member',
  joined_at DATETIME DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (group_id, agent_id),
  FOREIGN KEY (group_id) REFERENCES agent_groups(id) ON DELETE CASCADE,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS collective_memory (
  id TEXT PRIMARY KEY, group_id TEXT NOT NULL, agent_id TEXT NOT NULL, key TEXT NOT NULL,
  value TEXT NOT NULL, memory_type TEXT DEFAULT 'shared', version INTEGER DEFAULT 1,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP, updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  FOREIGN KEY (group_id) REFERENCES agent_groups(id) ON DELETE CASCADE,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_messages_to_agent ON messages(to_agent);
CREATE INDEX IF NOT EXISTS idx_messages_status ON messages(status);
CREATE INDEX IF NOT EXISTS idx_agent_groups_group ON agent_group_members(group_id);
CREATE INDEX IF NOT EXISTS idx_collective_memory_group ON collective_memory(group_id);
CREATE INDEX IF NOT EXISTS idx_collective_memory_key ON collective_memory(group_id, key);
CREATE TABLE IF NOT EXISTS agent_files (
  id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, filename TEXT NOT NULL, file_type TEXT,
  file_size INTEGER, file_data TEXT, description TEXT,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_agent_files_agent ON agent_files(agent_id);
CREATE TABLE IF NOT EXISTS system_updates (
  id TEXT PRIMARY KEY, version TEXT NOT NULL, update_type TEXT NOT NULL, title TEXT NOT NULL,
  description TEXT, required_version TEXT, breaking_change BOOLEAN DEFAULT 0, announcement TEXT,
  created_by TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP, expires_at DATETIME);
CREATE INDEX IF NOT EXISTS idx_system_updates_created ON system_updates(created_at DESC);
CREATE TABLE IF NOT EXISTS update_acknowledgments (
  id TEXT PRIMARY KEY, update_id TEXT NOT NULL, agent_id TEXT NOT NULL,
  acknowledged_at DATETIME DEFAULT CURRENT_TIMESTAMP, agent_version TEXT,
  status TEXT DEFAULT 'pending', notes TEXT,
  FOREIGN KEY (update_id) REFERENCES system_updates(id) ON DELETE CASCADE,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE, UNIQUE(update_id, agent_id));
CREATE INDEX IF NOT EXISTS idx_update_acknowledgments_update
  ON update_acknowledgments(update_id);
CREATE TABLE IF NOT EXISTS catastrophe_events (
  id TEXT PRIMARY KEY, event_type TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL,
  description TEXT, affected_agents TEXT, recovery_protocol TEXT, status TEXT DEFAULT 'active',
  occurred_at DATETIME DEFAULT CURRENT_TIMESTAMP, resolved_at DATETIME);
CREATE INDEX IF NOT EXISTS idx_catastrophe_events_status
  ON catastrophe_events(status, occurred_at DESC);
CREATE TABLE IF NOT EXISTS agent_health_status (
  agent_id TEXT PRIMARY KEY, status TEXT NOT NULL, last_heartbeat DATETIME,
  uptime_seconds INTEGER, cpu_usage REAL, memory_usage REAL, custom_metrics TEXT,
  last_updated DATETIME DEFAULT CURRENT_TIMESTAMP,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_agent_health_status
  ON agent_health_status(status, last_updated DESC);
"""

MESHD_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshd_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS migration_conflicts (
  id TEXT PRIMARY KEY, table_name TEXT NOT NULL, row_json TEXT NOT NULL, reason TEXT NOT NULL,
  moved_at DATETIME NOT NULL);
CREATE TABLE IF NOT EXISTS memory_history (
  id TEXT PRIMARY KEY, memory_id TEXT NOT NULL, group_id TEXT NOT NULL, key TEXT NOT NULL,
  version INTEGER NOT NULL, value TEXT, memory_type TEXT, agent_id TEXT, change TEXT NOT NULL,
  changed_at DATETIME NOT NULL);
CREATE INDEX IF NOT EXISTS idx_memory_history_key ON memory_history(group_id, key, version);
CREATE INDEX IF NOT EXISTS idx_messages_inbox ON messages(to_agent, created_at);
CREATE INDEX IF NOT EXISTS idx_agents_last_seen ON agents(last_seen);
"""


@dataclass(slots=True)
class MigrationReport:
    from_version: int
    to_version: int
    conflicts: list[dict] = field(default_factory=list)
    # Rows left in place that still name an agent moved to migration_conflicts.
    dangling: list[dict] = field(default_factory=list)

    @property
    def migrated(self) -> bool:
        return self.to_version != self.from_version


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    if column not in _columns(conn, table):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _unique_index_exists(conn: sqlite3.Connection, table: str, columns: list[str]) -> bool:
    for _seq, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
        if unique and [r[2] for r in conn.execute(f"PRAGMA index_info('{name}')")] == columns:
            return True
    return False


def _move_duplicates(
    conn: sqlite3.Connection, report: MigrationReport, table: str, keys: list[str],
    keep_order: str, reason: str,
) -> None:
    """Keep the first row of each duplicate group (by `keep_order`) and move the rest to
    migration_conflicts as JSON: rows that break a new constraint are never dropped."""
    key_list = ", ".join(keys)
    rows = conn.execute(
        f"SELECT rowid AS _rowid, * FROM {table} WHERE ({key_list}) IN ("
        f" SELECT {key_list} FROM {table} GROUP BY {key_list} HAVING COUNT(*) > 1)"
        f" ORDER BY {key_list}, {keep_order}"
    ).fetchall()
    names = [d[0] for d in conn.execute(f"SELECT rowid AS _rowid, * FROM {table} LIMIT 0")
             .description]
    seen: set[tuple] = set()
    for raw in rows:
        row = dict(zip(names, raw, strict=True))
        ident = tuple(row[k] for k in keys)
        if ident not in seen:
            seen.add(ident)
            continue
        rowid = row.pop("_rowid")
        conn.execute(
            "INSERT INTO migration_conflicts (id, table_name, row_json, reason, moved_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (new_id(), table, orjson.dumps(row).decode(), reason, db_time()),
        )
        conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
        report.conflicts.append({"table": table, "row": row, "reason": reason})


AGENT_REFERENCES = (
    ("agent_group_members", "agent_id"), ("collective_memory", "agent_id"),
    ("agent_files", "agent_id"), ("update_acknowledgments", "agent_id"),
    ("agent_health_status", "agent_id"), ("skills", "agent_id"),
    ("messages", "from_agent"), ("messages", "to_agent"),
)


def _report_dangling(conn: sqlite3.Connection, report: MigrationReport) -> None:
    """Rows that name a moved duplicate agent stay where they are (nothing is dropped); say
    how many, so an operator can reassign them to the agent that kept the name."""
    moved = [c["row"]["id"] for c in report.conflicts if c["table"] == "agents"]
    existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for agent_id in moved:
        for table, column in AGENT_REFERENCES:
            if table not in existing or column not in _columns(conn, table):
                continue
            count = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?",
                                 (agent_id,)).fetchone()[0]
            if count:
                report.dangling.append({"agent_id": agent_id, "table": table,
                                        "column": column, "rows": count})


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """executescript() would COMMIT the migration's transaction first; run one by one."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _v1_node_schema(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # Databases from the first Node commits lack these columns (contract RB-22). They are
    # added before NODE_SCHEMA runs, whose idx_messages_status needs `status`.
    if _columns(conn, "messages"):
        _add_column(conn, "messages", "status", "TEXT DEFAULT 'pending'")
        _add_column(conn, "messages", "timeout_ms", "INTEGER")
    _run_script(conn, NODE_SCHEMA)


def _v2_meshd_additions(conn: sqlite3.Connection, report: MigrationReport) -> None:
    _run_script(conn, MESHD_SCHEMA)
    if not _unique_index_exists(conn, "agents", ["name"]):
        _move_duplicates(conn, report, "agents", ["name"], "rowid",
                         "duplicate agent name (the first registered keeps the name)")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_agents_name ON agents(name)")
        _report_dangling(conn, report)
    _move_duplicates(conn, report, "collective_memory", ["group_id", "key"],
                     "version DESC, rowid", "duplicate memory key (the highest version is kept)")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_collective_memory_unique"
        " ON collective_memory(group_id, key)"
    )
    _add_column(conn, "messages", "client_id", "TEXT")
    _add_column(conn, "messages", "error", "TEXT")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_client_id"
        " ON messages(from_agent, client_id) WHERE client_id IS NOT NULL"
    )
    _add_column(conn, "agent_files", "sha256", "TEXT")
    _add_column(conn, "catastrophe_events", "resolution_notes", "TEXT")
    conn.execute(
        "INSERT OR IGNORE INTO meshd_meta (key, value) VALUES ('journal_seq', '0'),"
        " ('journal_epoch', '1')"
    )


PROTOCOL_SCHEMA = """
CREATE TABLE IF NOT EXISTS protocol_runs (
  id TEXT PRIMARY KEY, protocol TEXT NOT NULL, event_id TEXT, state TEXT NOT NULL,
  outcome TEXT NOT NULL, reason TEXT, dry_run INTEGER NOT NULL DEFAULT 0,
  started_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
CREATE INDEX IF NOT EXISTS idx_protocol_runs_event ON protocol_runs(event_id);
CREATE TABLE IF NOT EXISTS protocol_steps (
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL, next_state TEXT,
  outcome TEXT NOT NULL, detail TEXT, attempts INTEGER NOT NULL DEFAULT 1,
  started_at DATETIME NOT NULL, finished_at DATETIME, PRIMARY KEY (run_id, seq));
"""


def _v3_protocol_runs(conn: sqlite3.Connection, report: MigrationReport) -> None:
    _run_script(conn, PROTOCOL_SCHEMA)


def _v4_update_completion(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # A breaking update's protocol marks it complete; enforcement ends then.
    _add_column(conn, "system_updates", "completed_at", "DATETIME")


def _v5_descending_indexes(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # Lists are ordered `x DESC, rowid` (ties in insertion order, as the Node server gave).
    # An index on (key, x DESC) stores rowid ascending within equal x: exactly that order,
    # so SQLite walks the index instead of sorting every row of an inbox.
    _run_script(conn, """
DROP INDEX IF EXISTS idx_messages_inbox;
CREATE INDEX IF NOT EXISTS idx_messages_inbox_desc ON messages(to_agent, created_at DESC);
DROP INDEX IF EXISTS idx_agents_last_seen;
CREATE INDEX IF NOT EXISTS idx_agents_last_seen_desc ON agents(last_seen DESC);
CREATE INDEX IF NOT EXISTS idx_agent_files_agent_desc ON agent_files(agent_id, created_at DESC)
""")


def _v6_file_contents(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # Content of files meshd writes, as the last column of its own table: SQLite writes a
    # zeroblob there in chunks without ever holding the value in memory, where in the middle
    # of agent_files it would materialize it twice. Node-written files keep agent_files.file_data.
    _run_script(conn, """
CREATE TABLE IF NOT EXISTS file_contents (
  file_id TEXT PRIMARY KEY, data BLOB NOT NULL,
  FOREIGN KEY (file_id) REFERENCES agent_files(id) ON DELETE CASCADE)
""")


def _v7_agent_tokens(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # One token per agent, kept (revoked_at set) after a revocation: trust on first use is
    # for agents that never had a token, not for one whose token was taken away.
    _run_script(conn, """
CREATE TABLE IF NOT EXISTS agent_tokens (
  agent_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created_at DATETIME NOT NULL,
  revoked_at DATETIME,
  FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE)
""")


def _v8_list_indexes(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # An index for the WHERE and the ORDER BY of every list query, so a page costs the rows
    # it returns, not the size of the table (tests/unit/test_query_plans.py checks the plans).
    # Open catastrophes are few among all events ever recorded: a partial index holds only
    # those, for the dashboard, open_summary and the open events replayed to new clients.
    _run_script(conn, """
CREATE INDEX IF NOT EXISTS idx_agent_files_created_desc ON agent_files(created_at DESC);
CREATE INDEX IF NOT EXISTS idx_agent_groups_created_desc ON agent_groups(created_at DESC);
DROP INDEX IF EXISTS idx_agent_groups_group;
CREATE INDEX IF NOT EXISTS idx_agent_group_members_group_joined
  ON agent_group_members(group_id, joined_at);
CREATE INDEX IF NOT EXISTS idx_agent_group_members_agent ON agent_group_members(agent_id);
CREATE INDEX IF NOT EXISTS idx_collective_memory_updated
  ON collective_memory(group_id, updated_at DESC);
CREATE INDEX IF NOT EXISTS idx_skills_created_desc ON skills(created_at DESC);
CREATE INDEX IF NOT EXISTS idx_update_acknowledgments_update_time
  ON update_acknowledgments(update_id, acknowledged_at DESC);
CREATE INDEX IF NOT EXISTS idx_catastrophe_events_occurred ON catastrophe_events(occurred_at DESC);
CREATE INDEX IF NOT EXISTS idx_catastrophe_events_open ON catastrophe_events(occurred_at)
  WHERE status <> 'resolved'
""")


def _v9_heartbeat_evidence(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # last_seen also moves on registration; only a heartbeat (HTTP, health post or WebSocket)
    # sets heartbeat_at, the evidence that an agent was online before it went silent.
    _add_column(conn, "agents", "heartbeat_at", "DATETIME")


def _v10_event_log(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # Every event the hub sends, written in the transaction of the change that caused it: a
    # WebSocket client resumes from the last id it saw (`/ws?since=ID`).
    _run_script(conn, """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, data TEXT NOT NULL,
  audience TEXT, created_at DATETIME NOT NULL)
""")


def _v11_reported_versions(conn: sqlite3.Connection, report: MigrationReport) -> None:
    # The version an agent last reported (X-Agent-Version on a heartbeat or health post,
    # agentVersion on an acknowledgment): adoption of an update or of a roll-back is counted
    # from it, not from acknowledgments alone. A roll-back update names the version it returns
    # agents to (`rollbackTo`); it never triggers a roll-back itself.
    _add_column(conn, "agents", "agent_version", "TEXT")
    _add_column(conn, "system_updates", "rollback_to", "TEXT")


MIGRATIONS: tuple[Callable[[sqlite3.Connection, MigrationReport], None], ...] = (
    _v1_node_schema,
    _v2_meshd_additions,
    _v3_protocol_runs,
    _v4_update_completion,
    _v5_descending_indexes,
    _v6_file_contents,
    _v7_agent_tokens,
    _v8_list_indexes,
    _v9_heartbeat_evidence,
    _v10_event_log,
    _v11_reported_versions,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    pass


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0


def migrate(conn: sqlite3.Connection) -> MigrationReport:
    """Run every pending migration, each in its own transaction with its version bump."""
    current = user_version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {current}, newer than this meshd build supports "
            f"({SCHEMA_VERSION}); upgrade meshd or restore a backup made by this version"
        )
    report = MigrationReport(current, SCHEMA_VERSION)
    # With foreign keys on, moving a duplicate agent out would cascade and silently delete
    # the rows that reference it (memberships, memory, files, acknowledgments, health):
    # they stay where they are. The pragma is a no-op inside a transaction, so set it here.
    foreign_keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        with progress.Bar("migrating schema") as bar:
            for version in range(current + 1, SCHEMA_VERSION + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    MIGRATIONS[version - 1](conn, report)
                    conn.execute(f"PRAGMA user_version = {version}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                bar.update(version - current, SCHEMA_VERSION - current)
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    return report


def check_version(path) -> None:
    """Raise SchemaTooNew for an existing database this build cannot serve."""
    from pathlib import Path

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = user_version(conn)
    except sqlite3.DatabaseError:
        return  # not readable as SQLite: the worker's checks and recovery deal with it
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this meshd build supports "
            f"({SCHEMA_VERSION}); upgrade meshd or restore a backup made by this version"
        )
