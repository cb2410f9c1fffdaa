"""The protocol actions: what recovery steps may do to the running system (the
`RecoveryHost` of `meshd.recovery.host`), carried out on the supervisor's worker, outbox and
files. The engine runs steps against this object and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from meshd import log as logging
from meshd.clock import db_time, new_id
from meshd.config import Settings
from meshd.locks import FileLock
from meshd.recovery import corruption
from meshd.recovery.engine import Run
from meshd.recovery.protocols import MESH_WIDE
from meshd.store import postgres
from meshd.store import restore as restore_mod
from meshd.store.readonly import open_readonly
from meshd.supervisor.child import probe_host

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

log = logging.get("meshd.supervisor")

# A worker may take this long to open (migrate, replay) before it must answer /health.
STARTUP_GRACE = 60.0


class ProtocolActions:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.storage = open_readonly(sup.settings.database)
        self._operator_read_write = asyncio.Event()

    @property
    def settings(self) -> Settings:
        return self.sup.settings

    # -- recording and announcing ------------------------------------------------------------

    def queue_record(self, record: dict[str, Any]) -> None:
        self.sup.queue_record(record)

    async def publish(self, event: dict[str, Any]) -> None:
        """A protocol transition: to the operator's alert hooks, and to the agents on the
        WebSocket when a worker serves."""
        self.sup.alert(event)
        worker = self.sup.worker
        queued = any(r.get("kind") == "publish" for r in self.sup.outbox.pending)
        if worker is not None and worker.healthy_at is not None and not queued:
            try:
                await worker.call("POST", "/internal/publish", {"event": event})
                return
            except Exception as exc:  # noqa: BLE001 - kept and sent once a worker serves
                log.warning("protocol.publish_queued", error=str(exc))
        # No worker serving (or earlier ones still queued): kept in order in the outbox, so
        # agents get every transition, with an event id, when a worker is back.
        self.queue_record({"kind": "publish", "id": f"publish-{new_id()}", "event": event})

    def start_corruption_protocol(self, reason: str, **context: Any) -> Run:
        return self.sup.start_corruption_protocol(reason, **context)

    @property
    def on_postgresql(self) -> bool:
        return postgres.is_url(self.settings.database)

    def start_unreachable_protocol(self, reason: str) -> Run:
        return self.sup.start_unreachable_protocol(reason)

    async def complete_update(self, update_id: str) -> None:
        self.queue_record({"kind": "update_complete", "id": f"update-complete-{update_id}",
                           "update_id": update_id, "completed_at": db_time()})

    def publish_rollback_update(self, update: dict[str, Any]) -> None:
        self.queue_record({"kind": "rollback_update", "id": f"rollback-{update['id']}",
                           "update": update})

    # -- the worker's lifecycle --------------------------------------------------------------

    async def wait_for_healthy_worker(self) -> str:
        sup = self.sup
        while True:
            if sup.crash_looping:
                raise RuntimeError(sup.reason or "crash loop")
            worker = sup.worker
            if worker is not None and worker.healthy_at is not None:
                return f"worker {worker.pid} healthy"
            await asyncio.sleep(0.1)

    def hold_worker(self, run_id: str) -> None:
        self.sup.held_by = run_id

    def release_worker(self, run_id: str) -> None:
        if self.sup.held_by == run_id:
            self.sup.held_by = None

    async def stop_worker_for(self, run_id: str) -> str:
        self.hold_worker(run_id)
        await self.sup.enter_restoring()
        worker = self.sup.worker
        if worker is None:
            return "no worker was running"
        # Killed, not drained: a clean close would checkpoint the WAL into the corrupt file
        # and delete the -wal and -shm that forensics need. Every acknowledged write is in
        # the journal, so nothing acknowledged is lost; requests in flight are not answered.
        await self.sup.stop_worker(kill=True)
        return f"worker {worker.pid} stopped"

    async def start_worker_read_only(self, run_id: str, reason: str) -> str:
        sup = self.sup
        sup.read_only_reason = reason
        if sup.worker is None:
            await sup.spawn_now()
        self.release_worker(run_id)
        worker = sup.worker
        if not await worker.probe(sup.health_url(), STARTUP_GRACE):
            raise RuntimeError("the restarted worker did not answer /health")
        await sup.worker_up(worker)
        await worker.call("POST", "/internal/mode", {"mode": "read-only", "reason": reason})
        return f"worker {worker.pid} serving read-only"

    async def enable_writes(self, run_id: str) -> str:
        if not self.settings.auto_read_write and self.sup.read_only_reason:
            log.warning("protocol.waiting_for_operator", run_id=run_id,
                        detail="run `meshd mode read-write` to take writes again")
            self._operator_read_write.clear()
            await self._operator_read_write.wait()
        await self.set_mode(None)
        return "read-write"

    async def set_mode(self, read_only_reason: str | None) -> None:
        """The operator's (or a protocol's) mode: kept for the next worker, sent to this one."""
        sup = self.sup
        sup.read_only_reason = read_only_reason
        worker = sup.worker
        if worker is not None and worker.healthy_at is not None:
            body = ({"mode": "read-only", "reason": read_only_reason} if read_only_reason
                    else {"mode": "read-write"})
            await worker.call("POST", "/internal/mode", body)
        if read_only_reason is None:
            self._operator_read_write.set()
        log.info("supervisor.mode", mode="read-only" if read_only_reason else "read-write",
                 reason=read_only_reason)

    # -- the database ------------------------------------------------------------------------

    async def quick_check(self) -> list[str]:
        return await self.storage.check(full=False)

    async def database_check(self, full: bool) -> list[str]:
        """quick_check or integrity_check on SQLite; a connection and schema check on
        PostgreSQL (Database Unreachable polls this)."""
        return await self.storage.check(full=full)

    async def restore_database(self, run: Run) -> Any:
        """Restore in a process of its own: replaying the journal is Python work, and here it
        would share the GIL with the loop answering 503 to every agent meanwhile."""
        settings = self.settings
        lock = FileLock(settings.data_dir / "writer.lock")
        await asyncio.to_thread(lock.acquire, 30)
        try:
            to_time = run.context.get("to_time")
            job = functools.partial(
                restore_mod.restore, settings.database, settings.data_dir / "journal",
                settings.backup_dir, settings.data_dir,
                backup_name=run.context.get("backup"),
                to_time=datetime.fromisoformat(to_time) if to_time else None)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context, initializer=logging.configure,
                                     initargs=(settings.log_format, settings.log_level,
                                               "restore")) as pool:
                return await asyncio.get_running_loop().run_in_executor(pool, job)
        finally:
            lock.release()

    async def verify_database(self) -> str:
        """The file in place, as it is now (header, size, quick_check): the full
        integrity_check already ran on it under its temporary name during the restore."""
        started = time.monotonic()
        problems = await self.storage.check(full=False)
        # The restore's check replaces the failed one `meshd status` showed before it.
        self.sup.maintenance.record_check("quick_check", problems, started)
        if problems:
            raise RuntimeError(f"the restored database failed its check: {problems[:3]}")
        return "integrity_check ok before the rename, quick_check ok in place"

    async def self_test(self) -> str:
        """Critical endpoints over HTTP with the agents' key, then the write path in a
        transaction that is rolled back."""
        base = f"http://{probe_host(self.settings.host)}:{self.sup.port}"
        headers = {"X-API-Key": self.settings.api_key}
        expected = {"/health": 200, "/readyz": 503, "/api/agents?limit=1": 200,
                    "/api/catastrophe?limit=1": 200, "/api/health/dashboard?limit=1": 200}
        async with aiohttp.ClientSession(headers=headers) as session:
            for path, status in expected.items():
                async with session.get(base + path,
                                       timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status != status:
                        raise RuntimeError(f"GET {path} answered {resp.status}, not {status}")
        result = await self.sup.worker.call("POST", "/internal/selftest")
        return f"{len(expected)} endpoints and write path ({', '.join(result['checks'])}) ok"

    # -- start-up ----------------------------------------------------------------------------

    def resume(self) -> None:
        """Drive unfinished runs again; a restore not finished keeps the worker held, one
        past it starts the worker read-only. Mesh-wide runs wait until this node leads
        (at once on SQLite; on PostgreSQL once elected)."""
        sup = self.sup
        for run in sup.engine.resume_unfinished(
                hold=lambda run: run.protocol in MESH_WIDE and not sup.leads):
            if run.protocol != corruption.SPEC.name:
                continue
            order = list(corruption.Corruption)
            if order.index(run.state) < order.index(corruption.Corruption.READ_ONLY):
                self.sup.held_by = run.id
            else:
                self.sup.read_only_reason = "restored from backup; self-test pending"
