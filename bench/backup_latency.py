"""Writer latency during an online backup: fill a database to ~200 MB through SqliteStorage (in
process, no HTTP), then time single small writes (agents.register of a unique name) for a window
with no backup running and for a window in which `backups.take_backup` runs back to back in a
thread, and compare the p99s. Target: p99 during a backup under 2x the idle p99.

Run: .venv/bin/python bench/backup_latency.py [--size-mb 200] [--seconds 5] [--pace-ms 2]

Only writes issued while a backup was running count for the "backup" column. The phases of
each backup (copy, integrity_check, fsync, sha256) are timed by wrapping the helpers that
`take_backup` calls, so the slow writes can be attributed to a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshd import log as logging
from meshd.clock import db_time
from meshd.store import agents, backups
from meshd.store import journal as jr
from meshd.store.sqlite import SqliteStorage

MB = 1_000_000
ROW_BYTES = 4096
BATCH_ROWS = 500  # ~2 MB per storage.write during the fill


# Where a write's time goes: the writer thread's batch (SQLite + journal) and, inside it, the
# journal append + fsync; the rest is the queue and the event loop / executor hops. One write is
# in flight at a time, so the last batch is the write's own.
LAST = {"batch": 0.0, "append": 0.0}


def instrument() -> None:
    run_batch, append = SqliteStorage._run_batch, jr.Journal.append

    def timed_batch(self: SqliteStorage, batch: list) -> Any:
        started = time.monotonic()
        LAST["append"] = 0.0
        try:
            return run_batch(self, batch)
        finally:
            LAST["batch"] = time.monotonic() - started

    def timed_append(self: jr.Journal, records: list) -> None:
        started = time.monotonic()
        try:
            append(self, records)
        finally:
            LAST["append"] += time.monotonic() - started

    SqliteStorage._run_batch = timed_batch
    jr.Journal.append = timed_append


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def create_table(tx: Any) -> None:
    tx.execute("CREATE TABLE IF NOT EXISTS bench_rows (id INTEGER PRIMARY KEY, payload TEXT)")


def insert_rows(tx: Any, rows: list[tuple[str]]) -> int:
    return tx.executemany("INSERT INTO bench_rows (payload) VALUES (?)", rows)


def payload() -> str:
    return os.urandom(ROW_BYTES * 3 // 4).hex()[:ROW_BYTES]


def db_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def fill(storage: SqliteStorage, size_mb: float) -> float:
    await storage.write(create_table)
    started = time.monotonic()
    target = size_mb * MB
    last_report = 0.0
    while db_bytes(storage.path) < target:
        rows = [(payload(),) for _ in range(BATCH_ROWS)]
        await storage.write(insert_rows, rows)
        now = time.monotonic()
        if now - last_report > 5:
            last_report = now
            print(f"  filling: {db_bytes(storage.path) / MB:.0f} / {size_mb:.0f} MB", flush=True)
    await asyncio.to_thread(checkpoint, storage.path)
    return time.monotonic() - started


@dataclass
class Writes:
    """Each single write: (issued at, latency, seconds in the writer thread's batch, seconds
    in the journal append + fsync), monotonic seconds."""

    samples: list[tuple[float, float, float, float]] = field(default_factory=list)
    errors: int = 0


async def write_loop(storage: SqliteStorage, prefix: str, pace: float, stop: asyncio.Event,
                     out: Writes) -> None:
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        issued = time.monotonic()
        try:
            await storage.write(agents.register, f"{prefix}-{n}", None, None, db_time())
        except Exception:  # noqa: BLE001 - counted, the bench goes on
            out.errors += 1
        latency = time.monotonic() - issued
        out.samples.append((issued, latency, LAST["batch"], LAST["append"]))
        n += 1
        if pace > 0:
            next_at = max(next_at + pace, time.monotonic() - pace)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)


@dataclass
class PhaseClock:
    """Marks (monotonic time, phase name) as take_backup enters each helper it calls."""

    marks: list[tuple[float, str]] = field(default_factory=list)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.marks.append((time.monotonic(), name))
            return fn(*args, **kwargs)
        return wrapped


# The helpers take_backup looks up in its module when it runs, and the phase each starts.
PHASE_HELPERS = {"integrity": "integrity_check", "journal_position": "meta read",
                 "fsync_path": "fsync", "_fsync": "fsync", "sha256_file": "sha256"}


@contextlib.contextmanager
def timed_phases(clock: PhaseClock):
    originals = {attr: getattr(backups, attr) for attr in PHASE_HELPERS
                 if callable(getattr(backups, attr, None))}
    for attr, fn in originals.items():
        setattr(backups, attr, clock.wrap(PHASE_HELPERS[attr], fn))
    try:
        yield
    finally:
        for attr, fn in originals.items():
            setattr(backups, attr, fn)


@dataclass
class BackupRun:
    started: float
    finished: float
    seconds: float  # as take_backup recorded it in the manifest
    size: int
    phases: list[tuple[float, str]]  # (start, phase) in order; "copy" first


def keep_newest(backup_dir: Path, newest: str) -> None:
    """Keep only the newest copy; deleting is cheap next to a 200 MB copy."""
    for old in backup_dir.glob("*.db"):
        if old.name != newest:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)


def one_backup(database: Path, backup_dir: Path, clock: PhaseClock) -> BackupRun:
    clock.marks.clear()
    started = time.monotonic()
    manifest = backups.take_backup(database, backup_dir, "bench")
    finished = time.monotonic()
    keep_newest(backup_dir, manifest.file)
    return BackupRun(started, finished, manifest.seconds, manifest.size,
                     [(started, "copy"), *clock.marks])


async def backups_in_thread(database: Path, backup_dir: Path, seconds: float) -> list[BackupRun]:
    """take_backup back to back in a thread of this process until `seconds` have passed (at
    least one)."""
    runs: list[BackupRun] = []
    clock = PhaseClock()
    begin = time.monotonic()
    with timed_phases(clock):
        while not runs or time.monotonic() - begin < seconds:
            runs.append(await asyncio.to_thread(one_backup, database, backup_dir, clock))
    return runs


async def backups_in_process(database: Path, backup_dir: Path,
                             seconds: float) -> list[BackupRun]:
    """The same in a child process, as in the daemon, where the supervisor takes backups while
    the worker writes: no GIL shared with the writer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child-backups", str(database), str(backup_dir),
        str(seconds), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the backup process exited with {proc.returncode}")
    runs = []
    for line in out.decode().splitlines():
        raw = json.loads(line)
        raw["phases"] = [tuple(p) for p in raw["phases"]]
        runs.append(BackupRun(**raw))
    return runs


def child_backups(database: Path, backup_dir: Path, seconds: float) -> int:
    from meshd.supervisor.maintenance import lower_priority

    lower_priority()  # the daemon's maintenance thread runs at this priority too
    clock = PhaseClock()
    begin = time.monotonic()
    count = 0
    with timed_phases(clock):
        while not count or time.monotonic() - begin < seconds:
            run = one_backup(database, backup_dir, clock)
            print(json.dumps(asdict(run)), flush=True)
            count += 1
    return 0


def phase_of(runs: list[BackupRun], moment: float) -> str | None:
    for run in runs:
        if run.started <= moment < run.finished:
            starts = [t for t, _ in run.phases]
            return run.phases[bisect.bisect_right(starts, moment) - 1][1]
    return None


def stats(latencies: list[float]) -> tuple[float, float, float, float]:
    ms = [x * 1000 for x in latencies]
    return (percentile(ms, 50), percentile(ms, 99), max(ms), sum(ms) / len(ms))


def breakdown(samples: list[tuple[float, float, float, float]]) -> str:
    """Mean split of the slowest 1 % of writes (at or above the p99)."""
    p99 = percentile([s[1] for s in samples], 99)
    slow = [s for s in samples if s[1] >= p99]
    n = len(slow)
    total = sum(s[1] for s in slow) / n * 1000
    batch = sum(s[2] for s in slow) / n * 1000
    append = sum(s[3] for s in slow) / n * 1000
    return (f"{n} writes >= p99, mean {total:.2f} ms = journal append+fsync {append:.2f} + "
            f"SQLite on the writer thread {batch - append:.2f} + queue/event loop/thread hops "
            f"{total - batch:.2f}")


async def measure(storage: SqliteStorage, prefix: str, pace: float, seconds: float,
                  backup_dir: Path | None = None, mode: str = "thread",
                  ) -> tuple[Writes, list[BackupRun]]:
    """Single writes for `seconds` (no backup), or while backups run back to back."""
    writes = Writes()
    stop = asyncio.Event()
    task = asyncio.create_task(write_loop(storage, prefix, pace, stop, writes))
    runs: list[BackupRun] = []
    try:
        if backup_dir is None:
            await asyncio.sleep(seconds)
        elif mode == "thread":
            runs = await backups_in_thread(storage.path, backup_dir, seconds)
        else:
            runs = await backups_in_process(storage.path, backup_dir, seconds)
    finally:
        stop.set()
        await task
    return writes, runs


async def bench(args: argparse.Namespace, root: Path) -> int:
    data = root / "data"
    instrument()
    storage = SqliteStorage(data / "mesh.db", data / "journal")
    await storage.start()
    pace = args.pace_ms / 1000
    idle = Writes()
    during = Writes()
    runs: list[BackupRun] = []
    try:
        print(f"filling {data / 'mesh.db'} to {args.size_mb:g} MB "
              f"({ROW_BYTES} B rows, {BATCH_ROWS} per write)", flush=True)
        fill_s = await fill(storage, args.size_mb)
        size = storage.file_size()
        print(f"filled in {fill_s:.1f} s: mesh.db {size / MB:.1f} MB", flush=True)
        await measure(storage, "warm", pace, 1.0)  # warm the agents table and caches
        for n in range(args.rounds):
            got, _ = await measure(storage, f"idle{n}", pace, args.seconds)
            idle.samples += got.samples
            idle.errors += got.errors
            got, more = await measure(storage, f"bk{n}", pace, args.seconds,
                                      root / "backups", args.backup_in)
            during.samples += got.samples
            during.errors += got.errors
            runs += more
    finally:
        await storage.close()

    in_backup = [s for s in during.samples if phase_of(runs, s[0]) is not None]
    if not idle.samples or not in_backup:
        print("no writes measured", file=sys.stderr)
        return 1
    print()
    print(f"database: {size / MB:.1f} MB ({size / (1 << 20):.1f} MiB) mesh.db; "
          f"writes: agents.register, one at a time, "
          + (f"paced every {args.pace_ms:g} ms" if pace > 0 else "back to back")
          + f"; backups in a {args.backup_in}; {args.rounds} round(s) of {args.seconds:g} s "
          "idle + backups")
    for i, run in enumerate(runs, 1):
        parts = []
        for (start, name), nxt in zip(run.phases, [*run.phases[1:], (run.finished, "")],
                                      strict=True):
            parts.append(f"{name} {nxt[0] - start:.2f}")
        print(f"backup {i}: {run.finished - run.started:.2f} s wall, manifest {run.seconds} s, "
              f"{run.size / MB:.1f} MB  [{', '.join(parts)}]")
    idle_lat = [s[1] for s in idle.samples]
    bk_lat = [s[1] for s in in_backup]
    i50, i99, imax, imean = stats(idle_lat)
    b50, b99, bmax, bmean = stats(bk_lat)
    print()
    print(f"{'write latency (ms)':<22}{'n':>7}{'p50':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    print(f"{'idle':<22}{len(idle_lat):>7}{i50:>9.2f}{i99:>9.2f}{imax:>9.2f}{imean:>9.2f}")
    print(f"{'during backup':<22}{len(bk_lat):>7}{b50:>9.2f}{b99:>9.2f}{bmax:>9.2f}{bmean:>9.2f}")
    by_phase: dict[str, list[float]] = {}
    for s in in_backup:
        by_phase.setdefault(phase_of(runs, s[0]), []).append(s[1])
    for name, lats in by_phase.items():
        p50, p99, pmax, pmean = stats(lats)
        print(f"{'  in ' + name:<22}{len(lats):>7}{p50:>9.2f}{p99:>9.2f}{pmax:>9.2f}"
              f"{pmean:>9.2f}")
    print(f"load average (1, 5, 15 min) at the end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print()
    print(f"idle:          {breakdown(idle.samples)}")
    print(f"during backup: {breakdown(in_backup)}")
    errors = idle.errors + during.errors
    if errors:
        print(f"write errors: {errors}")
    ratio = b99 / i99
    verdict = "PASS" if ratio < 2 else "MISS"
    print()
    print(f"p99 during backup / idle p99 = {b99:.2f} / {i99:.2f} = {ratio:.2f}x "
          f"(target < 2x): {verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200, help="database size (default 200)")
    parser.add_argument("--seconds", type=float, default=5,
                        help="length of the idle window and of the backup window (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate idle and backup windows this many times (default 3)")
    parser.add_argument("--pace-ms", type=float, default=2,
                        help="issue one write every this many ms (0: back to back; default 2)")
    parser.add_argument("--backup-in", choices=["thread", "process"], default="process",
                        help="run take_backup in a thread of the writer's process or "
                             "in another process, as the daemon's supervisor does (default)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--child-backups", nargs=3, metavar=("DB", "DIR", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.configure("json", "warning", process="bench")
    if args.child_backups:
        db, backup_dir, seconds = args.child_backups
        return child_backups(Path(db), Path(backup_dir), float(seconds))
    root = Path(tempfile.mkdtemp(prefix="meshd-bench-backup-"))
    try:
        return asyncio.run(bench(args, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
