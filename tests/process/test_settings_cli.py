"""Every command resolves its settings through the one loader: the daemon and `meshd status`
agree on the data directory when both MESHD_DATA_DIR and systemd's STATE_DIRECTORY are set,
operator commands honour `--config`, `meshd config` says where each setting came from, and a
socket file nobody answers on does not pass for a daemon."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.store import backups
from meshd.worker.serve import open_storage
from tests.process.harness import API_KEY, MeshdProcess, clean_env

pytestmark = pytest.mark.process


class EnvConfigured(MeshdProcess):
    """A daemon started with no path flags: its directories come from the environment."""

    def command(self, extra_args=()):
        return [sys.executable, "-m", "meshd", "run", "--host", self.host, "--port",
                str(self.port), "--api-key", API_KEY, "--log-format", "json",
                "--access-log", "false", "--backup-interval", "1h", *extra_args]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshd", *args], capture_output=True,
                          text=True, timeout=60, env=clean_env(env), cwd=cwd,
                          stdin=subprocess.DEVNULL)


def test_with_both_variables_set_the_daemon_and_status_use_meshd_data_dir(meshd_proc,
                                                                         tmp_path):
    root = meshd_proc().root
    env = {"MESHD_DATA_DIR": str(root / "data"), "STATE_DIRECTORY": str(root / "state"),
           "MESHD_BACKUP_DIR": str(root / "backups")}
    (root / "state").mkdir()
    proc = EnvConfigured(root)
    proc.start(env=env)
    try:
        proc.wait_healthy()
        assert (root / "data" / "meshd.sock").exists()
        assert not (root / "state" / "meshd.sock").exists()

        # From another directory, with nothing but the same environment.
        done = cli("status", "--json", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["supervisor_pid"] == proc.pid
        assert status["data_dir"] == str((root / "data").resolve())

        shown = json.loads(cli("config", "--json", env=env, cwd=tmp_path).stdout)
        data_dir = next(r for r in shown if r["setting"] == "data_dir")
        assert data_dir == {"setting": "data_dir", "value": str(root / "data"),
                            "source": "env MESHD_DATA_DIR"}
    finally:
        proc.kill_tree()


def test_operator_commands_honour_the_config_file(tmp_path):
    data, kept = tmp_path / "data", tmp_path / "kept-backups"
    (tmp_path / "meshd.toml").write_text(f'data_dir = "{data}"\nbackup_dir = "{kept}"\n')
    settings_file = str(tmp_path / "meshd.toml")
    # A database with a backup where only the file says to look.
    import asyncio

    from tests.conftest import make_settings

    settings = make_settings(tmp_path, backup_dir=str(kept))

    async def make() -> None:
        store = open_storage(settings)
        await store.start()
        await store.close()

    asyncio.run(make())
    backups.take_backup(settings.database, kept, "test")

    listed = cli("backups", "--json", "--config", settings_file, cwd=tmp_path / "..")
    assert listed.returncode == 0, listed.stderr
    assert [r["verified"] for r in json.loads(listed.stdout)] == [True]
    # Without the file the default ./backups is empty: the listing came from the file.
    assert json.loads(cli("backups", "--json", cwd=tmp_path).stdout) == []
    checked = cli("check", "--json", "--config", settings_file)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"], checked.stderr

    shown = json.loads(cli("config", "--json", "--config", settings_file).stdout)
    assert {r["setting"]: r["source"] for r in shown}["backup_dir"] == "config file"


def test_a_socket_file_nobody_answers_on_is_not_a_daemon(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(data / "meshd.sock"))  # what `kill -9` of the daemon leaves behind
    # Offline commands work on the files...
    listed = cli("backups", "--json", "--data-dir", str(data), "--backup-dir",
                 str(tmp_path / "b"))
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    # ...and commands that need the daemon say it does not answer.
    mode = cli("mode", "read-only", "--data-dir", str(data))
    assert mode.returncode == 3 and "did not answer" in mode.stderr, mode.stderr
