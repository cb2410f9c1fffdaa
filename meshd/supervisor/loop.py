"""The supervisor (`meshd run`): owns the listening socket, starts the API worker, watches it,
restarts it, and speaks to systemd. It does no API work and writes no SQL while a worker runs.

Its main loop reads top to bottom: reap an exited worker, probe a live one, apply a reload,
start one when due (promoting the warm standby when there is one it may use), flush queued
records, keep a standby, report to systemd; then sleep until the next tick or an event. The parts
live beside it: `child` (one worker process), `outbox` (records for the worker to write),
`fallback` (the 503 while no worker serves), `restart` (backoff and crash loops), `actions`
(what protocol steps may do), `status`, `maintenance`, `sdnotify`, `alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meshd import config, incidents
from meshd import log as logging
from meshd.clock import db_time
from meshd.control import client as control
from meshd.control.server import serve_unix
from meshd.locks import FileLock, LockBusy
from meshd.process import EXIT_DB_CORRUPT, bind_socket
from meshd.recovery import corruption, crash, unreachable
from meshd.recovery.engine import Engine, Run
from meshd.recovery.protocols import PROTOCOLS
from meshd.store import postgres
from meshd.supervisor import alerts, leader, status, takeover
from meshd.supervisor import metrics as supervisor_metrics
from meshd.supervisor.actions import STARTUP_GRACE, ProtocolActions
from meshd.supervisor.child import WorkerHandle, probe_host
from meshd.supervisor.control_routes import make_control_app
from meshd.supervisor.fallback import Fallback
from meshd.supervisor.maintenance import Maintenance
from meshd.supervisor.outbox import Outbox
from meshd.supervisor.replication import Replication
from meshd.supervisor.restart import Policy, RestartState
from meshd.supervisor.sdnotify import Notifier

log = logging.get("meshd.supervisor")

STATUS_REFRESH = 5.0
FRESH_STATUS_TIMEOUT = 0.5
FALLBACK_AFTER = 1.0  # restarts further away than this serve 503 meanwhile, not a silent backlog
STANDBY_RETRY = 10.0  # a standby that died on its own is replaced no sooner than this


class State(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RESTARTING = "restarting"
    CRASH_LOOP = "crash-loop"
    RESTORING = "restoring"
    STOPPING = "stopping"


@dataclass
class Supervisor:
    settings: config.Settings
    flags: dict[str, Any]
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        data_dir = self.settings.data_dir
        self.state = State.STARTING
        self.reason: str | None = None
        self.worker: WorkerHandle | None = None
        self.standby: WorkerHandle | None = None  # warm, imported, waiting to be promoted
        self.promotions = 0
        self._standby_after = 0.0
        self.restarts = RestartState(self._policy())
        self.started_at = time.monotonic()
        self.next_start: float = 0.0
        self.read_only_reason: str | None = None
        self.outbox = Outbox(data_dir / "supervisor-records.json")
        self.worker_status: dict[str, Any] = {}
        self.ready_sent = False
        self.held_by: str | None = None  # a protocol run that owns the worker's lifecycle
        self._wake = asyncio.Event()
        self._stopping = False
        self._reload = False
        logging.add_secrets(self.settings.api_key, self.settings.admin_key)
        self._lock = FileLock(data_dir / "meshd.lock")
        self._pid_file = data_dir / "meshd.pid"
        self._sock = None
        self._fallback: Fallback | None = None
        self._control = None
        self._status_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._disk_event: dict[str, Any] | None = None
        self.actions = ProtocolActions(self)
        self.engine = Engine(self.actions, data_dir / "protocols", PROTOCOLS)
        self.maintenance = Maintenance(self)
        self.replication = Replication(self)
        self.leadership: leader.Leadership | None = None  # made once the port is bound
        self._lease_wake = asyncio.Event()

    def _policy(self) -> Policy:
        s = self.settings
        return Policy(backoff_max=s.restart_backoff_max, loop_limit=s.crash_loop_limit,
                      loop_window=s.crash_loop_window)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockBusy:
            log.error("supervisor.already_running", data_dir=str(settings.data_dir))
            sys.stderr.write(f"meshd: another meshd is running on {settings.data_dir}\n")
            return 1
        unclean_pid = self._read_stale_pid()
        self._pid_file.write_text(f"{os.getpid()}\n")
        self.outbox.load()
        self._sock = bind_socket(settings.host, settings.port)
        self._sock.set_inheritable(True)
        self._fallback = Fallback(self._sock, self._unavailable_body,
                                  supervisor_metrics.fallback_handler(self),
                                  self.settings.header_timeout)
        self._control = await serve_unix(make_control_app(self), settings.control_socket)
        self.leadership = leader.for_settings(settings, self.port, self._leadership_changed,
                                              self._handed_over)
        if self.on_postgresql:
            self.leadership.on_runs = takeover.RunTakeover(
                self.engine, self.leadership.node.node_id).tick
            self.engine.driver = self._run_driver
        self.engine.may_drive = lambda run: not takeover.mesh_wide(run) or self.leads
        self._install_signals()
        log.info("supervisor.started", pid=os.getpid(), host=settings.host, port=self.port,
                 data_dir=str(settings.data_dir), systemd=self.notifier.enabled)
        self.actions.resume()
        if unclean_pid is not None:
            await self._check_after_unclean_stop(unclean_pid)
        self._spawn_task(self._watchdog_pings())
        if self.on_postgresql:
            self._spawn_task(self.leadership.run())
            self._spawn_task(self._lease_worker())
        self.maintenance.start()
        self.replication.start()
        while not self._stopping:
            await self._reap()
            await self._probe()
            await self._apply_reload()
            await self._spawn_if_due()
            await self._flush_records()
            await self._keep_standby()
            await self._report_status()
            await self._sleep_until_next_tick()
        await self._shutdown()
        return 0

    async def _sleep_until_next_tick(self) -> None:
        timeout = self.settings.probe_interval
        if self.worker is not None and self.worker.healthy_at is None:
            timeout = 0.0  # the start-up probe itself waits for the worker
        elif self.worker is None and self.state != State.CRASH_LOOP:
            timeout = max(0.0, min(timeout, self.next_start - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # -- reap --------------------------------------------------------------------------------

    async def _reap(self) -> None:
        self._reap_standby()
        worker = self.worker
        if worker is None or not worker.exited:
            return
        self.worker = None
        code = worker.proc.returncode
        if worker.expected_exit:
            log.info("worker.exited", pid=worker.pid, code=code)
            return
        reason = worker.exit_reason()
        now = time.monotonic()
        uptime = round(now - worker.started_at, 3)
        log.error("worker.crashed", pid=worker.pid, code=code, reason=reason, uptime_s=uptime)
        if code == EXIT_DB_CORRUPT:
            await self.retire_standby("the worker exited with the database-corrupt code")
            self.start_corruption_protocol(
                f"worker {worker.pid} exited with the database-corrupt code")
            return
        delay = self.restarts.crashed(now)  # a promotion restarts too: the crash counts
        if delay is not None:
            self.state = State.RESTARTING
            self.reason = reason
            self.next_start = now + delay
            if delay == 0.0:
                # The standby first: the crash protocol's files and records can follow.
                self._promote_standby()
        self._crash_protocol(
            f"worker pid {worker.pid} {reason} after {uptime} s; restart "
            + ("stopped (crash loop)" if delay is None else f"in {delay:.2f} s")
            + (f" (standby {self.worker.pid} promoted)" if self.worker else ""),
            {"crashed_at": db_time(), "pid": worker.pid, "code": code})
        if delay is None:
            await self._enter_crash_loop(reason)
            return
        if delay >= FALLBACK_AFTER:
            await self._serve_fallback(f"restarting after a crash ({reason})")

    async def _enter_crash_loop(self, last_reason: str) -> None:
        window = self.settings.crash_loop_window
        self.state = State.CRASH_LOOP
        self.reason = (f"crash loop: more than {self.settings.crash_loop_limit} crashes in "
                       f"{window:g} s (last: {last_reason}); restarting stopped")
        log.critical("supervisor.crash_loop", reason=self.reason,
                     systemd_takes_over=self.notifier.watchdog_interval is not None)
        self.record_event("server_down", "critical", "Crash loop: restarting stopped",
                          self.reason)
        self.notifier.status(self.reason)
        await self._serve_fallback(self.reason)

    def _crash_protocol(self, description: str, context: dict[str, Any]) -> None:
        """Every crash goes through Server Crash Recovery; crashes during a run join it."""
        run = self.engine.active(crash.SPEC.name)
        if run is None:
            self.engine.start(crash.SPEC.name, description, {**context, "crashes": 1})
            return
        run.context["crashes"] = run.context.get("crashes", 1) + 1
        run.event["description"] = f"{run.event.get('description')}; then {description}"
        self.engine.save(run)

    # -- probe -------------------------------------------------------------------------------

    async def _probe(self) -> None:
        worker = self.worker
        if worker is None or worker.exited:
            return
        now = time.monotonic()
        starting = worker.healthy_at is None
        timeout = self.settings.probe_timeout
        if starting:
            # A starting worker answers as soon as it accepts: wait for it, within the grace.
            timeout = max(timeout, STARTUP_GRACE - (now - worker.started_at))
        ok = await self._race_wake(worker.probe(self.health_url(), timeout))
        if ok is None or worker is not self.worker or worker.exited:
            return
        if ok:
            worker.failures = 0
            self.restarts.worker_healthy(time.monotonic())
            if starting:
                await self.worker_up(worker)
            return
        if starting and time.monotonic() - worker.started_at < STARTUP_GRACE:
            return
        worker.failures += 1
        log.warning("worker.probe_failed", pid=worker.pid, failures=worker.failures,
                    limit=self.settings.probe_failures)
        if worker.failures >= self.settings.probe_failures:
            log.error("worker.killing_unresponsive", pid=worker.pid)
            await worker.kill(f"was unresponsive ({worker.failures} failed probes of "
                              f"{self.settings.probe_timeout:g} s)")

    async def _race_wake(self, coro) -> Any:
        """Run `coro` unless the worker exits or a signal arrives first (then None), so a long
        start-up probe never delays reaping or stopping."""
        task = asyncio.ensure_future(coro)
        waker = asyncio.ensure_future(self._wake.wait())
        done, _ = await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waker.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def worker_up(self, worker: WorkerHandle) -> None:
        if worker.healthy_at is not None:
            return  # the main loop and a protocol step may both see it come up
        worker.healthy_at = time.monotonic()
        self.state = State.SERVING
        self.reason = None
        log.info("worker.healthy", pid=worker.pid,
                 start_s=round(worker.healthy_at - worker.started_at, 3))
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready("serving")

    # -- spawn -------------------------------------------------------------------------------

    async def _spawn_if_due(self) -> None:
        if self.worker is not None or self._stopping or self.state == State.CRASH_LOOP:
            return
        if self.held_by is not None or time.monotonic() < self.next_start:
            return
        await self._spawn()

    async def spawn_now(self) -> None:
        """Start a worker at once (a protocol restarting it after a restore)."""
        self.state = State.STARTING
        self.next_start = 0.0
        await self._spawn()

    async def _spawn(self) -> None:
        await self._fallback.stop()
        if self._promote_standby():
            return
        self.worker = await WorkerHandle.spawn(self.settings, self._sock,
                                               self.read_only_reason)
        self._spawn_task(self._wait_exit(self.worker))
        log.info("worker.started", pid=self.worker.pid, restarts=self.restarts.restarts)

    # -- the warm standby --------------------------------------------------------------------

    def _standby_usable(self) -> bool:
        """A standby may be promoted, or kept, only while no protocol owns the worker's
        lifecycle: not while one holds it (a restore), not while the database is suspect
        (after a corruption exit), not in a crash loop, a restore or a stop."""
        return (self.settings.standby and not self._stopping and self.held_by is None
                and self.state not in (State.CRASH_LOOP, State.RESTORING, State.STOPPING)
                and self.engine.active(corruption.SPEC.name) is None)

    def _promote_standby(self) -> bool:
        """Make the standby the worker (it takes writer.lock, opens the database, binds
        worker.sock and serves in the mode sent now); False when there is none to use."""
        standby, self.standby = self.standby, None
        if standby is None:
            return False
        if not self._standby_usable() or not standby.promote(self.read_only_reason):
            self._spawn_task(standby.stop(self.settings.drain_timeout))
            return False
        self.worker = standby
        self.promotions += 1
        log.info("worker.promoted", pid=standby.pid, restarts=self.restarts.restarts,
                 mode="read-only" if self.read_only_reason else "read-write",
                 standby_age_s=round(standby.promoted_at - standby.ready_at, 3)
                 if standby.ready_at else None)
        return True

    async def _keep_standby(self) -> None:
        """Retire the standby when it may not be used; start one once a worker serves."""
        if self.standby is not None:
            if not self._standby_usable():
                await self.retire_standby("a protocol owns the worker" if self.held_by
                                          else f"state {self.state}")
            return
        worker = self.worker
        if (not self._standby_usable() or worker is None or not worker.healthy
                or self.state != State.SERVING or time.monotonic() < self._standby_after):
            return
        standby = await WorkerHandle.spawn(self.settings, self._sock, None, standby=True)
        self.standby = standby
        self._spawn_task(self._wait_exit(standby))
        self._spawn_task(self._standby_ready(standby, standby.watch_ready()))
        log.info("standby.started", pid=standby.pid)

    async def _standby_ready(self, standby: WorkerHandle, ready: asyncio.Task) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            if await ready:
                rss = standby.rss_bytes()
                log.info("standby.ready", pid=standby.pid,
                         start_s=round(standby.ready_at - standby.started_at, 3),
                         rss_mb=round(rss / 2**20, 1) if rss else None)

    def _reap_standby(self) -> None:
        standby = self.standby
        if standby is None or not standby.exited:
            return
        self.standby = None
        standby.close_channel()
        log.warning("standby.exited", pid=standby.pid, reason=standby.exit_reason(),
                    retry_in_s=STANDBY_RETRY)
        self._standby_after = time.monotonic() + STANDBY_RETRY

    async def retire_standby(self, reason: str, wait: bool = False) -> None:
        """Stop the standby (a reload replaces it; corruption, a protocol's hold, a crash
        loop or a stop may not use it); the next one starts once a worker serves again.
        Its exit is awaited only on stop: the loop has records to flush meanwhile."""
        standby, self.standby = self.standby, None
        if standby is None:
            return
        log.info("standby.retired", pid=standby.pid, reason=reason)
        stopping = standby.stop(self.settings.drain_timeout)
        if wait:
            await stopping
        else:
            self._spawn_task(stopping)

    async def _wait_exit(self, worker: WorkerHandle) -> None:
        await worker.wait()
        self._wake.set()

    async def stop_worker(self, kill: bool = False) -> None:
        worker = self.worker
        if worker is None:
            return
        if await worker.stop(self.settings.drain_timeout, kill) is None:
            log.error("worker.drain_timeout", pid=worker.pid)
        self.worker = None
        log.info("worker.stopped", pid=worker.pid, code=worker.proc.returncode)

    # -- records the worker writes for us ----------------------------------------------------

    def record_event(self, event_type: str, severity: str, title: str,
                     description: str) -> dict[str, Any]:
        record = incidents.event_record(event_type, severity, title, description)
        # A catastrophe is a `critical` line, a major incident an `error` one.
        log_at = log.critical if severity == "critical" else (
            log.error if severity == "major" else log.warning)
        log_at("catastrophe.recorded", type=event_type, severity=severity, title=title,
               description=description)
        self.outbox.put(record)
        if severity == "critical":
            self.alert({"type": "catastrophe_event", "event": record})
        return record

    def queue_record(self, record: dict[str, Any]) -> None:
        self.outbox.put(record)
        self._wake.set()

    def disk_state(self, full: bool, detail: str | None) -> None:
        """The worker's writes failed for lack of space (full) or work again: one event per
        episode, resolved when space returns."""
        if full and self._disk_event is None:
            self._disk_event = self.record_event(
                "disk_full", "critical", "Disk full: writes refused",
                f"the worker cannot write: {detail}; writes get 507 until space returns")
        elif not full and self._disk_event is not None:
            self.outbox.put(incidents.resolved(self._disk_event,
                                               "space returned; writes resumed"))
            self._disk_event = None
            self.wake()

    async def _flush_records(self) -> None:
        worker = self.worker
        if not self.outbox.pending or worker is None or worker.healthy_at is None:
            return
        try:
            sent = await self.outbox.flush(
                lambda batch: worker.call("POST", "/internal/records", {"records": batch}))
        except (control.Unreachable, control.ControlError) as exc:
            log.warning("supervisor.records_flush_failed", error=str(exc),
                        pending=len(self.outbox))
            return
        log.info("supervisor.records_flushed", records=sent)

    # -- alerts, background tasks ------------------------------------------------------------

    def alert(self, payload: dict[str, Any]) -> None:
        """Each hook call runs on its own, bounded by alert_timeout, so one slow hook delays
        neither recovery nor the next alert (payloads carry the run state to order them)."""
        if self.settings.alert_command or self.settings.alert_webhook:
            self._spawn_task(alerts.send(self.settings, payload))

    def _spawn_task(self, coro) -> asyncio.Task:
        """A background task kept until it ends (then forgotten: no pile-up)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- systemd and status ------------------------------------------------------------------

    async def _watchdog_pings(self) -> None:
        """WATCHDOG=1 from the event loop itself, so a frozen loop stops pinging; in a crash
        loop the pings stop so systemd's own restart policy takes over."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            if self.state != State.CRASH_LOOP:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _report_status(self) -> None:
        now = time.monotonic()
        worker = self.worker
        if worker is None or worker.healthy_at is None or now - self._status_at < STATUS_REFRESH:
            return
        self._status_at = now
        try:
            self.worker_status = await worker.call("GET", "/internal/status")
        except (control.Unreachable, control.ControlError):
            return
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        return status.line(self)

    def status(self) -> dict[str, Any]:
        return status.snapshot(self)

    async def fresh_status(self) -> dict[str, Any]:
        """`meshd status` reads the worker now rather than the figures of the last periodic
        refresh, so a mode change or the end of a restore shows at once."""
        worker = self.worker
        if worker is not None and worker.healthy_at is not None:
            try:
                self.worker_status = await asyncio.wait_for(
                    worker.call("GET", "/internal/status"), FRESH_STATUS_TIMEOUT)
            except (control.Unreachable, control.ControlError, TimeoutError):
                pass  # a busy worker: the last figures, with their age in the answer
            else:
                self._status_at = time.monotonic()
        return status.snapshot(self)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def health_url(self) -> str:
        return f"http://{probe_host(self.settings.host)}:{self.port}/health"

    @property
    def crash_looping(self) -> bool:
        return self.state == State.CRASH_LOOP

    # -- fallback 503 on the shared socket ---------------------------------------------------

    async def _serve_fallback(self, reason: str) -> None:
        self.reason = reason
        await self._fallback.start(reason)

    def _unavailable_body(self) -> dict[str, Any]:
        return {"error": f"meshd is unavailable: {self.reason}", "status": str(self.state),
                "mode": "unavailable"}

    async def enter_restoring(self) -> None:
        """No worker until a restore ends; agents get 503 "restoring the database"."""
        self.state = State.RESTORING
        await self._serve_fallback("restoring the database")

    # -- start-up check, signals, reload, shutdown -------------------------------------------

    def _read_stale_pid(self) -> int | None:
        """A pid file we could take the lock over means the last run did not stop cleanly."""
        try:
            text = self._pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else 0

    async def _check_after_unclean_stop(self, old_pid: int) -> None:
        problems = (await self.actions.quick_check()
                    if self.on_postgresql or self.settings.database.exists() else [])
        log.warning("supervisor.unclean_stop_detected", previous_pid=old_pid,
                    quick_check="ok" if not problems else problems[:5])
        event = self.record_event(
            "server_down", "major", "Unclean shutdown detected",
            f"the previous meshd (pid {old_pid}) stopped without a clean shutdown; "
            f"quick_check: {'ok' if not problems else '; '.join(problems[:5])}")
        if problems and not self.on_postgresql:
            self.start_corruption_protocol(
                f"quick_check failed at start after an unclean stop: {'; '.join(problems[:3])}")
        else:
            self.outbox.put(incidents.resolved(event, "quick_check ok; serving"))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)

    def wake(self) -> None:
        """Run the next tick now (a protocol or an operator changed something)."""
        self._wake.set()

    def idle_for_maintenance(self) -> bool:
        """Backups and checks run while a worker serves and no restore owns it."""
        return (self.state == State.SERVING and self.held_by is None
                and self.engine.active(corruption.SPEC.name) is None
                and (postgres.is_url(self.settings.database)
                     or self.settings.database.exists()))

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    async def _apply_reload(self) -> None:
        if not self._reload:
            return
        self._reload = False
        try:
            new = config.load(self.flags)
        except config.ConfigError as exc:
            log.error("supervisor.reload_failed", error=str(exc))
            return
        if (new.host, new.port, new.data_dir) != (self.settings.host, self.settings.port,
                                                   self.settings.data_dir):
            log.warning("supervisor.reload_needs_restart",
                        detail="host, port and data_dir change only with a restart")
            new = new.replace(host=self.settings.host, port=self.settings.port,
                              data_dir=self.settings.data_dir, database=self.settings.database)
        self.settings = new
        self.restarts.policy = self._policy()
        log.info("supervisor.reloaded")
        await self.retire_standby("reload: started with the old settings")
        await self.stop_worker()  # the next tick starts a worker with the new settings

    async def _shutdown(self) -> None:
        self.state = State.STOPPING
        self.notifier.stopping()
        log.info("supervisor.stopping")
        self.maintenance.stop()
        await self.leadership.stop()  # another node is elected while this one drains
        await self.replication.stop()
        await self._fallback.stop()
        await self.retire_standby("stopping", wait=True)
        await self.stop_worker()
        for task in list(self._tasks):
            task.cancel()
        if self._control:
            await self._control.cleanup()
        for path in (self.settings.control_socket, self._pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._sock.close()
        self._lock.release()
        self.notifier.close()
        log.info("supervisor.stopped", pending_records=len(self.outbox))

    # -- what the control socket asks of the supervisor --------------------------------------

    def start_corruption_protocol(self, reason: str, **context: Any) -> Run:
        run = self.engine.start(corruption.SPEC.name, reason, context,
                                title=context.pop("title", None) if context else None)
        self._wake.set()
        return run

    @property
    def on_postgresql(self) -> bool:
        return postgres.is_url(self.settings.database)

    # -- leadership (several nodes on PostgreSQL; a SQLite node always leads) ---------------

    @property
    def leads(self) -> bool:
        """Whether this node runs the once-per-mesh duties now (leader.py)."""
        return self.leadership is not None and self.leadership.leads

    def _leadership_changed(self, leads: bool) -> None:
        """Mesh-wide protocol runs follow the leadership: stopped here at once when it is
        lost; taken up by the leadership loop's next reconciliation (`takeover`) once it is
        won, after the database says which of them another node adopted meanwhile. The
        worker's jobs follow its lease, told at once here and renewed every tick by
        `_lease_worker`."""
        if not leads:
            self.engine.suspend(takeover.mesh_wide, "this node stopped leading")
        self._lease_wake.set()

    def _run_driver(self, run: Run) -> str | None:
        """The node a mesh-wide run's records are fenced with (store/pg_runs.py): this one."""
        return self.leadership.node.node_id if takeover.mesh_wide(run) else None

    def _handed_over(self, start: dict[str, Any]) -> None:
        """A mesh-wide protocol a follower met (its worker detected the fault): run here."""
        takeover.start_handed_over(self.engine, start)
        self._wake.set()

    async def _lease_worker(self) -> None:
        """Tell the serving worker whether it leads and until when, every tick and at once
        on a change; a worker not told again stops leading when its lease runs out."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_wake.wait(), leader.TICK)
            self._lease_wake.clear()
            worker = self.worker
            if worker is None or worker.healthy_at is None or worker.exited:
                continue
            try:
                await worker.call("POST", "/internal/leader", self.leadership.lease(),
                                  timeout=leader.TICK)
            except (control.Unreachable, control.ControlError) as exc:
                log.info("leader.worker_not_told", pid=worker.pid, error=str(exc))

    def start_unreachable_protocol(self, reason: str) -> Run:
        """PostgreSQL could not be reached (joins the run under way, if any)."""
        run = self.engine.start(unreachable.SPEC.name, reason)
        self._wake.set()
        return run

    def release_worker(self, run_id: str) -> None:
        self.actions.release_worker(run_id)

    async def set_mode(self, read_only_reason: str | None) -> None:
        await self.actions.set_mode(read_only_reason)


async def run_supervisor(settings: config.Settings, flags: dict[str, Any]) -> int:
    return await Supervisor(settings, flags).run()
