"""The Database Corruption protocol with a real daemon: corrupt or truncate the live database
under write load and lose no acknowledged write; skip a corrupt backup, ignore a torn journal
tail, restore to a point in time; read-only mode and the operator commands."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import struct
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from json import loads as json_loads
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshd.store.backups import integrity
from tests.process.harness import (
    MeshdProcess,
    WriteLoad,
    api,
    async_poll,
    clean_env,
    meshd_cli,
)
from tests.process.harness import register_agents as register

pytestmark = pytest.mark.process

# Quick checks every second; no scheduled backup gets in the way of a test.
FAST = ("--access-log", "false", "--quick-check-interval", "1s", "--backup-interval", "1h")
ALL_FILES = frozenset({"mesh.db", "mesh.db-wal", "mesh.db-shm"})
STATES = ["detected", "recorded", "stopped", "restored", "verified", "read_only", "self_tested",
          "read_write", "done"]


# -- helpers ---------------------------------------------------------------------------------

def overwrite_middle(path: Path) -> None:
    """Random bytes over the middle half of the file: pages the WAL holds no copy of."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 4)
        fh.write(os.urandom(size // 2))
        fh.flush()
        os.fsync(fh.fileno())


def checkpoint(path: Path) -> None:
    """Copy the WAL into the main file (another connection may do that at any time). In WAL
    mode damage is only visible in pages without a newer copy in the WAL: after a checkpoint
    and a few more commits (the WAL starts over) most pages live only in the main file."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


async def agent_names(proc: MeshdProcess) -> set[str]:
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/api/agents")
    assert status == 200, body
    return {agent["name"] for agent in body}


async def corruption_events(session: aiohttp.ClientSession, proc: MeshdProcess
                            ) -> list[dict[str, Any]] | None:
    """The db_corruption events, or None while the API does not answer (restore window)."""
    try:
        status, body = await api(session, proc, "GET", "/api/catastrophe")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    if status != 200:
        return None
    return [e for e in body if e["event_type"] == "db_corruption"]


async def wait_resolved(proc: MeshdProcess, count: int = 1, timeout: float = 25
                        ) -> list[dict[str, Any]]:
    """Poll GET /api/catastrophe until `count` db_corruption events are resolved."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async def resolved() -> list[dict[str, Any]] | None:
            events = await corruption_events(session, proc)
            done = [e for e in events or [] if e["status"] == "resolved"]
            return done if len(done) >= count else None

        return await async_poll(resolved, timeout, f"{count} resolved db_corruption event(s)",
                                interval=0.1)


class ReadyzWatch:
    """Polls GET /readyz fast and keeps each change of (status, mode), with its time."""

    def __init__(self, proc: MeshdProcess) -> None:
        self.proc = proc
        self.seen: list[tuple[float, int | str, str | None]] = []
        self.stop = asyncio.Event()

    def add(self, status: int | str, mode: str | None) -> None:
        if not self.seen or self.seen[-1][1:] != (status, mode):
            self.seen.append((time.monotonic(), status, mode))

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self.stop.is_set():
                try:
                    async with session.get(self.proc.url + "/readyz") as resp:
                        body = await resp.json(content_type=None)
                        self.add(resp.status, body.get("mode"))
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.add(type(exc).__name__, None)
                await asyncio.sleep(0.01)

    def first(self, status: int | str, mode: str | None, after: float = 0.0) -> float | None:
        return next((t for t, s, m in self.seen if t >= after and (s, m) == (status, mode)),
                    None)


def quarantined_names(proc: MeshdProcess) -> set[str]:
    """Names of the files moved to data/quarantine/, without their time-stamp prefix."""
    return {p.name.split("-", 1)[1] for p in (proc.data_dir / "quarantine").iterdir()}


def run_files(proc: MeshdProcess) -> list[dict[str, Any]]:
    """The protocol runs the supervisor persisted under data/protocols/, oldest first."""
    runs = [json_loads(p.read_bytes()) for p in (proc.data_dir / "protocols").glob("*.json")]
    return sorted(runs, key=lambda r: r["started_at"])


def stored_run(proc: MeshdProcess, event_id: str) -> tuple[dict[str, Any], list[dict]]:
    """The protocol_runs row of an event and its protocol_steps, read from the (stopped)
    daemon's database file."""
    conn = sqlite3.connect(f"file:{proc.database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        run = conn.execute("SELECT * FROM protocol_runs WHERE event_id = ?",
                           (event_id,)).fetchone()
        assert run is not None, f"no protocol_runs row for event {event_id}"
        steps = conn.execute("SELECT * FROM protocol_steps WHERE run_id = ? ORDER BY seq",
                             (run["id"],)).fetchall()
        return dict(run), [dict(s) for s in steps]
    finally:
        conn.close()


def states_of(steps: list[dict[str, Any]]) -> list[str]:
    """The states a run went through: each step's state, then the last step's next state."""
    return [s["state"] for s in steps] + ([steps[-1]["next_state"]] if steps else [])


def protocol_seconds(proc: MeshdProcess, run_id: str) -> float:
    """From protocol.started to the transition into read_write, by the daemon's log."""
    moments = {}
    for event in proc.log_events():
        if event.get("run_id") != run_id:
            continue
        if event["event"] == "protocol.started" or event.get("to_state") == "read_write":
            moments[event["event"]] = datetime.fromisoformat(event["timestamp"])
    return round((moments["protocol.transition"] - moments["protocol.started"])
                 .total_seconds(), 3)


def stop(proc: MeshdProcess) -> None:
    proc.signal(signal.SIGTERM)
    code = proc.wait_exit(20)
    assert code == 0, f"exit code {code}:\n{proc.log_tail()}"


async def start(proc: MeshdProcess, *extra: str) -> None:
    proc.start((*FAST, *extra))
    await asyncio.to_thread(proc.wait_healthy, 20)


async def corrupt_under_load(proc: MeshdProcess, damage: Callable[[Path], None],
                             *, before: int = 400,
                             meanwhile: Callable[[WriteLoad], Awaitable[None]] | None = None,
                             quarantine: frozenset[str] = ALL_FILES) -> dict[str, Any]:
    """Write under load, damage the live file, and wait for the protocol to finish and for
    writes to be acknowledged again. Checks every guarantee; returns timings and the run.

    `meanwhile` runs under the load before the damage (e.g. takes and corrupts a backup);
    `quarantine` names the files that must reach data/quarantine."""
    await start(proc)
    load = WriteLoad(proc, prefix=f"c-{uuid.uuid4().hex[:6]}")
    watch = ReadyzWatch(proc)
    tasks = [asyncio.create_task(load.run(writers=8)), asyncio.create_task(watch.run())]
    try:
        await async_poll(lambda: len(load.acked) >= before, 20,
                         f"{before} acknowledged writes (failures: {load.failures[:3]})")
        if meanwhile is not None:
            await meanwhile(load)
        before = len(load.acked)
        checkpoint(proc.database)
        await async_poll(lambda: len(load.acked) >= before + 100, 20,
                         "100 writes after the checkpoint")
        damaged = time.monotonic()
        damage(proc.database)
        events = await wait_resolved(proc)
        resolved = time.monotonic()
        acked_then = len(load.acked)
        await async_poll(lambda: len(load.acked) >= acked_then + 50, 15,
                         "writes acknowledged again after the restore")
    finally:
        load.stop.set()
        watch.stop.set()
        await asyncio.gather(*tasks)

    # Every acknowledged write is there; the failures are the restore window's 503s and the
    # requests in flight when the worker was killed.
    missing = set(load.acked) - await agent_names(proc)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged writes lost"
    odd = [f for f in load.failures if isinstance(f[2], int) and f[2] != 503]
    assert not odd, f"failures other than 503 or a dropped connection: {odd[:5]}"

    # It came back read-only, then read-write.
    read_only = watch.first(503, "read-only", after=damaged)
    assert read_only is not None, f"never saw /readyz 503 read-only: {watch.seen}"
    read_write = watch.first(200, "read-write", after=read_only)
    assert read_write is not None, f"never read-write after read-only: {watch.seen}"

    # The event tells the story; the run walked every state in order.
    (event,) = events
    assert event["severity"] == "critical"
    assert event["recovery_protocol"] == "database_corruption"
    assert event["resolved_at"] and event["resolution_notes"], event
    (run,) = [r for r in run_files(proc) if r["event_id"] == event["id"]]
    assert run["outcome"] == "completed", run
    assert states_of(run["steps"]) == STATES, run["steps"]
    assert all(s["outcome"] == "ok" for s in run["steps"]), run["steps"]

    # The worker is killed, not drained: its WAL is not checkpointed into the corrupt file,
    # and all three files go to quarantine as they were.
    quarantined = quarantined_names(proc)
    assert quarantine <= quarantined <= ALL_FILES, quarantined

    await asyncio.to_thread(stop, proc)
    row, steps = stored_run(proc, event["id"])
    assert row["outcome"] == "completed" and row["state"] == "done", row
    assert states_of(steps) == STATES, steps
    assert "restored" in steps[STATES.index("stopped")]["detail"], steps
    events_logged = [e["event"] for e in proc.log_events()]
    assert "restore.completed" in events_logged, proc.log_tail()

    return {"detected_to_read_write_s": protocol_seconds(proc, run["id"]),
            "damaged_to_read_only_s": round(read_only - damaged, 2),
            "damaged_to_read_write_s": round(read_write - damaged, 2),
            "damaged_to_resolved_s": round(resolved - damaged, 2),
            "run": run, "acked": len(load.acked)}


# -- corruption under write load -------------------------------------------------------------

async def test_overwritten_pages_under_write_load_restore_and_lose_nothing(meshd_proc):
    proc = meshd_proc()
    timings = await corrupt_under_load(proc, overwrite_middle)
    print("timings", {k: v for k, v in timings.items() if k != "run"})
    assert timings["damaged_to_read_write_s"] < 15, timings


# SQLite deletes the -wal of a zero-byte database file when a connection next opens it:
# after a truncation to 0 only mesh.db is sure to reach quarantine (the journal has it all).
@pytest.mark.parametrize(("keep", "quarantine"), [(0.5, ALL_FILES),
                                                  (0.0, frozenset({"mesh.db"}))],
                         ids=["to-half", "to-zero"])
async def test_truncated_database_under_write_load_restores_and_loses_nothing(meshd_proc, keep,
                                                                              quarantine):
    proc = meshd_proc()
    timings = await corrupt_under_load(
        proc, lambda path: os.truncate(path, int(path.stat().st_size * keep)),
        quarantine=quarantine)
    print("timings", {k: v for k, v in timings.items() if k != "run"})
    assert timings["damaged_to_read_write_s"] < 15, timings


async def test_meshd_check_reports_a_database_truncated_to_zero(meshd_proc):
    proc = meshd_proc()
    # No scheduled check of its own: on a loaded machine it would find the damage (and restore)
    # before the operator's `meshd check` starts, which is not what this test is about.
    await start(proc, "--quick-check-interval", "1h")
    names = [f"zero-{i}" for i in range(200)]
    async with aiohttp.ClientSession() as session:
        await register(session, proc, names[:150])
        checkpoint(proc.database)
        await register(session, proc, names[150:])
    os.truncate(proc.database, 0)

    done = await asyncio.to_thread(meshd_cli, proc, "check")

    assert done.returncode == 1, (done.stdout, done.stderr)
    await wait_resolved(proc)
    assert set(names) <= await agent_names(proc)


# -- backups and the journal -----------------------------------------------------------------

def corrupt_bytes(path: Path) -> None:
    """Flip 64 bytes in the middle: same size, wrong SHA-256 (and likely a bad page)."""
    with path.open("r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        chunk = fh.read(64)
        fh.seek(path.stat().st_size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))


async def test_a_corrupt_newest_backup_is_skipped_for_the_previous_verified_one(meshd_proc):
    proc = meshd_proc()
    taken: dict[str, Any] = {}

    async def backup_then_corrupt_it(load: WriteLoad) -> None:
        done = await asyncio.to_thread(meshd_cli, proc, "backup")
        assert done.returncode == 0, done.stderr
        taken.update(json_loads(done.stdout))
        assert taken["integrity"] == "ok" and taken["reason"] == "operator", taken
        more = len(load.acked) + 100  # writes the corrupt backup held: only the journal now
        await async_poll(lambda: len(load.acked) >= more, 20, "100 writes after the backup")
        corrupt_bytes(proc.backup_dir / taken["file"])

    timings = await corrupt_under_load(proc, overwrite_middle, meanwhile=backup_then_corrupt_it)

    restore = timings["run"]["context"]["restore"]
    assert restore["backup"] != taken["file"], restore
    assert restore["backup"].endswith("-s0.db"), restore  # the baseline, before any write
    assert len(restore["skipped"]) == 1 and taken["file"] in restore["skipped"][0], restore
    assert "SHA-256" in restore["skipped"][0], restore
    step = next(s for s in timings["run"]["steps"] if s["state"] == "stopped")
    assert f"restored {restore['backup']}" in step["detail"], step
    assert "skipped 1 unverifiable backup" in step["detail"], step
    skipped = [e for e in proc.log_events() if e["event"] == "restore.backup_skipped"]
    assert [e["file"] for e in skipped] == [taken["file"]], skipped
    assert restore["replayed"] > 0, restore


def newest_segment(proc: MeshdProcess) -> Path:
    segments = sorted((proc.data_dir / "journal").glob("*.seg"))
    assert segments, "no journal segment"
    return segments[-1]


async def test_a_torn_journal_tail_is_cut_and_ignored(meshd_proc):
    proc = meshd_proc()
    await start(proc)
    first = [f"torn-a-{i}" for i in range(30)]
    async with aiohttp.ClientSession() as session:
        await register(session, proc, first)
    await asyncio.to_thread(stop, proc)

    segment = newest_segment(proc)
    size = segment.stat().st_size
    # A frame header announcing 500 bytes, and 20 of them: a write torn by a crash.
    garbage = struct.pack("<II", 500, 0x12345678) + os.urandom(20)
    with segment.open("ab") as fh:
        fh.write(garbage)

    await start(proc)
    cut = await asyncio.to_thread(proc.wait_log_event, "journal.torn_tail_cut")
    assert cut["bytes"] == len(garbage), cut
    assert segment.stat().st_size == size, "the torn tail is still there"
    assert set(first) <= await agent_names(proc)

    # Appends continue from the clean end: they survive another restart.
    second = [f"torn-b-{i}" for i in range(30)]
    async with aiohttp.ClientSession() as session:
        await register(session, proc, second)
    await asyncio.to_thread(stop, proc)
    await start(proc)
    assert set(first + second) <= await agent_names(proc)
    assert not [e for e in proc.log_events() if e["event"] == "journal.torn_tail_cut"]
    await asyncio.to_thread(stop, proc)


async def test_point_in_time_restore_keeps_what_came_before_and_starts_a_new_epoch(meshd_proc):
    proc = meshd_proc()
    await start(proc)
    before = [f"pitr-a-{i}" for i in range(20)]
    after = [f"pitr-b-{i}" for i in range(20)]
    async with aiohttp.ClientSession() as session:
        await register(session, proc, before)
        moment = datetime.now(UTC)
        # Journal times have 1-second resolution: B must be journaled in a later second.
        await async_poll(lambda: datetime.now(UTC).replace(microsecond=0)
                         > moment.replace(microsecond=0), 3, "the next second")
        await register(session, proc, after)

    done = await asyncio.to_thread(meshd_cli, proc, "restore", "--yes", "--to-time",
                                   moment.isoformat())
    assert done.returncode == 0, (done.stdout, done.stderr)
    run = json_loads(done.stdout)
    assert run["outcome"] == "completed" and run["state"] == "done", run
    assert states_of(run["steps"]) == STATES, run["steps"]

    names = await agent_names(proc)
    assert set(before) <= names
    assert not set(after) & names, sorted(set(after) & names)
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/readyz")
        assert (status, body["mode"]) == (200, "read-write"), body
        later = [f"pitr-c-{i}" for i in range(20)]
        await register(session, proc, later)
        status, events = await api(session, proc, "GET", "/api/catastrophe")
    assert any(e["title"] == "Database restore (operator)" for e in events), events
    epochs = {seg.name.split("-")[0] for seg in (proc.data_dir / "journal").glob("*.seg")}
    assert epochs == {"0001", "0002"}, epochs

    await asyncio.to_thread(stop, proc)
    await start(proc)
    names = await agent_names(proc)
    assert set(before + later) <= names
    assert not set(after) & names, sorted(set(after) & names)
    await asyncio.to_thread(stop, proc)


# -- modes -----------------------------------------------------------------------------------

async def raw(session: aiohttp.ClientSession, proc: MeshdProcess, method: str, path: str,
              json: Any = None) -> tuple[int, dict[str, str], Any]:
    async with session.request(method, proc.url + path, json=json,
                               headers=proc.headers) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def test_read_only_mode_refuses_writes_with_503_and_serves_reads(meshd_proc):
    proc = meshd_proc()
    await start(proc)
    async with aiohttp.ClientSession() as session:
        await register(session, proc, ["ro-before"])

        done = await asyncio.to_thread(meshd_cli, proc, "mode", "read-only")
        assert done.returncode == 0, done.stderr
        assert json_loads(done.stdout) == {"mode": "read-only"}

        status, headers, body = await raw(session, proc, "POST", "/api/agents/register",
                                          {"name": "ro-refused"})
        assert status == 503, body
        assert int(headers["Retry-After"]) > 0, headers
        assert "read-only" in body["error"], body
        status, _, agents = await raw(session, proc, "GET", "/api/agents")
        assert status == 200 and {a["name"] for a in agents} == {"ro-before"}, agents
        status, _, body = await raw(session, proc, "GET", "/health")
        assert status == 200 and body["mode"] == "read-only", body
        status, headers, body = await raw(session, proc, "GET", "/readyz")
        assert status == 503 and body["mode"] == "read-only", body
        assert "Retry-After" in headers, headers

        done = await asyncio.to_thread(meshd_cli, proc, "mode", "read-write")
        assert done.returncode == 0, done.stderr
        await register(session, proc, ["ro-after"])
        status, _, body = await raw(session, proc, "GET", "/readyz")
        assert status == 200 and body["mode"] == "read-write", body
    assert {"ro-before", "ro-after"} <= await agent_names(proc)
    assert "ro-refused" not in await agent_names(proc)


async def test_without_auto_read_write_the_restore_waits_for_the_operator(meshd_proc):
    proc = meshd_proc()
    await start(proc, "--auto-read-write", "false")
    load = WriteLoad(proc, prefix="op")
    async with load.running(writers=8):
        await async_poll(lambda: len(load.acked) >= 300, 20, "300 acknowledged writes")
        checkpoint(proc.database)
        await async_poll(lambda: len(load.acked) >= 400, 20, "100 more writes")
    overwrite_middle(proc.database)

    await asyncio.to_thread(proc.wait_log_event, "protocol.waiting_for_operator", 20)
    status = await asyncio.to_thread(proc.status)
    (run,) = status["protocol_runs"]
    assert (run["state"], run["outcome"]) == ("self_tested", "running"), run
    async with aiohttp.ClientSession() as session:
        code, headers, body = await raw(session, proc, "POST", "/api/agents/register",
                                        {"name": "op-refused"})
        assert code == 503 and "read-only" in body["error"], body
        assert "Retry-After" in headers
        code, _, body = await raw(session, proc, "GET", "/readyz")
        assert code == 503 and body["mode"] == "read-only", body

        done = await asyncio.to_thread(meshd_cli, proc, "mode", "read-write")
        assert done.returncode == 0, done.stderr
        await async_poll(lambda: not proc.status()["protocol_runs"], 10,
                         "the protocol run to complete")
        await register(session, proc, ["op-after"])
    (event,) = await wait_resolved(proc)
    assert set(load.acked) | {"op-after"} <= await agent_names(proc)
    (stored,) = [r for r in run_files(proc) if r["event_id"] == event["id"]]
    assert stored["outcome"] == "completed" and states_of(stored["steps"]) == STATES


# -- operator commands -----------------------------------------------------------------------

async def test_operator_commands_work_on_the_files_without_a_daemon(meshd_proc):
    proc = meshd_proc()
    offline = ("--backup-dir", str(proc.backup_dir))

    # Nothing there yet: clear refusals.
    done = meshd_cli(proc, "backups", *offline)
    assert done.returncode == 0 and json_loads(done.stdout) == [], done
    done = meshd_cli(proc, "restore", "--yes", *offline)
    assert done.returncode != 0 and "no verified backup" in done.stderr, done
    done = meshd_cli(proc, "check", *offline)
    assert done.returncode != 0 and "no database" in done.stderr, done
    done = meshd_cli(proc, "backup", *offline)
    assert done.returncode != 0 and "backup of" in done.stderr, done
    assert "Traceback" not in done.stderr, done.stderr
    done = meshd_cli(proc, "mode", "read-only")
    assert done.returncode == 3 and "no running daemon" in done.stderr, done

    await start(proc)
    names = [f"off-{i}" for i in range(20)]
    async with aiohttp.ClientSession() as session:
        await register(session, proc, names)
    await asyncio.to_thread(stop, proc)

    listing = json_loads(meshd_cli(proc, "backups", *offline).stdout)
    assert [(b["verified"], b["journal_seq"]) for b in listing] == [(True, 0)], listing
    for full in ((), ("--full",)):
        done = meshd_cli(proc, "check", *full, *offline)
        assert done.returncode == 0 and json_loads(done.stdout)["ok"], done
    done = meshd_cli(proc, "backup", *offline)
    assert done.returncode == 0, done.stderr
    newest = json_loads(done.stdout)
    assert newest["journal_seq"] > 0 and newest["integrity"] == "ok", newest
    listing = json_loads(meshd_cli(proc, "backups", *offline).stdout)
    assert [b["file"] for b in listing][0] == newest["file"] and len(listing) == 2, listing

    done = meshd_cli(proc, "restore", "no-such-backup.db", *offline)
    assert done.returncode != 0 and "no backup named" in done.stderr, done

    overwrite_middle(proc.database)
    done = meshd_cli(proc, "check", *offline)
    assert done.returncode == 1 and not json_loads(done.stdout)["ok"], done
    done = meshd_cli(proc, "restore", "--yes", *offline)
    assert done.returncode == 0, done.stderr
    report = json_loads(done.stdout)
    assert report["backup"] == newest["file"] and report["quarantined"], report
    assert "mesh.db" in quarantined_names(proc)
    done = meshd_cli(proc, "check", "--full", *offline)
    assert done.returncode == 0, done

    await start(proc)
    assert set(names) <= await agent_names(proc)
    await asyncio.to_thread(stop, proc)


def test_offline_commands_print_only_json_on_stdout(meshd_proc):
    proc = meshd_proc()
    proc.data_dir.mkdir(parents=True)
    conn = sqlite3.connect(proc.database)
    conn.execute("CREATE TABLE meshd_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meshd_meta VALUES ('journal_seq', '0'), ('journal_epoch', '1')")
    conn.commit()
    conn.close()
    done = meshd_cli(proc, "backup", "--backup-dir", str(proc.backup_dir))
    assert done.returncode == 0, done.stderr
    assert json_loads(done.stdout)["integrity"] == "ok"


def backup_files(directory: Path) -> dict[str, bytes]:
    """Backups and manifests by name (temporary names left out)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


async def test_an_unwritable_backup_dir_fails_the_backup_clearly_and_keeps_serving(meshd_proc):
    proc = meshd_proc()
    # Tests run as root, so permissions cannot make a directory unwritable: the backup dir is
    # a symlink that is later pointed below a regular file, where nothing can be created.
    real = proc.root / "real-backups"
    real.mkdir()
    proc.backup_dir.symlink_to(real)
    await start(proc)
    async with aiohttp.ClientSession() as session:
        await register(session, proc, ["bk-1"])
    done = await asyncio.to_thread(meshd_cli, proc, "backup")
    assert done.returncode == 0, done.stderr
    kept = backup_files(real)
    assert len(kept) == 4, sorted(kept)  # baseline + operator backup, each with a manifest

    (proc.root / "afile").write_text("not a directory\n")
    link = proc.root / "link.tmp"
    link.symlink_to(proc.root / "afile" / "backups")
    os.replace(link, proc.backup_dir)

    done = await asyncio.to_thread(meshd_cli, proc, "backup")
    assert done.returncode != 0, done.stdout
    assert "backup" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert backup_files(real) == kept  # nothing deleted or changed

    async with aiohttp.ClientSession() as session:
        await register(session, proc, ["bk-2"])
        status, _, body = await raw(session, proc, "GET", "/health")
        assert status == 200, body

        async def failed_event() -> bool:
            status, events = await api(session, proc, "GET", "/api/catastrophe")
            return status == 200 and any(e["event_type"] == "backup_failed" for e in events)

        await async_poll(failed_event, 10, "a backup_failed catastrophe event")

    proc.backup_dir.unlink()
    proc.backup_dir.symlink_to(real)
    done = await asyncio.to_thread(meshd_cli, proc, "backup")
    assert done.returncode == 0, done.stderr
    assert len(backup_files(real)) == 6
    assert {"bk-1", "bk-2"} <= await agent_names(proc)


async def test_an_unwritable_backup_dir_at_start_serves_read_only_until_a_baseline_exists(
        meshd_proc):
    """Without a baseline backup the journal cannot restore anything, so writes wait (503)
    while reads work; once the directory can be written, writes resume by themselves."""
    proc = meshd_proc()
    blocker = proc.root / "afile"
    blocker.write_text("a regular file: nothing can be created below it")
    proc.start((*FAST, "--backup-dir", str(blocker / "backups")),
               env=clean_env({"MESHD_BASELINE_RETRY": "0.2"}))
    await asyncio.to_thread(proc.wait_healthy)
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "POST", "/api/agents/register", {"name": "x"})
        assert status == 503 and "baseline backup" in body["error"]
        assert (await api(session, proc, "GET", "/api/agents"))[0] == 200
        status, events = await api(session, proc, "GET", "/api/catastrophe")
        assert [e["event_type"] for e in events] == ["backup_failed"]
        blocker.unlink()

        async def writable():
            return (await api(session, proc, "POST", "/api/agents/register",
                              {"name": "x"}))[0] == 200

        await async_poll(writable, 15, "writes to resume once a baseline backup is written")
        _, events = await api(session, proc, "GET", "/api/catastrophe")
        assert events[0]["status"] == "resolved"


async def test_a_full_disk_refuses_writes_with_507_and_resumes_when_space_returns(meshd_proc):
    """The data dir on a tiny tmpfs, filled up: writes get 507 and nothing acknowledged is
    lost or corrupted, a disk_full event is recorded, and writes resume once space returns."""
    proc = meshd_proc()
    mount_point = proc.root / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        data_dir = mount_point / "data"
        proc.start((*FAST, "--data-dir", str(data_dir)))
        await asyncio.to_thread(proc.wait_healthy)
        filler = mount_point / "filler"
        acked: list[str] = []
        async with aiohttp.ClientSession() as session:
            status = 200
            with filler.open("wb") as fh:  # take all but a little of the space
                free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
                fh.write(b"\0" * max(0, free - 200_000))
            for i in range(5000):
                name = f"full-{i}-" + "x" * 200
                status, body = await api(session, proc, "POST", "/api/agents/register",
                                         {"name": name})
                if status == 200:
                    acked.append(name)
                    continue
                break
            assert status == 507, (status, body)
            assert "disk refused the write" in body["error"], body
            filler.unlink()  # space returns

            async def writable():
                return (await api(session, proc, "POST", "/api/agents/register",
                                  {"name": "after-the-disk-was-freed"}))[0] == 200

            await async_poll(writable, 15, "writes to resume once space returns")
            status, agents = await api(session, proc, "GET", "/api/agents")
            names = {a["name"] for a in agents}
            assert set(acked) <= names, f"{len(set(acked) - names)} acknowledged writes lost"

            async def event_resolved():
                _, events = await api(session, proc, "GET", "/api/catastrophe")
                full = [e for e in events if e["event_type"] == "disk_full"]
                return full and full[0]["status"] == "resolved" and full[0]

            event = await async_poll(event_resolved, 15, "the disk_full event, resolved")
            assert event["severity"] == "critical"
            status, check = await api(session, proc, "GET", "/readyz")
            assert status == 200
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait_exit, 15) == 0
        assert integrity(data_dir / "mesh.db") == []  # nothing corrupted
    finally:
        proc.kill_tree()
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
