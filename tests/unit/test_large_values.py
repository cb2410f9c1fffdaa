"""Large values (file contents) are written in chunks and replay from the journal exactly."""

from __future__ import annotations

import base64
import os
import sqlite3

from meshd.clock import db_time
from meshd.store import agents, files
from meshd.store.sqlite import SqliteStorage


async def test_a_file_written_in_chunks_replays_byte_identical(tmp_path):
    db, journal = tmp_path / "mesh.db", tmp_path / "journal"
    content = base64.b64encode(os.urandom(3 << 20)).decode()  # > several blob chunks
    storage = SqliteStorage(db, journal)
    await storage.start()
    agent_id, _ = await storage.write(agents.register, "owner", None, "[]", db_time())
    seq_before = storage.journal_seq
    file_id = await storage.write(files.create, agent_id, "f.bin", None, 3 << 20, content,
                                  None, "0" * 64, db_time())
    assert (await storage.read(files.get, file_id))["file_data"] == content
    assert await storage.read(files.read_slice, file_id, 5, 10) == content[5:15]
    await storage.close()

    # Lose the commit (as a crash between journal fsync and COMMIT would): replay restores it.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM file_contents")
    conn.execute("DELETE FROM agent_files")
    conn.execute("UPDATE meshd_meta SET value = ? WHERE key = 'journal_seq'", (str(seq_before),))
    conn.commit()
    conn.close()
    storage = SqliteStorage(db, journal)
    await storage.start()
    try:
        assert storage.replayed == 1
        assert (await storage.read(files.get, file_id))["file_data"] == content
    finally:
        await storage.close()


async def test_a_failed_write_leaves_no_partial_value(tmp_path):
    storage = SqliteStorage(tmp_path / "mesh.db", tmp_path / "journal")
    await storage.start()
    try:
        import pytest

        from meshd.errors import NotFound

        with pytest.raises(NotFound):
            await storage.write(files.create, "no-such-agent", "f", None, 3, "AAAA", None,
                                "0" * 64, db_time())
        assert await storage.read(lambda r: r.scalar("SELECT COUNT(*) FROM agent_files")) == 0
    finally:
        await storage.close()
