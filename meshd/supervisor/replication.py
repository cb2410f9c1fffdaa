"""Shipping to the off-site replicas, run by the supervisor: one task per replica, so a slow
or dead one holds up neither the others nor anything else. The worker (API and writer) never
waits for a replica: the tasks read journal segments and backups the worker has already
fsync'd.

A replica that fails opens one `replica_failed` event per outage (and alerts); it is retried
with backoff and resolved when shipping has caught up. The restore drill runs here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from meshd import log as logging
from meshd.clock import db_time
from meshd.store.replica import crypt, pull, ship, urls
from meshd.store.replica.targets import Target, open_target, read_credentials
from meshd.supervisor import alerts

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

log = logging.get("meshd.replication")

BACKOFF_MAX = 30.0
HOUSEKEEPING = 300.0  # retention and compaction at least this often (new backups at once)


@dataclass(eq=False)
class Replica:
    name: str
    target: Target
    shipper: ship.Shipper
    failures: int = 0
    last_error: str | None = None
    last_ok_at: str | None = None
    last_ok: float | None = None
    next_housekeeping: float = 0.0
    housekeeping_error: str | None = None  # backups, retention or compaction failing
    event: dict[str, Any] | None = None
    last_drill: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one journal ship at a time
    # Housekeeping and the drill: compaction must not delete parts the drill is reading.
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)


class Replication:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.replicas: list[Replica] = []
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        s = self.sup.settings
        if not s.replica:
            return
        try:
            env = read_credentials(s.replica_credentials)
            key = crypt.load_key(s.replica_key_file) if s.replica_key_file else None
        except (OSError, ValueError) as exc:
            # Checked at load; gone since. Never ship without the key that was asked for.
            log.error("replica.settings_unreadable", error=str(exc))
            self.sup.record_event("replica_failed", "major", "Replicas not started",
                                  f"replica credentials or key unreadable: {exc}")
            return
        retention = ship.Retention(s.backup_keep, s.backup_keep_daily, s.backup_keep_weekly)
        for text in s.replica:
            url = urls.parse(text)
            try:
                target = open_target(url, env, key)
            except Exception as exc:  # noqa: BLE001 - a client that refuses its settings
                log.error("replica.client_failed", replica=url.name, error=str(exc))
                self.sup.record_event("replica_failed", "major",
                                      f"Replica unusable: {url.name}", str(exc))
                continue
            shipper = ship.Shipper(target, s.data_dir / "journal", s.backup_dir, retention)
            replica = Replica(url.name, target, shipper)
            self.replicas.append(replica)
            self._spawn(self._run(replica))
            self._spawn(self._housekeeping(replica))
        self._spawn(self._drills())
        log.info("replica.started", replicas=[r.name for r in self.replicas],
                 interval_s=s.replica_interval)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, replica: Replica) -> None:
        """Journal shipping, every replica_interval; nothing else runs in this task, so a
        large backup upload or a compaction never delays it."""
        while True:
            delay = self.sup.settings.replica_interval
            try:
                async with replica.lock:
                    await replica.shipper.ship_journal()
                self._succeeded(replica)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is retried, never fatal
                self._failed(replica, exc)
                delay = min(BACKOFF_MAX, delay * 2 ** min(replica.failures, 8))
            await asyncio.sleep(delay)

    async def _housekeeping(self, replica: Replica) -> None:
        """New backups as soon as they exist; retention and compaction every HOUSEKEEPING."""
        failures = 0
        while True:
            delay = 1.0
            if (replica.shipper.backups_changed()
                    or time.monotonic() >= replica.next_housekeeping):
                try:
                    async with replica.busy:
                        await replica.shipper.ship_backups()
                        await replica.shipper.compact()
                    replica.next_housekeeping = time.monotonic() + HOUSEKEEPING
                    replica.housekeeping_error, failures = None, 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried, never fatal
                    failures += 1
                    replica.housekeeping_error = str(exc) or type(exc).__name__
                    self._failed(replica, exc, journal=False)
                    delay = min(BACKOFF_MAX, 2.0 ** min(failures, 8))
            await asyncio.sleep(delay)

    async def sync(self, epoch: int, seq: int, timeout: float) -> str | None:
        """replica_sync: ship up to (epoch, seq) now; the first replica that verifiably holds
        it, or None when none does within `timeout`. Slower replicas finish in the
        background (their upload is not wasted)."""

        async def one(replica: Replica) -> str | None:
            async with replica.lock:
                if (replica.shipper.position or (0, 0)) < (epoch, seq):
                    try:
                        await replica.shipper.ship_journal()
                    except Exception as exc:  # noqa: BLE001 - reported, then retried
                        self._failed(replica, exc)
                        return None
                    self._succeeded(replica)
            held = (replica.shipper.position or (0, 0)) >= (epoch, seq)
            return replica.name if held else None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set()
        for replica in self.replicas:
            task = asyncio.create_task(one(replica))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            pending.add(task)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                if not task.cancelled() and task.result():
                    return task.result()
        return None

    def _failed(self, replica: Replica, exc: Exception, journal: bool = True) -> None:
        replica.failures += 1
        replica.last_error = str(exc) or type(exc).__name__
        if journal:
            replica.shipper.position = None  # ask the replica where it stands after an outage
        log.warning("replica.ship_failed", replica=replica.name, error=replica.last_error,
                    failures=replica.failures)
        if replica.event is None:
            replica.event = self.sup.record_event(
                "replica_failed", "major", f"Replica failing: {replica.name}",
                f"shipping to {replica.name} failed: {replica.last_error}; the mesh keeps "
                "serving and writes stay local until the replica is back, then shipping "
                "catches up")
            self._alert(replica.event)

    def _succeeded(self, replica: Replica) -> None:
        replica.last_ok, replica.last_ok_at = time.monotonic(), db_time()
        if replica.failures:
            log.info("replica.recovered", replica=replica.name, failures=replica.failures,
                     position=replica.shipper.position)
        replica.failures, replica.last_error = 0, replica.housekeeping_error
        if replica.event is not None and replica.housekeeping_error is None:
            event, replica.event = replica.event, None
            epoch, seq = replica.shipper.position or (0, 0)
            event.update(status="resolved", resolved_at=db_time(),
                         resolution_notes=f"shipping caught up (epoch {epoch}, seq {seq})")
            self.sup.queue_record(event)
            self._alert(event)

    def _alert(self, event: dict[str, Any]) -> None:
        s = self.sup.settings
        if s.alert_command or s.alert_webhook:
            self._spawn(alerts.send(s, {"type": "catastrophe_event", "event": event}))

    async def _drills(self) -> None:
        while True:
            await asyncio.sleep(self.sup.settings.drill_interval)
            if self.sup.idle_for_maintenance():
                try:
                    await self.drill_all()
                except Exception as exc:  # noqa: BLE001 - the next drill still runs
                    log.error("replica.drill_crashed", error=str(exc))

    async def drill_all(self) -> list[dict[str, Any]]:
        results = []
        for i, replica in enumerate(self.replicas):
            scratch = self.sup.settings.data_dir / "drill" / str(i)
            async with replica.busy:
                result = asdict(await pull.drill(replica.target, scratch))
            replica.last_drill = result
            results.append(result)
            if not result["ok"]:
                self.sup.record_event(
                    "replica_drill_failed", "major", f"Restore drill failed: {replica.name}",
                    "; ".join(result["problems"][:3]))
        return results

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = []
        for r in self.replicas:
            epoch, seq = r.shipper.position or (None, None)
            out.append({"replica": r.name, "ok": r.failures == 0 and r.last_ok is not None
                        and r.housekeeping_error is None,
                        "shipped_epoch": epoch, "shipped_seq": seq,
                        "last_ok_at": r.last_ok_at,
                        "since_last_ok_s": round(now - r.last_ok, 1) if r.last_ok else None,
                        "failures": r.failures, "last_error": r.last_error,
                        "objects_shipped": r.shipper.objects_shipped,
                        "backups": r.shipper.backups_held,
                        "last_drill": r.last_drill})
        return out

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for r in self.replicas:
            with contextlib.suppress(Exception):
                await r.target.close()
