"""The operator at 3 a.m.: offline commands after a `kill -9` of the supervisor, an installed
service's files found from any directory, `meshd status` current at once, restore's
confirmation and `--output`, settings refused before anything is created."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.locks import FileLock
from tests.process.harness import API_KEY, MeshdProcess, clean_env, meshd_cli, poll

pytestmark = pytest.mark.process

FAST = ("--access-log", "false", "--backup-interval", "1h", "--quick-check-interval", "1h")


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshd", *args], capture_output=True,
                          text=True, timeout=timeout, env=clean_env(env), cwd=cwd,
                          stdin=subprocess.DEVNULL)


def register(proc: MeshdProcess, *names: str) -> None:
    import urllib.request

    for name in names:
        req = urllib.request.Request(
            proc.url + "/api/agents/register", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def agent_names(database: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM agents")}
    finally:
        conn.close()


def test_after_kill_9_offline_commands_work_and_the_next_run_serves_the_restored_data(
        meshd_proc):
    proc = meshd_proc()
    proc.start(FAST)
    proc.wait_healthy(20)
    register(proc, "before-crash-1", "before-crash-2")
    worker = proc.wait_serving()["worker_pid"]

    proc.signal(signal.SIGKILL)  # the supervisor only: its worker is orphaned
    assert proc.wait_exit(10) == -signal.SIGKILL
    assert (proc.data_dir / "meshd.sock").exists()  # the stale socket stays behind

    listing = meshd_cli(proc, "backups", "--backup-dir", str(proc.backup_dir))
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) and "working on the files" in listing.stderr
    check = meshd_cli(proc, "check", "--backup-dir", str(proc.backup_dir))
    assert check.returncode == 0 and json.loads(check.stdout)["ok"], check.stderr
    # The orphaned worker may still be draining with writer.lock: restore waits for it.
    restore = meshd_cli(proc, "restore", "--yes", "--backup-dir", str(proc.backup_dir))
    assert restore.returncode == 0, restore.stderr
    report = json.loads(restore.stdout)
    assert report["replayed"] >= 2 and report["quarantined"], report
    assert "This replaces" in restore.stderr
    poll(lambda: not _alive(worker), 15, "the orphaned worker to exit")

    proc.start(FAST)
    proc.wait_healthy(20)
    import urllib.request

    req = urllib.request.Request(proc.url + "/api/agents", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        names = {a["name"] for a in json.loads(resp.read())}
    assert {"before-crash-1", "before-crash-2"} <= names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_restore_names_the_process_holding_the_writer_lock(tmp_path):
    data = tmp_path / "data"
    lock = FileLock(data / "writer.lock")
    lock.acquire()
    try:
        backups = tmp_path / "backups"
        _backup_of_a_small_database(tmp_path, backups)
        done = cli("restore", "--yes", "--data-dir", str(data), "--backup-dir", str(backups),
                   env={"MESHD_DRAIN_TIMEOUT": "0.1"})
        assert done.returncode == 1, done.stderr
        assert f"pid {os.getpid()} still holds" in done.stderr, done.stderr
        assert not (data / "quarantine").exists()
    finally:
        lock.release()


def test_restore_refuses_beside_a_supervisor_that_holds_its_lock_but_does_not_answer(
        tmp_path):
    data = tmp_path / "data"
    lock = FileLock(data / "meshd.lock")
    lock.acquire()
    try:
        backups = tmp_path / "backups"
        _backup_of_a_small_database(tmp_path, backups)
        done = cli("restore", "--yes", "--data-dir", str(data), "--backup-dir", str(backups))
        assert done.returncode == 1
        assert f"supervisor pid {os.getpid()} holds" in done.stderr, done.stderr
    finally:
        lock.release()


def _backup_of_a_small_database(tmp_path: Path, backups: Path) -> None:
    source = tmp_path / "source"
    done = cli("backup", "--data-dir", str(source), "--backup-dir", str(backups),
               "--database", str(_small_database(source)))
    assert done.returncode == 0, done.stderr


def _small_database(where: Path) -> Path:
    import asyncio

    from meshd.worker.serve import open_storage
    from tests.conftest import make_settings

    settings = make_settings(where)

    async def make() -> None:
        store = open_storage(settings)
        await store.start()
        await store.close()

    asyncio.run(make())
    return settings.database


def test_restore_without_a_terminal_needs_yes_and_output_touches_nothing_live(tmp_path):
    backups = tmp_path / "backups"
    database = _small_database(tmp_path)
    done = cli("backup", "--data-dir", str(database.parent), "--database", str(database),
               "--backup-dir", str(backups))
    assert done.returncode == 0, done.stderr
    args = ("--data-dir", str(database.parent), "--database", str(database),
            "--backup-dir", str(backups))
    before = database.stat()
    refused = cli("restore", *args)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr, refused.stderr
    assert "This replaces" in refused.stderr
    copy = tmp_path / "elsewhere" / "copy.db"
    copy.parent.mkdir()
    done = cli("restore", "--output", str(copy), *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == str(copy)
    assert sqlite3.connect(copy).execute("PRAGMA quick_check").fetchone() == ("ok",)
    after = database.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (database.parent / "quarantine").exists()
    again = cli("restore", "--output", str(copy), *args)
    assert again.returncode == 1 and "exists" in again.stderr


def test_a_bad_cron_is_refused_before_anything_is_created(tmp_path):
    data = tmp_path / "data"
    done = cli("run", "--data-dir", str(data), "--port", "0",
               "--backup-cron", "every five minutes", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "backup_cron" in done.stderr and "not a cron schedule" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data.exists()
    for bad in (("--full-check-cron", "61 * * * *"), ("--backup-interval", "0"),
                ("--probe-interval=-1s",)):
        done = cli("run", "--data-dir", str(data), "--port", "0", *bad, timeout=30)
        name = bad[0][2:].split("=")[0].replace("-", "_")
        assert done.returncode == 2 and name in done.stderr, done.stderr
        assert not data.exists()


class Installed(MeshdProcess):
    """A daemon as the unit starts it: `--config FILE` and nothing else, from its own cwd."""

    config_file: Path | None = None

    def command(self, extra_args=()):
        return [sys.executable, "-m", "meshd", "run", "--config", str(self.config_file),
                "--port", str(self.port), "--api-key", API_KEY, *extra_args]


def test_a_simulated_service_layout_is_found_from_any_directory(meshd_proc, tmp_path):
    root = meshd_proc().root
    state = root / "var-lib-meshd"
    etc = root / "etc-meshd"
    etc.mkdir()
    config_file = etc / "meshd.toml"
    config_file.write_text(f'data_dir = "{state}"\nbackup_dir = "{state / "backups"}"\n'
                           'log_format = "json"\naccess_log = false\n'
                           'backup_interval = "1h"\nquick_check_interval = "1h"\n')
    proc = Installed(root / "service-cwd")
    proc.root.mkdir()
    proc.config_file = config_file
    proc.start()
    try:
        proc.wait_healthy(20)
        register(proc, "installed-1")
        env = {"MESHD_SYSTEM_CONFIG": str(config_file)}
        third = tmp_path / "third"
        third.mkdir()
        shown = json.loads(cli("config", "--json", env=env, cwd=third).stdout)
        source = next(r for r in shown if r["setting"] == "config")
        assert source["source"] == f"system file {config_file}"
        status = cli("status", "--json", env=env, cwd=third)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["supervisor_pid"] == proc.pid
        listing = cli("backups", "--json", env=env, cwd=third)
        assert listing.returncode == 0 and json.loads(listing.stdout), listing.stderr
        done = cli("backup", "--json", env=env, cwd=third)
        assert done.returncode == 0, done.stderr
        copy = third / "restored.db"
        done = cli("restore", "--output", str(copy), env=env, cwd=third)
        assert done.returncode == 0, done.stderr
        assert "installed-1" in agent_names(copy)
        assert not (state / "quarantine").exists()
        assert proc.healthy()
        # Without the file (and no flags) nothing is found: the fallback is what did it.
        none = cli("status", "--json", env={"MESHD_SYSTEM_CONFIG": str(third / "absent.toml")},
                   cwd=third)
        assert none.returncode == 3
    finally:
        proc.kill_tree()


def test_status_shows_a_mode_change_and_the_end_of_a_restore_at_once(meshd_proc):
    proc = meshd_proc()
    proc.start(FAST)
    proc.wait_healthy(20)
    proc.wait_serving()
    assert meshd_cli(proc, "mode", "read-only").returncode == 0
    status = proc.status()  # the first status after the command, no polling
    assert (status["mode"], status["reason"]) == ("read-only", "set by the operator"), status
    assert meshd_cli(proc, "mode", "read-write").returncode == 0
    status = proc.status()
    assert (status["mode"], status["reason"]) == ("read-write", None), status
    assert status["last_check"] is None  # quick_check_interval is an hour

    done = meshd_cli(proc, "restore", "--yes", "--backup-dir", str(proc.backup_dir),
                     timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "completed"
    status = proc.status()
    assert (status["state"], status["mode"]) == ("serving", "read-write"), status
    assert status["last_check"]["ok"] and status["last_check"]["kind"] == "quick_check"
    # A replica restore rebuilds the data directory: refused beside a live daemon, by reason.
    refused = meshd_cli(proc, "restore", "--yes", "--from", f"file://{proc.root}/replica")
    assert refused.returncode == 1 and "stop meshd first" in refused.stderr, refused.stderr
    assert proc.healthy()
