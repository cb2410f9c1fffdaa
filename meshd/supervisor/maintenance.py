"""Scheduled maintenance in the supervisor: verified backups, retention of backups and journal,
quick_check and integrity_check. A failed check starts the Database Corruption protocol.

Only read-only SQL here: backups copy a snapshot and checks read; the worker stays the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from meshd import log as logging
from meshd.clock import db_time
from meshd.recovery import corruption
from meshd.store import backups, pg_backups, postgres

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

log = logging.get("meshd.maintenance")


MAINTENANCE_NICE = 10


def lower_priority() -> None:
    """Maintenance (copying, checking, hashing the database) yields the CPU to the API: on two
    cores a full-priority backup slows the writer's p99 by its CPU share alone."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MAINTENANCE_NICE)


class Maintenance:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.scheduler: AsyncIOScheduler | None = None
        self.last_check: dict[str, Any] | None = None
        # For /metrics: the latest backup attempt, and attempts counted by outcome.
        self.last_backup_run: dict[str, Any] | None = None
        self.backup_runs: Counter[str] = Counter()
        self.check_runs: Counter[tuple[str, bool]] = Counter()
        self.last_checks: dict[str, dict[str, Any]] = {}  # kind -> its latest result
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshd-maintenance",
                                            initializer=lower_priority)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        s = self.sup.settings
        scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 60})
        backup_trigger = (CronTrigger.from_crontab(s.backup_cron, timezone="UTC")
                          if s.backup_cron else IntervalTrigger(seconds=s.backup_interval))
        scheduler.add_job(self.scheduled_backup, backup_trigger, id="backup")
        scheduler.add_job(self.scheduled_check, IntervalTrigger(seconds=s.quick_check_interval),
                          id="quick_check", kwargs={"full": False})
        scheduler.add_job(self.scheduled_check,
                          CronTrigger.from_crontab(s.full_check_cron, timezone="UTC"),
                          id="full_check", kwargs={"full": True})
        scheduler.start()
        self.scheduler = scheduler

    async def scheduled_backup(self) -> None:
        """Scheduled backups and checks are the leader's (once per mesh); an operator's
        `meshd backup` or `meshd check` runs on whichever node it is asked of."""
        if self.sup.idle_for_maintenance() and self.sup.leads:
            with contextlib.suppress(backups.BackupError):  # logged and recorded already
                await self.backup_now("scheduled")

    async def backup_now(self, reason: str) -> dict[str, Any]:
        s = self.sup.settings
        started = time.monotonic()
        if postgres.is_url(s.database):
            return await self._pg_backup(reason, started)
        try:
            manifest = await self._run(backups.take_backup, s.database, s.backup_dir,
                                               reason)
        except backups.BackupError as exc:
            self._backup_done(False, started)
            log.error("backup.failed", error=str(exc), backup_dir=str(s.backup_dir))
            self.sup.record_event("backup_failed", "major", "Backup failed", str(exc))
            raise
        self._backup_done(True, started)
        await self._run(backups.prune, s.backup_dir, s.backup_keep,
                                s.backup_keep_daily, s.backup_keep_weekly)
        await self._run(backups.prune_journal, s.data_dir / "journal", s.backup_dir,
                                s.backup_keep)
        return asdict(manifest)

    async def _pg_backup(self, reason: str, started: float) -> dict[str, Any]:
        """pg_dump of meshd's tables, verified in a scratch database (store/pg_backups.py);
        the newest `backup_keep` dumps are kept."""
        s = self.sup.settings
        try:
            manifest = await self._run(pg_backups.take_dump, str(s.database), s.backup_dir,
                                       reason)
        except pg_backups.BackupError as exc:
            self._backup_done(False, started)
            log.error("backup.failed", backend="postgresql", error=str(exc))
            self.sup.record_event("backup_failed", "major", "Backup failed", str(exc))
            raise backups.BackupError(str(exc)) from exc
        self._backup_done(True, started)
        await self._run(pg_backups.prune, s.backup_dir, s.backup_keep)
        return asdict(manifest)

    def _backup_done(self, ok: bool, started: float) -> None:
        self.backup_runs["success" if ok else "failure"] += 1
        self.last_backup_run = {"ok": ok, "seconds": round(time.monotonic() - started, 3),
                                "at": time.time()}

    async def scheduled_check(self, full: bool) -> None:
        if self.sup.idle_for_maintenance() and self.sup.leads:
            await self.check_now(full)

    async def check_now(self, full: bool) -> list[str]:
        started = time.monotonic()
        problems = await self._run(backups.integrity, self.sup.settings.database, full)
        self.record_check("integrity_check" if full else "quick_check", problems, started)
        if postgres.is_url(self.sup.settings.database):
            # Not corruption of a file meshd could restore: the server is down or the schema
            # is wrong, and meshd waits for it (a run under way is joined).
            if problems:
                self.sup.start_unreachable_protocol(
                    f"{self.last_check['kind']} failed: {'; '.join(problems[:3])}")
        elif problems and self.sup.engine.active(corruption.SPEC.name) is None:
            self.sup.start_corruption_protocol(
                f"{self.last_check['kind']} failed: {'; '.join(problems[:3])}")
        return problems

    def record_check(self, kind: str, problems: list[str], started: float) -> None:
        """The latest check, for `meshd status` and /metrics; a failed one is an `error` line
        (the documented filter finds it), a passing one `info`."""
        self.last_check = {"kind": kind, "at": db_time(), "ok": not problems,
                           "problems": problems[:5],
                           "seconds": round(time.monotonic() - started, 3)}
        self.check_runs[(kind, not problems)] += 1
        self.last_checks[kind] = {**self.last_check, "at_epoch": time.time()}
        if problems:
            log.error("check.failed", **self.last_check)
        else:
            log.info("check.completed", **self.last_check)

    def stop(self) -> None:
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
        self._executor.shutdown(wait=False, cancel_futures=True)


def last_backup(backup_dir: Path) -> dict[str, Any] | None:
    manifests = backups.list_backups(backup_dir)
    if not manifests:
        dumps = backup_listing(backup_dir)  # a PostgreSQL mesh's pg_dump backups
        return {k: dumps[0][k] for k in ("file", "created_at", "age_s", "size",
                                         "journal_seq", "verified")} if dumps else None
    m = manifests[0]
    age = (datetime.now(UTC) - m.created).total_seconds()
    return {"file": m.file, "created_at": m.created_at, "age_s": round(age),
            "size": m.size, "journal_seq": m.journal_seq, "verified": m.verified}


def backup_listing(backup_dir: Path) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    dumps = [{"file": d.file, "created_at": d.created_at,
              "age_s": round((now - datetime.fromisoformat(d.created_at)).total_seconds()),
              "size": d.size, "journal_seq": None, "journal_epoch": None,
              "verified": d.verified, "reason": d.reason}
             for d in pg_backups.list_dumps(backup_dir)]
    return dumps + [{"file": m.file, "created_at": m.created_at,
             "age_s": round((now - m.created).total_seconds()), "size": m.size,
             "journal_seq": m.journal_seq, "journal_epoch": m.journal_epoch,
             "verified": m.verified, "reason": m.reason}
            for m in backups.list_backups(backup_dir)]
