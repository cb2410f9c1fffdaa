"""File queries: content kept as base64 TEXT (the Node server's format) with its decoded size
and SHA-256. Listings never select the content; a download selects one row only.
"""

from __future__ import annotations

from meshd.clock import new_id
from meshd.errors import Forbidden, NotFound
from meshd.store.base import Reader, Row, Tx, small_read

LISTING_COLUMNS = "id, agent_id, filename, file_type, file_size, description, created_at, sha256"
# The Node server's column order (SELECT *), then meshd's sha256.
FULL_COLUMNS = (
    "f.id, f.agent_id, f.filename, f.file_type, f.file_size,"
    " COALESCE(c.data, f.file_data) AS file_data, f.description, f.created_at, f.sha256"
)
# meshd keeps a file's content in file_contents; files the Node server wrote, in file_data.
WITH_CONTENT = "agent_files f LEFT JOIN file_contents c ON c.file_id = f.id"
INSERT = (
    "INSERT INTO agent_files (id, agent_id, filename, file_type, file_size, file_data,"
    " description, created_at, sha256) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)"
)


def create(
    tx: Tx,
    agent_id: str,
    filename: str,
    file_type: str | None,
    file_size: int,
    file_data: str,
    description: str | None,
    sha256: str,
    now: str,
) -> str:
    """Store a file for an existing agent; its id."""
    if tx.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is None:
        raise NotFound("Agent not found")
    file_id = new_id()
    tx.execute(INSERT, (file_id, agent_id, filename, file_type, file_size, description, now,
                        sha256))
    tx.insert_large("file_contents", "file_id", file_id, "data", file_data)
    return file_id


def _text(value: str | bytes | None) -> str | None:
    """meshd stores a file's base64 as a BLOB (written in chunks), the Node server as TEXT."""
    return value.decode("ascii") if isinstance(value, bytes) else value


def get(db: Reader, file_id: str) -> Row | None:
    """One file with its content."""
    row = db.one(f"SELECT {FULL_COLUMNS} FROM {WITH_CONTENT} WHERE f.id = ?", (file_id,))
    if row is not None:
        row["file_data"] = _text(row["file_data"])
    return row


@small_read
def get_meta(db: Reader, file_id: str) -> Row | None:
    """One file without its content."""
    return db.one(f"SELECT {LISTING_COLUMNS} FROM agent_files WHERE id = ?", (file_id,))


# Not a small read, however short the slice: SQLite loads the whole stored value to cut a slice
# of it (256 KiB of a 27 MiB file's base64: 20 ms on the development machine), in one step that
# the inline read's budget cannot interrupt.
def read_slice(db: Reader, file_id: str, start: int, length: int) -> str | None:
    """`length` characters of a file's base64 from offset `start` (0-based); None when the
    file is gone."""
    return _text(db.scalar(
        f"SELECT substr(COALESCE(c.data, f.file_data), ?, ?) AS part FROM {WITH_CONTENT}"
        " WHERE f.id = ?", (start + 1, length, file_id)))


def list_files(db: Reader, agent_id: str | None, limit: int = -1, offset: int = 0) -> list[Row]:
    where, params = ("WHERE agent_id = ?", [agent_id]) if agent_id else ("", [])
    return db.query(
        f"SELECT {LISTING_COLUMNS} FROM agent_files {where}"
        " ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )


def delete(tx: Tx, file_id: str, agent_id: str) -> None:
    """Delete a file on behalf of its uploader; anyone else gets Forbidden and it stays."""
    row = tx.one("SELECT agent_id FROM agent_files WHERE id = ?", (file_id,))
    if row is None:
        raise NotFound("File not found")
    if row["agent_id"] != agent_id:
        raise Forbidden("You can only delete your own files")
    tx.execute("DELETE FROM agent_files WHERE id = ?", (file_id,))
