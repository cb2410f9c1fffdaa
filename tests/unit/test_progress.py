"""Progress bars draw only on a terminal and only once a command turned them on; a journal
replay reports its records through one."""

from __future__ import annotations

import io
import sqlite3

from meshd import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_on_a_terminal_once_enabled_and_never_on_a_pipe():
    progress.enable(True)
    try:
        tty, pipe = Terminal(), io.StringIO()
        for stream in (tty, pipe):
            with progress.Bar("replaying journal", stream) as bar:
                for done in range(0, 101, 50):
                    bar.update(done, 100)
        assert "replaying journal [" in tty.getvalue() and "100% 100/100" in tty.getvalue()
        assert tty.getvalue().endswith("\n")
        assert pipe.getvalue() == ""
    finally:
        progress.enable(False)
    quiet = Terminal()
    with progress.Bar("x", quiet) as bar:
        bar.update(1, 1)
    assert quiet.getvalue() == ""


def test_migration_reports_each_step(tmp_path, monkeypatch, capsys):
    from meshd.store import schema

    drawn = []

    class Recording(progress.Bar):
        def update(self, done: int, total: int) -> None:
            drawn.append((done, total))

    monkeypatch.setattr(progress, "Bar", Recording)
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    schema.migrate(conn)
    conn.close()
    assert drawn and drawn[-1] == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
