"""The supervisor (`meshd run`): owns the listening socket, starts the API worker, watches it,
restarts it, and speaks to systemd. It does no API work and writes no SQL while a worker runs.

Its main loop reads top to bottom: reap an exited worker, probe a live one, start one when due,
flush queued records, report to systemd; then sleep until the next tick or an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meshd import config
from meshd import log as logging
from meshd.clock import db_time, new_id
from meshd.control.server import make_control_app
from meshd.locks import FileLock, LockBusy, write_atomic
from meshd.recovery import corruption, crash, unreachable
from meshd.recovery.engine import Engine, Run
from meshd.recovery.protocols import PROTOCOLS
from meshd.store import backups, postgres
from meshd.store import restore as restore_mod
from meshd.supervisor import alerts
from meshd.supervisor.maintenance import Maintenance, last_backup
from meshd.supervisor.restart import Policy, RestartState
from meshd.supervisor.sdnotify import Notifier
from meshd.worker.serve import EXIT_DB_CORRUPT, bind_socket

log = logging.get("meshd.supervisor")

STARTUP_GRACE = 60.0  # a worker may take this long to open (migrate, replay) before probes count
STATUS_REFRESH = 5.0
FALLBACK_AFTER = 1.0  # restarts further away than this serve 503 meanwhile, not a silent backlog


class State(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RESTARTING = "restarting"
    CRASH_LOOP = "crash-loop"
    RESTORING = "restoring"
    STOPPING = "stopping"


@dataclass(eq=False)
class Worker:
    proc: asyncio.subprocess.Process
    started_at: float
    healthy_at: float | None = None
    failures: int = 0
    expected_exit: bool = False
    kill_reason: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Supervisor:
    settings: config.Settings
    flags: dict[str, Any]
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.state = State.STARTING
        self.reason: str | None = None
        self.worker: Worker | None = None
        self.restarts = RestartState(self._policy())
        self.started_at = time.monotonic()
        self.next_start: float = 0.0
        self.read_only_reason: str | None = None
        self.pending: list[dict[str, Any]] = []
        self.worker_status: dict[str, Any] = {}
        self.ready_sent = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._reload = False
        self._lock = FileLock(self.settings.data_dir / "meshd.lock")
        self._pid_file = self.settings.data_dir / "meshd.pid"
        self._records_file = self.settings.data_dir / "supervisor-records.json"
        self._sock = None
        self._fallback: web.AppRunner | None = None
        self._control: web.AppRunner | None = None
        self._status_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.held_by: str | None = None  # a protocol run that owns the worker's lifecycle
        self._disk_event: dict[str, Any] | None = None
        self.last_check: dict[str, Any] | None = None
        self._operator_read_write = asyncio.Event()
        self.engine = Engine(self, self.settings.data_dir / "protocols", PROTOCOLS)
        self.maintenance = Maintenance(self)

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
        self._load_pending()
        self._sock = bind_socket(settings.host, settings.port)
        self._sock.set_inheritable(True)
        await self._start_control()
        self._install_signals()
        log.info("supervisor.started", pid=os.getpid(), host=settings.host,
                 port=self._sock.getsockname()[1], data_dir=str(settings.data_dir),
                 systemd=self.notifier.enabled)
        self._resume_protocols()
        if unclean_pid is not None:
            await self._check_after_unclean_stop(unclean_pid)
        self._spawn_task(self._watchdog_pings())
        self.maintenance.start()
        while not self._stopping:
            await self._reap()
            await self._probe()
            await self._apply_reload()
            await self._spawn_if_due()
            await self._flush_records()
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
        worker = self.worker
        if worker is None or worker.proc.returncode is None:
            return
        self.worker = None
        code = worker.proc.returncode
        if worker.expected_exit:
            log.info("worker.exited", pid=worker.pid, code=code)
            return
        reason = worker.kill_reason or describe_exit(code)
        now = time.monotonic()
        uptime = round(now - worker.started_at, 3)
        log.error("worker.crashed", pid=worker.pid, code=code, reason=reason, uptime_s=uptime)
        if code == EXIT_DB_CORRUPT:
            self.start_corruption_protocol(
                f"worker {worker.pid} exited with the database-corrupt code")
            return
        delay = self.restarts.crashed(now)
        self._crash_protocol(
            f"worker pid {worker.pid} {reason} after {uptime} s; restart "
            + ("stopped (crash loop)" if delay is None else f"in {delay:.2f} s"),
            {"crashed_at": db_time(), "pid": worker.pid, "code": code})
        if delay is None:
            await self._enter_crash_loop(reason)
            return
        self.state = State.RESTARTING
        self.reason = reason
        self.next_start = now + delay
        if delay >= FALLBACK_AFTER:
            await self._start_fallback(f"restarting after a crash ({reason})")

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
        await self._start_fallback(self.reason)

    # -- probe -------------------------------------------------------------------------------

    async def _probe(self) -> None:
        worker = self.worker
        if worker is None or worker.proc.returncode is not None:
            return
        now = time.monotonic()
        starting = worker.healthy_at is None
        timeout = self.settings.probe_timeout
        if starting:
            # A starting worker answers as soon as it accepts: wait for it, within the grace.
            timeout = max(timeout, STARTUP_GRACE - (now - worker.started_at))
        ok = await self._race_wake(self._get_health(timeout))
        if ok is None or worker is not self.worker or worker.proc.returncode is not None:
            return
        if ok:
            worker.failures = 0
            self.restarts.worker_healthy(time.monotonic())
            if starting:
                await self._worker_up(worker)
            return
        if starting and time.monotonic() - worker.started_at < STARTUP_GRACE:
            return
        worker.failures += 1
        log.warning("worker.probe_failed", pid=worker.pid, failures=worker.failures,
                    limit=self.settings.probe_failures)
        if worker.failures >= self.settings.probe_failures:
            worker.kill_reason = (f"was unresponsive ({worker.failures} failed probes of "
                                  f"{self.settings.probe_timeout:g} s)")
            log.error("worker.killing_unresponsive", pid=worker.pid)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()

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

    async def _get_health(self, timeout: float) -> bool:
        host = probe_host(self.settings.host)
        port = self._sock.getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"http://{host}:{port}/health", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _worker_up(self, worker: Worker) -> None:
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

    async def _spawn(self) -> None:
        await self._stop_fallback()
        env = dict(os.environ)
        env.update(MESHD_WORKER_SETTINGS=config.to_json(self.settings),
                   MESHD_SUPERVISOR_PID=str(os.getpid()),
                   MESHD_LISTEN_FD=str(self._sock.fileno()),
                   MESHD_READ_ONLY=self.read_only_reason or "")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "worker", env=env, pass_fds=(self._sock.fileno(),))
        self.worker = Worker(proc, time.monotonic())
        self._spawn_task(self._wait_exit(self.worker))
        log.info("worker.started", pid=proc.pid, restarts=self.restarts.restarts)

    async def _wait_exit(self, worker: Worker) -> None:
        await worker.proc.wait()
        self._wake.set()

    # -- records the worker writes for us ----------------------------------------------------

    def record_event(self, event_type: str, severity: str, title: str,
                      description: str) -> dict[str, Any]:
        record = {"kind": "event", "id": new_id(), "event_type": event_type,
                  "severity": severity, "title": title, "description": description,
                  "affected_agents": [], "recovery_protocol": None, "status": "active",
                  "occurred_at": db_time(), "resolved_at": None}
        self._queue(record)
        if severity == "critical":
            self._alert({"type": "catastrophe_event", "event": record})
        return record

    def _spawn_task(self, coro) -> asyncio.Task:
        """A background task kept until it ends (then forgotten: no pile-up)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _alert(self, payload: dict[str, Any]) -> None:
        """Each hook call runs on its own, bounded by alert_timeout, so one slow hook delays
        neither recovery nor the next alert (payloads carry the run state to order them)."""
        if self.settings.alert_command or self.settings.alert_webhook:
            self._spawn_task(alerts.send(self.settings, payload))

    def disk_state(self, full: bool, detail: str | None) -> None:
        """The worker's writes failed for lack of space (full) or work again: one event per
        episode, resolved when space returns."""
        if full and self._disk_event is None:
            self._disk_event = self.record_event(
                "disk_full", "critical", "Disk full: writes refused",
                f"the worker cannot write: {detail}; writes get 507 until space returns")
        elif not full and self._disk_event is not None:
            self._disk_event.update(status="resolved", resolved_at=db_time(),
                                    resolution_notes="space returned; writes resumed")
            self._queue(self._disk_event)
            self._disk_event = None
            self.wake()

    def _queue(self, record: dict[str, Any]) -> None:
        self.pending = [r for r in self.pending if r["id"] != record["id"]] + [dict(record)]
        self._save_pending()

    def _save_pending(self) -> None:
        try:
            write_atomic(self._records_file, orjson.dumps(self.pending))
        except OSError as exc:  # a full disk: kept in memory, saved with the next record
            log.warning("supervisor.records_not_saved", error=str(exc),
                        pending=len(self.pending))

    def _load_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            self.pending = orjson.loads(self._records_file.read_bytes())

    async def _flush_records(self) -> None:
        if not self.pending or self.worker is None or self.worker.healthy_at is None:
            return
        batch = list(self.pending)
        try:
            await self._worker_call("POST", "/internal/records", {"records": batch})
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            log.warning("supervisor.records_flush_failed", error=str(exc), pending=len(batch))
            return
        flushed = {id(r) for r in batch}
        self.pending = [r for r in self.pending if id(r) not in flushed]
        self._save_pending()
        log.info("supervisor.records_flushed", records=len(batch))

    async def _worker_call(self, method: str, path: str, body: Any = None) -> Any:
        connector = aiohttp.UnixConnector(path=str(self.settings.worker_socket))
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, f"http://worker{path}", json=body, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"worker answered {resp.status}: {data}")
            return data

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
            self.worker_status = await self._worker_call("GET", "/internal/status")
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError):
            return
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        if self.state != State.SERVING:
            return f"{self.state}: {self.reason or ''}".strip()
        ws = self.worker_status
        line = f"serving {ws.get('mode', 'read-write')}, {ws.get('agents', '?')} agents"
        last = last_backup(self.settings.backup_dir)
        if last:
            line += f", last backup {last['age_s'] // 60:.0f} min ago"
        return line

    def status(self) -> dict[str, Any]:
        worker = self.worker
        ws = self.worker_status if worker and worker.healthy_at else {}
        open_events = ws.get("open_events")
        pending_open = sum(1 for r in self.pending if r.get("status") != "resolved")
        return {
            "supervisor_pid": os.getpid(),
            "worker_pid": worker.pid if worker else None,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "worker_uptime_s": round(time.monotonic() - worker.started_at, 3) if worker
            else None,
            "restarts": self.restarts.restarts,
            "state": str(self.state),
            "reason": self.reason,
            "mode": ws.get("mode") or ("unavailable" if self.state != State.SERVING
                                       else "read-write"),
            "last_backup": last_backup(self.settings.backup_dir),
            "last_check": self.maintenance.last_check,
            "protocol_runs": [r.public() | {"steps": len(r.steps)} for r in
                              self.engine.runs.values() if r.outcome == "running"],
            "open_events": (open_events or 0) + pending_open if open_events is not None
            else pending_open,
            "pending_records": len(self.pending),
            "agents": ws.get("agents"),
            "listen": f"{self.settings.host}:{self._sock.getsockname()[1]}",
            "data_dir": str(self.settings.data_dir.resolve()),
            "database": (postgres.redact(self.settings.database)
                         if postgres.is_url(self.settings.database)
                         else str(self.settings.database.resolve())),
        }

    # -- fallback 503 on the shared socket ---------------------------------------------------

    async def _start_fallback(self, reason: str) -> None:
        self.reason = reason
        if self._fallback is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._fallback_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        # A duplicate of the socket: stopping the site closes the duplicate, not ours.
        await web.SockSite(runner, self._sock.dup()).start()
        self._fallback = runner
        log.info("supervisor.fallback_serving", reason=reason)

    async def _fallback_handler(self, request: web.Request) -> web.Response:
        body = {"error": f"meshd is unavailable: {self.reason}", "status": str(self.state),
                "mode": "unavailable"}
        return web.json_response(body, status=503, headers={
            "Retry-After": "5", "Access-Control-Allow-Origin": "*"})

    async def _stop_fallback(self) -> None:
        if self._fallback is not None:
            runner, self._fallback = self._fallback, None
            await runner.cleanup()

    # -- control socket ----------------------------------------------------------------------

    async def _start_control(self) -> None:
        runner = web.AppRunner(make_control_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        path = self.settings.control_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o600)
        self._control = runner

    # -- start-up check, signals, reload, shutdown -------------------------------------------

    def _read_stale_pid(self) -> int | None:
        """A pid file we could take the lock over means the last run did not stop cleanly."""
        try:
            text = self._pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else 0

    async def _check_after_unclean_stop(self, old_pid: int) -> None:
        database = self.settings.database
        problems = (await asyncio.to_thread(backups.integrity, database, False)
                    if postgres.is_url(database) or database.exists() else [])
        log.warning("supervisor.unclean_stop_detected", previous_pid=old_pid,
                    quick_check="ok" if not problems else problems[:5])
        event = self.record_event(
            "server_down", "major", "Unclean shutdown detected",
            f"the previous meshd (pid {old_pid}) stopped without a clean shutdown; "
            f"quick_check: {'ok' if not problems else '; '.join(problems[:5])}")
        if problems and not postgres.is_url(database):
            self.start_corruption_protocol(
                f"quick_check failed at start after an unclean stop: {'; '.join(problems[:3])}")
        else:
            event.update(status="resolved", resolved_at=db_time(),
                         resolution_notes="quick_check ok; serving")
            self._queue(event)

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
        await self._stop_worker()  # the next tick starts a worker with the new settings

    async def _stop_worker(self, kill: bool = False) -> None:
        worker = self.worker
        if worker is None:
            return
        worker.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.proc.wait(), self.settings.drain_timeout + 5)
        except TimeoutError:
            log.error("worker.drain_timeout", pid=worker.pid)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()
        self.worker = None
        log.info("worker.stopped", pid=worker.pid, code=worker.proc.returncode)

    async def _shutdown(self) -> None:
        self.state = State.STOPPING
        self.notifier.stopping()
        log.info("supervisor.stopping")
        self.maintenance.stop()
        await self._stop_fallback()
        await self._stop_worker()
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
        log.info("supervisor.stopped", pending_records=len(self.pending))

    # -- protocols: the engine's host --------------------------------------------------------

    def queue_record(self, record: dict[str, Any]) -> None:
        self._queue(record)
        self._wake.set()

    async def publish(self, event: dict[str, Any]) -> None:
        """A protocol transition: to the agents on the WebSocket (when a worker serves) and to
        the operator's alert hooks."""
        self._alert(event)
        if self.worker is not None and self.worker.healthy_at is not None:
            await self._worker_call("POST", "/internal/publish", {"event": event})

    def _crash_protocol(self, description: str, context: dict[str, Any]) -> None:
        """Every crash goes through Server Crash Recovery; crashes during a run join it."""
        run = self.engine.active(crash.SPEC.name)
        if run is None:
            self.engine.start(crash.SPEC.name, description, {**context, "crashes": 1})
            return
        run.context["crashes"] = run.context.get("crashes", 1) + 1
        run.event["description"] = f"{run.event.get('description')}; then {description}"
        self.engine.save(run)

    async def wait_for_healthy_worker(self) -> str:
        while True:
            if self.state == State.CRASH_LOOP:
                raise RuntimeError(self.reason or "crash loop")
            worker = self.worker
            if worker is not None and worker.healthy_at is not None:
                return f"worker {worker.pid} healthy"
            await asyncio.sleep(0.1)

    async def quick_check(self) -> list[str]:
        return await asyncio.to_thread(backups.integrity, self.settings.database, False)

    async def complete_update(self, update_id: str) -> None:
        self.queue_record({"kind": "update_complete", "id": f"update-complete-{update_id}",
                           "update_id": update_id, "completed_at": db_time()})

    def _resume_protocols(self) -> None:
        for run in self.engine.resume_unfinished():
            if run.protocol != corruption.SPEC.name:
                continue
            order = list(corruption.Corruption)
            if order.index(run.state) < order.index(corruption.Corruption.READ_ONLY):
                self.held_by = run.id  # restore not finished: no worker until it is
            else:
                self.read_only_reason = "restored from backup; self-test pending"

    def start_corruption_protocol(self, reason: str, **context: Any) -> Run:
        run = self.engine.start(corruption.SPEC.name, reason, context,
                                title=context.pop("title", None) if context else None)
        self._wake.set()
        return run

    @property
    def on_postgresql(self) -> bool:
        return postgres.is_url(self.settings.database)

    def start_unreachable_protocol(self, reason: str) -> Run:
        """PostgreSQL could not be reached (joins the run under way, if any)."""
        run = self.engine.start(unreachable.SPEC.name, reason)
        self._wake.set()
        return run

    async def database_check(self, full: bool) -> list[str]:
        return await asyncio.to_thread(backups.integrity, self.settings.database, full)

    def hold_worker(self, run_id: str) -> None:
        self.held_by = run_id

    def release_worker(self, run_id: str) -> None:
        if self.held_by == run_id:
            self.held_by = None

    async def stop_worker_for(self, run_id: str) -> str:
        self.hold_worker(run_id)
        self.state = State.RESTORING
        await self._start_fallback("restoring the database")
        if self.worker is None:
            return "no worker was running"
        pid = self.worker.pid
        # Killed, not drained: a clean close would checkpoint the WAL into the corrupt file
        # and delete the -wal and -shm that forensics need. Every acknowledged write is in
        # the journal, so nothing acknowledged is lost; requests in flight are not answered.
        await self._stop_worker(kill=True)
        return f"worker {pid} stopped"

    async def restore_database(self, run: Run):
        """Restore in a process of its own: replaying the journal is Python work, and here it
        would share the GIL with the loop answering 503 to every agent meanwhile."""
        lock = FileLock(self.settings.data_dir / "writer.lock")
        await asyncio.to_thread(lock.acquire, 30)
        try:
            to_time = run.context.get("to_time")
            job = functools.partial(
                restore_mod.restore, self.settings.database, self.settings.data_dir / "journal",
                self.settings.backup_dir, self.settings.data_dir,
                backup_name=run.context.get("backup"),
                to_time=datetime.fromisoformat(to_time) if to_time else None)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context, initializer=logging.configure,
                                     initargs=(self.settings.log_format,
                                               self.settings.log_level, "restore")) as pool:
                return await asyncio.get_running_loop().run_in_executor(pool, job)
        finally:
            lock.release()

    async def verify_database(self) -> str:
        """The file in place, as it is now (header, size, quick_check): the full
        integrity_check already ran on it under its temporary name during the restore."""
        problems = await asyncio.to_thread(backups.integrity, self.settings.database, False)
        if problems:
            raise RuntimeError(f"the restored database failed its check: {problems[:3]}")
        return "integrity_check ok before the rename, quick_check ok in place"

    async def start_worker_read_only(self, run_id: str, reason: str) -> str:
        self.read_only_reason = reason
        if self.worker is None:
            self.state = State.STARTING
            self.next_start = 0.0
            await self._spawn()
        self.release_worker(run_id)
        worker = self.worker
        if not await self._get_health(STARTUP_GRACE):
            raise RuntimeError("the restarted worker did not answer /health")
        if worker.healthy_at is None:
            await self._worker_up(worker)
        await self._worker_call("POST", "/internal/mode",
                                {"mode": "read-only", "reason": reason})
        return f"worker {worker.pid} serving read-only"

    async def self_test(self) -> str:
        """Critical endpoints over HTTP with the agents' key, then the write path in a
        transaction that is rolled back."""
        host = probe_host(self.settings.host)
        port = self._sock.getsockname()[1]
        headers = {"X-API-Key": self.settings.api_key}
        expected = {"/health": 200, "/readyz": 503, "/api/agents?limit=1": 200,
                    "/api/catastrophe?limit=1": 200, "/api/health/dashboard?limit=1": 200}
        async with aiohttp.ClientSession(headers=headers) as session:
            for path, status in expected.items():
                async with session.get(f"http://{host}:{port}{path}",
                                       timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status != status:
                        raise RuntimeError(f"GET {path} answered {resp.status}, not {status}")
        result = await self._worker_call("POST", "/internal/selftest")
        return f"{len(expected)} endpoints and write path ({', '.join(result['checks'])}) ok"

    async def enable_writes(self, run_id: str) -> str:
        if not self.settings.auto_read_write and self.read_only_reason:
            log.warning("protocol.waiting_for_operator", run_id=run_id,
                        detail="run `meshd mode read-write` to take writes again")
            self._operator_read_write.clear()
            await self._operator_read_write.wait()
        await self.set_mode(None)
        return "read-write"

    async def set_mode(self, read_only_reason: str | None) -> None:
        self.read_only_reason = read_only_reason
        if self.worker is not None and self.worker.healthy_at is not None:
            body = ({"mode": "read-only", "reason": read_only_reason} if read_only_reason
                    else {"mode": "read-write"})
            await self._worker_call("POST", "/internal/mode", body)
        if read_only_reason is None:
            self._operator_read_write.set()
        log.info("supervisor.mode", mode="read-only" if read_only_reason else "read-write",
                 reason=read_only_reason)



def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    if code == EXIT_DB_CORRUPT:
        return "exited: database corrupt"
    return f"exited with code {code}"


def probe_host(host: str) -> str:
    if host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def run_supervisor(settings: config.Settings, flags: dict[str, Any]) -> int:
    return await Supervisor(settings, flags).run()
