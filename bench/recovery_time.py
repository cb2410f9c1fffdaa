"""Corruption to read-write again, with a real `meshd run`: grow the database to ~100 MB, take a
backup, write through the API for 60 s (so the journal after that backup holds 60 s of writes),
overwrite the middle half of the live mesh.db with random bytes, and time the Database
Corruption protocol: detection, read-only, read-write. Then check that every write that got a
2xx is in the database.

Run: .venv/bin/python bench/recovery_time.py [--db-mb 100] [--journal-seconds 60] [--clients 4]

Targets (issue 5), measured from detection (the protocol's start: the first failed quick_check,
run every 2 s here, or a query that met SQLITE_CORRUPT): read-only under 5 s, read-write under
15 s. The times come from the daemon's JSON log (`protocol.*` events carry ISO timestamps with
microseconds); /readyz is also polled every 50 ms to see the modes from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from _common import clean_env, free_port, meshd_command

API_KEY = "k"
MB = 1_000_000
MIB = 1 << 20
FILE_DECODED_MAX = 24 * MIB  # under the 25 MiB default max_file_size
READYZ_EVERY = 0.05
RECOVERY_DEADLINE = 180.0
STATES = ["detected", "recorded", "stopped", "restored", "verified", "read_only",
          "self_tested", "read_write", "done"]
TARGET_READ_ONLY = 5.0
TARGET_READ_WRITE = 15.0


def ts(text: str) -> float:
    """Epoch seconds of an ISO timestamp from the log."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def overwrite_middle(path: Path) -> int:
    """Random bytes over the middle half of the file (in WAL mode, pages with a newer copy in
    the -wal would hide small overwrites; the middle half of a 100 MB file is file data that
    lives only in the main file)."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 4)
        remaining = size // 2
        while remaining:
            chunk = min(remaining, 4 * MIB)
            fh.write(os.urandom(chunk))
            remaining -= chunk
        fh.flush()
        os.fsync(fh.fileno())
    return size // 2


# -- HTTP ------------------------------------------------------------------------------------

class Api:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float = 10) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers={"X-API-Key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            data = await resp.read()
            try:
                return resp.status, json.loads(data) if data else None
            except ValueError:
                return resp.status, data[:200]


async def wait_healthy(api: Api, daemon: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"meshd exited with {daemon.returncode} before it was healthy")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            status, _ = await api.call("GET", "/health", timeout=2)
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"meshd was not healthy within {timeout} s")


@dataclass
class Load:
    """Clients registering agents and sending messages until stopped; what got a 2xx."""

    api: Api
    senders: list[str]
    agents: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    ok_times: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1

    async def client(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                if i % 2:
                    name = f"load-{n}-{i}"
                    status, body = await self.api.call("POST", "/api/agents/register",
                                                       {"name": name})
                    if 200 <= status < 300:
                        self.agents.append(name)
                else:
                    sender = self.senders[n % len(self.senders)]
                    to = self.senders[(n + 1) % len(self.senders)]
                    status, body = await self.api.call(
                        "POST", "/api/messages",
                        {"from": sender, "to": to, "content": f"message {n}-{i}"})
                    if 200 <= status < 300:
                        self.messages.append(body["messageId"])
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.count(type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            self.count(str(status))
            if 200 <= status < 300:
                self.ok_times.append(time.time())
            else:
                await asyncio.sleep(0.1)  # a client that backs off on 503, not a busy loop

    async def run(self, clients: int) -> None:
        await asyncio.gather(*(self.client(n) for n in range(clients)))

    @property
    def acked(self) -> int:
        return len(self.agents) + len(self.messages)


class ReadyzWatch:
    """Polls GET /readyz every 50 ms; keeps each change of (status, mode) with its wall time."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: list[tuple[float, int | str, str | None]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = await self.api.call("GET", "/readyz", timeout=2)
                mode = body.get("mode") if isinstance(body, dict) else None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, mode = type(exc).__name__, None
            now = time.time()
            if not self.seen or self.seen[-1][1:] != (status, mode):
                self.seen.append((now, status, mode))
            await asyncio.sleep(READYZ_EVERY)

    def first(self, status: int | str, mode: str | None, after: float) -> float | None:
        return next((t for t, s, m in self.seen if t >= after and (s, m) == (status, mode)),
                    None)


# -- the daemon's log ------------------------------------------------------------------------

def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def first_event(events: list[dict[str, Any]], name: str, after: float = 0.0,
                **match: Any) -> dict[str, Any] | None:
    for event in events:
        if event.get("event") != name or "timestamp" not in event:
            continue
        if ts(event["timestamp"]) < after:
            continue
        if all(event.get(k) == v for k, v in match.items()):
            return event
    return None


# -- the bench -------------------------------------------------------------------------------

def meshd_cli(data_dir: Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run([*meshd_command(), *args, "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=timeout, env=clean_env(),
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"meshd {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line[:1] in "{[")
    return json.loads("\n".join(lines[start:]))


async def grow(api: Api, db_mb: float) -> tuple[str, int, float]:
    """Upload random files until the stored base64 is about `db_mb`; (agent, files, seconds)."""
    status, body = await api.call("POST", "/api/agents/register", {"name": "bench-files"})
    assert status == 200, body
    agent = body["agentId"]
    decoded_total = db_mb * MB * 3 / 4
    count = max(1, math.ceil(decoded_total / FILE_DECODED_MAX))
    size = int(decoded_total / count)
    rng = random.Random(0)
    started = time.perf_counter()
    for n in range(count):
        data = base64.b64encode(rng.randbytes(size)).decode()
        status, body = await api.call("POST", "/api/files/upload", {
            "agentId": agent, "filename": f"bench-{n}.bin", "fileData": data}, timeout=300)
        assert status == 200, (status, body)
        print(f"  uploaded file {n + 1}/{count}: {size / MIB:.1f} MiB "
              f"({len(data) / MB:.1f} MB base64)", flush=True)
    return agent, count, time.perf_counter() - started


def logical_size(database: Path) -> int:
    """page_count x page_size, as a reader sees it (the -wal included)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        return count * conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


def wal_size(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def verify_writes(database: Path, load: Load) -> tuple[int, int, int]:
    """(agents missing, messages missing, files present) in the stopped daemon's database."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM agents")}
        ids = {r[0] for r in conn.execute("SELECT id FROM messages")}
        files = conn.execute("SELECT COUNT(*) FROM agent_files").fetchone()[0]
    finally:
        conn.close()
    return (len(set(load.agents) - names), len(set(load.messages) - ids), files)


def profile_restore(data_dir: Path, backup_dir: Path, scratch: Path) -> None:
    """Repeat the restore's steps one by one on the stopped daemon's backup and journal (in a
    scratch copy), timing each: where the restore and the new worker's start spend their time.
    The journal now also holds the writes made after the recovery, so slightly more."""
    from meshd import log as logging
    from meshd.store import backups
    from meshd.store import journal as jr
    from meshd.store import restore as restore_mod
    from meshd.store.sqlite import SqliteStorage, replay_journal

    logging.configure("json", "warning", process="bench")
    scratch.mkdir(parents=True, exist_ok=True)
    journal_dir = scratch / "journal"
    shutil.copytree(data_dir / "journal", journal_dir)
    rows: list[tuple[str, float]] = []

    def timed(label: str, fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        result = fn(*args)
        rows.append((label, time.perf_counter() - started))
        return result

    manifest, _ = restore_mod.choose_backup(backup_dir)
    timed("verify the backup (size, SHA-256, integrity_check)", backups.verify, manifest,
          backup_dir)
    target = scratch / "mesh.db"
    timed(f"copy the backup ({manifest.size / MB:.0f} MB)", shutil.copyfile,
          manifest.path(backup_dir), target)
    segments = jr.list_segments(journal_dir)
    total = sum(seg.path.stat().st_size for seg in segments)
    records = timed(f"read + parse the whole journal ({len(segments)} segments, "
                    f"{total / MB:.0f} MB)", lambda: list(jr.read_all(journal_dir,
                                                                       manifest.journal_epoch)))
    needed = sum(1 for r in records if r.seq > manifest.journal_seq)
    needed_bytes = sum(seg.path.stat().st_size for seg, nxt in
                       zip(segments, [*segments[1:], None], strict=True)
                       if nxt is None or nxt.first_seq > manifest.journal_seq + 1)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        started = time.perf_counter()
        replay_journal(conn, journal_dir, manifest.journal_epoch, manifest.journal_seq)
        apply_s = time.perf_counter() - started - rows[-1][1]
        rows.append((f"apply {needed} records (replay_journal minus the parse above)", apply_s))
        timed("checkpoint the restored file", conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    timed("integrity_check of the restored file (restore)", backups.integrity, target, True)
    timed("integrity_check again (the protocol's verify step)", backups.integrity, target, True)
    journal = jr.Journal(journal_dir, manifest.journal_epoch)
    timed("Journal.open at worker start (parses every segment)", journal.open)
    journal.close()

    async def open_store() -> None:
        storage = SqliteStorage(target, journal_dir)
        await storage.start()
        await storage.close()

    timed("SqliteStorage.start at worker start (Journal.open + replay check)",
          lambda: asyncio.run(open_store()))
    print()
    print(f"restore steps repeated offline ({len(records)} journal records of which {needed} "
          f"are after the backup's seq {manifest.journal_seq}; segments holding them: "
          f"{needed_bytes / MB:.0f} of {total / MB:.0f} MB)")
    for label, seconds in rows:
        print(f"  {seconds:7.3f} s  {label}")


def stop_daemon(daemon: subprocess.Popen) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(5)
        return None


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


async def bench(args: argparse.Namespace, root: Path) -> int:
    data_dir, backup_dir = root / "data", root / "backups"
    port = free_port()
    log_path = root / "meshd.log"
    command = [*meshd_command(), "run", "--port", str(port), "--data-dir", str(data_dir),
               "--backup-dir", str(backup_dir), "--api-key", API_KEY, "--log-format", "json",
               "--access-log", "false", "--quick-check-interval",
               f"{args.quick_check_interval:g}s", "--backup-interval", "1h",
               "--max-file-size", str(32 * MIB)]
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=root, env=clean_env(),
                                  start_new_session=True)
    database = data_dir / "mesh.db"
    code = 1
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, port)
            await wait_healthy(api, daemon)
            print(f"meshd pid {daemon.pid} on port {port}, data {data_dir}", flush=True)
            _agent, files, grow_s = await grow(api, args.db_mb)
            db_size = logical_size(database)
            print(f"database grown in {grow_s:.1f} s: {db_size / MB:.1f} MB of pages "
                  f"(mesh.db file {database.stat().st_size / MB:.1f} MB, -wal "
                  f"{wal_size(database) / MB:.1f} MB)", flush=True)
            senders = []
            for name in ("bench-a", "bench-b"):
                status, body = await api.call("POST", "/api/agents/register", {"name": name})
                assert status == 200, body
                senders.append(body["agentId"])
            load = Load(api, senders)
            watch = ReadyzWatch(api)
            tasks: list[asyncio.Task] = []

            def start_load() -> None:
                print(f"write load: {args.clients} clients", flush=True)
                tasks.extend([asyncio.create_task(load.run(args.clients)),
                              asyncio.create_task(watch.run())])

            try:
                if args.warmup_seconds > 0:
                    start_load()
                    await asyncio.sleep(args.warmup_seconds)
                acked_warmup = load.acked
                started = time.perf_counter()
                manifest = await asyncio.to_thread(meshd_cli, data_dir, "backup")
                backup_s = time.perf_counter() - started
                print(f"meshd backup: {manifest['file']} {manifest['size'] / MB:.1f} MB, "
                      f"journal seq {manifest['journal_seq']}, {manifest['seconds']} s in "
                      f"take_backup, {backup_s:.1f} s for the command"
                      + (f" ({acked_warmup} writes before it)" if acked_warmup else ""),
                      flush=True)
                if not tasks:
                    start_load()
                await asyncio.sleep(args.journal_seconds)
                acked_before = load.acked - acked_warmup
                file_size, wal_then = database.stat().st_size, wal_size(database)
                corrupted_at = time.time()  # the damage starts: times below count from here
                overwritten = await asyncio.to_thread(overwrite_middle, database)
                written_at = time.time()
                print(f"{acked_before} writes acknowledged ({acked_before / args.journal_seconds:.0f}"
                      f"/s); overwrote {overwritten / MB:.1f} MB in the middle of mesh.db "
                      f"({file_size / MB:.1f} MB; -wal {wal_then / MB:.1f} MB) in "
                      f"{written_at - corrupted_at:.2f} s", flush=True)
                deadline = time.monotonic() + RECOVERY_DEADLINE
                while True:
                    ro = watch.first(503, "read-only", corrupted_at)
                    if ro is not None and watch.first(200, "read-write", ro) is not None:
                        break
                    if daemon.poll() is not None:
                        raise SystemExit(f"meshd exited with {daemon.returncode}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"not read-write again within {RECOVERY_DEADLINE} s: "
                                         f"{watch.seen[-5:]}")
                    await asyncio.sleep(0.1)
                back_at = time.time()
                await asyncio.sleep(2.0)  # writes are acknowledged again
            finally:
                load.stop.set()
                watch.stop.set()
                await asyncio.gather(*tasks)
        acked_after_back = sum(1 for t in load.ok_times if t > back_at)
        code = stop_daemon(daemon)
        events = log_events(log_path)
        missing_agents, missing_messages, files_present = verify_writes(database, load)
        journal_bytes = du(data_dir / "journal")
        report(args, events, watch, corrupted_at, load, files, files_present, db_size,
               manifest, backup_s, missing_agents, missing_messages, acked_after_back,
               journal_bytes, code)
        if args.profile:
            await asyncio.to_thread(profile_restore, data_dir, backup_dir, root / "profile")
        return 0 if not (missing_agents or missing_messages) else 1
    finally:
        if daemon.poll() is None:
            stop_daemon(daemon)
        if args.keep:
            print(f"kept {root} (log: {log_path})")


def report(args: argparse.Namespace, events: list[dict[str, Any]], watch: ReadyzWatch,
           corrupted_at: float, load: Load, files: int, files_present: int, db_size: int,
           manifest: dict[str, Any], backup_s: float, missing_agents: int,
           missing_messages: int, acked_after_back: int, journal_bytes: int,
           exit_code: int | None) -> None:
    started = first_event(events, "protocol.started", corrupted_at - 1,
                          protocol="database_corruption")
    if started is None:
        raise SystemExit("no protocol.started event for database_corruption in the log")
    detected = ts(started["timestamp"])
    run_id = started["run_id"]
    # A worker query that met SQLITE_CORRUPT may have noticed before the quick_check.
    worker_seen = first_event(events, "store.corruption_detected", corrupted_at - 1)
    failed_check = next((e for e in events if e.get("event") == "check.completed"
                         and e.get("ok") is False and ts(e["timestamp"]) >= corrupted_at - 1),
                        None)
    transitions = {e["to_state"]: ts(e["timestamp"]) for e in events
                   if e.get("event") == "protocol.transition" and e.get("run_id") == run_id}
    details = {e["from_state"]: e.get("detail") for e in events
               if e.get("event") == "protocol.transition" and e.get("run_id") == run_id}
    read_only = transitions.get("read_only")
    read_write = transitions.get("read_write")
    restored = first_event(events, "restore.completed", corrupted_at - 1)
    replayed = first_event(events, "journal.replayed", corrupted_at - 1)
    opened = [e for e in events if e.get("event") == "store.opened"
              and ts(e["timestamp"]) >= corrupted_at - 1]
    ro_seen = watch.first(503, "read-only", corrupted_at)
    rw_seen = watch.first(200, "read-write", ro_seen) if ro_seen else None

    def since(moment: float | None, origin: float) -> float | None:
        return None if moment is None else moment - origin

    print()
    print(f"database {db_size / MB:.1f} MB ({files} files of base64 text); backup "
          f"{manifest['size'] / MB:.1f} MB at journal seq {manifest['journal_seq']} "
          f"(take_backup {manifest['seconds']} s, `meshd backup` {backup_s:.1f} s); journal dir "
          f"{journal_bytes / MB:.1f} MB")
    warmup = f"{args.warmup_seconds:g} s before the backup + " if args.warmup_seconds else ""
    print(f"write load: {args.clients} clients, {warmup}{args.journal_seconds:g} s after it, "
          "before the damage; "
          f"acknowledged {len(load.agents)} registrations + {len(load.messages)} messages; "
          f"responses {dict(sorted(load.statuses.items()))}")
    print()
    print("detection")
    print(f"  damage started -> protocol.started:      {fmt(detected - corrupted_at)}"
          f"   (quick_check every {args.quick_check_interval:g} s)")
    if failed_check is not None:
        print(f"  failed {failed_check.get('kind')}: took {failed_check.get('seconds')} s, "
              f"logged {fmt(ts(failed_check['timestamp']) - corrupted_at)} after the damage began")
    if worker_seen is not None:
        print(f"  worker met corruption in a query {fmt(ts(worker_seen['timestamp']) - corrupted_at)}"
              " after the damage")
    print()
    print("protocol steps (from the protocol.transition log events)")
    previous = detected
    for state in STATES[1:]:
        at = transitions.get(state)
        if at is None:
            continue
        step = STATES[STATES.index(state) - 1]
        detail = " ".join((details.get(step) or "").split())[:110]
        print(f"  {step:>12} -> {state:<12} {at - previous:6.2f} s  (+{at - detected:6.2f})  "
              f"{detail}")
        previous = at
    if restored is not None:
        print(f"  restore.completed: backup {restored.get('backup')}, replayed "
              f"{restored.get('replayed')} records in {restored.get('seconds')} s")
        if replayed is not None and "stopped" in transitions:
            print(f"    stopped -> journal.replayed (verify backup, copy, read journal, apply) "
                  f"{ts(replayed['timestamp']) - transitions['stopped']:.2f} s; -> "
                  f"restore.completed (checkpoint, integrity_check, fsync, rename) "
                  f"{ts(restored['timestamp']) - ts(replayed['timestamp']):.2f} s")
    spawned = first_event(events, "worker.started", corrupted_at - 1)
    serving = first_event(events, "worker.serving", corrupted_at - 1)
    if spawned is not None and opened and serving is not None:
        at = ts(spawned["timestamp"])
        print(f"  new worker: spawned -> store.opened {ts(opened[0]['timestamp']) - at:.2f} s "
              f"(imports, journal open, replay of {opened[0].get('replayed')} records) -> "
              f"serving {ts(serving['timestamp']) - at:.2f} s")
    print()
    rows = [
        ("detection -> read-only (log)", since(read_only, detected), TARGET_READ_ONLY),
        ("detection -> read-write (log)", since(read_write, detected), TARGET_READ_WRITE),
        ("detection -> /readyz 503 read-only", since(ro_seen, detected), TARGET_READ_ONLY),
        ("detection -> /readyz 200 read-write", since(rw_seen, detected), TARGET_READ_WRITE),
        ("damage -> read-only (log)", since(read_only, corrupted_at), None),
        ("damage -> read-write (log)", since(read_write, corrupted_at), None),
    ]
    print(f"load average (1, 5, 15 min) at the end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'':<40}{'measured':>10}{'target':>10}")
    for label, value, target in rows:
        verdict = ""
        if target is not None and value is not None:
            verdict = "PASS" if value < target else "MISS"
        print(f"{label:<40}{fmt(value):>10}{(f'< {target:g} s' if target else ''):>10}  "
              f"{verdict}")
    records = (replayed or {}).get("records", (restored or {}).get("replayed"))
    print(f"{'journal records replayed':<40}{records!s:>10}")
    print()
    acked = len(load.agents) + len(load.messages)
    print(f"acknowledged writes: {acked} ({acked_after_back} after read-write again); missing "
          f"afterwards: {missing_agents} agents, {missing_messages} messages; files "
          f"{files_present}/{files}; meshd exit code {exit_code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-mb", type=float, default=100, help="database size (default 100)")
    parser.add_argument("--journal-seconds", type=float, default=60,
                        help="seconds of write load after the backup (default 60)")
    parser.add_argument("--warmup-seconds", type=float, default=0,
                        help="seconds of write load before the backup (journal a restore "
                             "need not replay; default 0)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent writers (default 4)")
    parser.add_argument("--quick-check-interval", type=float, default=2,
                        help="seconds between quick_checks (default 2)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="afterwards, repeat the restore's steps offline and time each "
                             "(default on)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory and log")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="meshd-bench-recovery-"))
    try:
        return asyncio.run(bench(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
