"""The API worker: opens the store, serves HTTP + /ws on a socket, drains on SIGTERM.

It is the only SQL writer while it runs (it holds `data/writer.lock`). Under the supervisor it
serves on the listening socket it inherits (so restarts refuse no connection), answers the
supervisor on `data/worker.sock`, and exits when its parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from meshd import incidents
from meshd import log as logging
from meshd.api.app import make_app
from meshd.api.ws import Hub
from meshd.config import Settings
from meshd.control import client as control
from meshd.http_server import GuardedAppRunner
from meshd.locks import FileLock
from meshd.process import EXIT_DB_CORRUPT, bind_socket
from meshd.store import backups, dburl, records
from meshd.store.base import Storage
from meshd.store.sqlite import SqliteStorage, is_corruption
from meshd.worker import jobs, standby
from meshd.worker.internal import make_internal_app
from meshd.worker.leadership import Lease
from meshd.worker.replica_sync import ReplicaSync
from meshd.worker.supervisor_client import SupervisorClient

T = TypeVar("T")

log = logging.get("meshd.worker")

PARENT_POLL = 0.5
_PR_SET_PDEATHSIG = 1
_M_MMAP_THRESHOLD = -3


def open_storage(settings: Settings, on_corruption: Callable[[str], None] | None = None,
                 on_disk: Callable[[str | None], None] | None = None,
                 on_unreachable: Callable[[str | None], None] | None = None) -> Storage:
    """The backend the `database` setting names: a postgresql:// URL or a SQLite file."""
    if dburl.is_url(settings.database):
        from meshd.store import postgres  # only on PostgreSQL: psycopg is 12 MB

        return postgres.PostgresStorage(str(settings.database), readers=settings.readers,
                                        writers=settings.readers, on_unreachable=on_unreachable)
    return SqliteStorage(settings.database, settings.data_dir / "journal",
                         readers=settings.readers, on_corruption=on_corruption,
                         on_disk=on_disk)


def return_large_buffers_to_the_os() -> None:
    """glibc keeps freed multi-megabyte buffers (a 20 MiB upload) in its heap; served from
    mmap instead they go back to the OS when freed, so RSS does not ratchet up per upload."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a kill -9 of the supervisor);
    the parent-pid poll in `serve` covers other platforms."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker.parent_gone", parent_pid=parent)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL)


async def report_corruption(settings: Settings, detail: str) -> None:
    """Tell the supervisor (it runs the Database Corruption protocol); when it cannot be
    reached, exit with the reserved code so it learns from the exit status instead."""
    try:
        await control.request(settings.control_socket, "POST", "/control/corruption",
                              {"detail": detail, "pid": os.getpid()}, timeout=2)
        return
    except (control.Unreachable, control.ControlError) as exc:
        log.error("worker.corruption_report_failed", error=str(exc))
    log.error("worker.exit_db_corrupt", code=EXIT_DB_CORRUPT)
    os._exit(EXIT_DB_CORRUPT)


async def take_baseline_backup(settings: Settings, storage: Storage) -> str | None:
    """Before the first write is accepted (and after a migration), make sure a verified
    backup of this journal epoch exists, so the journal always has a base to replay onto.
    The error when none could be written, else None."""
    if dburl.is_url(settings.database):
        return None  # no meshd journal to replay onto a base: PostgreSQL's WAL is the durability
    epoch = storage.journal_epoch
    try:
        has_base = any(m.verified and m.journal_epoch == epoch
                       for m in backups.list_backups(settings.backup_dir))
    except OSError:
        has_base = False
    migrated = storage.migration is not None and storage.migration.migrated
    if has_base and not migrated:
        return None
    try:
        await storage.backup(settings.backup_dir,
                             "baseline after migration" if migrated else "baseline")
    except backups.BackupError as exc:
        log.error("backup.baseline_failed", error=str(exc))
        return str(exc)
    return None


async def refuse_writes_without_baseline(storage: Storage, problem: str) -> dict:
    """Without a base the journal alone cannot restore anything, so writes wait: reads are
    served and writes get 503; the event saying why is recorded before serving starts."""
    reason = f"no verified baseline backup could be written ({problem})"
    storage.set_read_only(reason)
    event = incidents.event_record("backup_failed", "critical",
                                   "Baseline backup failed: writes refused", reason)
    await storage.write_internal(records.upsert_event, event)
    return event


async def _retry_baseline(settings: Settings, storage: Storage, event: dict) -> None:
    """Retry until a baseline backup works (space came back, the directory was fixed); then
    writes resume by themselves and the event is resolved."""
    reason = event["description"]
    while await take_baseline_backup(settings, storage) is not None:
        await asyncio.sleep(settings.baseline_retry)
    if storage.read_only_reason == reason:
        storage.set_read_only(None)
        log.info("backup.baseline_recovered", detail="writes resume")
    await storage.write_internal(records.upsert_event, incidents.resolved(
        event, "baseline backup written; writes resumed"))


async def serve(
    settings: Settings,
    sock: socket.socket | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], Awaitable[None] | None] | None = None,
    *,
    supervised: bool = False,
    read_only_reason: str | None = None,
    parent_pid: int | None = None,
    journal_scan: Any = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then drain and close the store."""
    stop = stop or asyncio.Event()
    logging.add_secrets(settings.api_key, settings.admin_key)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    writer_lock = FileLock(settings.data_dir / "writer.lock")
    # A worker being replaced may still be draining: wait for it to let go of the writer role.
    await asyncio.to_thread(writer_lock.acquire, settings.drain_timeout + 10)

    def on_corruption(detail: str) -> None:
        if supervised:
            loop.create_task(report_corruption(settings, detail))

    supervisor_client = SupervisorClient(settings, supervised)

    def on_disk(detail: str | None) -> None:
        # The supervisor records (and later resolves) the event: the database cannot now.
        supervisor_client.report("/control/storage",
                                 {"state": "full" if detail else "ok", "detail": detail})

    def on_unreachable(detail: str | None) -> None:
        # PostgreSQL: the supervisor runs Database Unreachable (it joins a run under way).
        if detail:
            supervisor_client.report("/control/database-unreachable", {"detail": detail})

    storage = open_storage(settings, on_corruption, on_disk, on_unreachable)
    if journal_scan is not None and isinstance(storage, SqliteStorage):
        storage.journal_scan = journal_scan  # a promoted standby's read-ahead
    if supervised and settings.replica_sync:
        storage.replica_sync = ReplicaSync(settings)
    await storage.start()
    storage.set_read_only(read_only_reason)
    baseline_problem = await take_baseline_backup(settings, storage)
    baseline_event = (await refuse_writes_without_baseline(storage, baseline_problem)
                      if baseline_problem else None)
    hub = Hub()
    # Several nodes on PostgreSQL: the once-per-mesh jobs wait for the supervisor's lease.
    lease = Lease(always=not (supervised and dburl.is_url(settings.database)))
    app = make_app(settings, storage, hub, supervisor=supervisor_client)
    runner = GuardedAppRunner(app, header_timeout=settings.header_timeout, access_log=None,
                              handle_signals=False, shutdown_timeout=settings.drain_timeout)
    await runner.setup()
    sock = sock or bind_socket(settings.host, settings.port)
    await web.SockSite(runner, sock).start()
    internal_runner = None
    if supervised:
        internal_runner = web.AppRunner(make_internal_app(app, lease), access_log=None,
                                        handle_signals=False)
        await internal_runner.setup()
        with contextlib.suppress(FileNotFoundError):
            settings.worker_socket.unlink()
        await web.UnixSite(internal_runner, str(settings.worker_socket)).start()
        os.chmod(settings.worker_socket, 0o600)
    port = sock.getsockname()[1]
    background = jobs.start(settings, storage, supervisor_client, lease)
    if baseline_event:
        background.append(asyncio.create_task(_retry_baseline(settings, storage, baseline_event)))
    if supervised:
        background.append(asyncio.create_task(_watch_parent(parent_pid or os.getppid(), stop)))
    log.info("worker.serving", host=settings.host, port=port, pid=os.getpid(),
             database=str(settings.database), mode="read-only" if read_only_reason
             else "read-write")
    if on_ready:
        result = on_ready(port)
        if asyncio.iscoroutine(result):
            await result
    await stop.wait()
    started = time.monotonic()
    log.info("worker.draining", timeout_s=settings.drain_timeout)
    await jobs.stop(background)
    await runner.cleanup()  # stops accepting, waits for in-flight requests, closes sockets
    if internal_runner:
        await internal_runner.cleanup()
    await storage.close()
    writer_lock.release()
    log.info("worker.stopped", drain_s=round(time.monotonic() - started, 3),
             journal_seq=storage.journal_seq)


def run_loop(settings: Settings) -> Callable[[Coroutine[Any, Any, T]], T]:
    """The worker's event loop: uvloop (libuv) unless the settings ask for asyncio's own.
    The profile of every scenario had the asyncio loop itself (callbacks, transports, thread
    hand-offs) as the largest share of the worker's CPU (docs/performance.md)."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def run_supervised() -> int:
    """Entry of `meshd worker`: settings, socket and mode come from the supervisor."""
    from meshd import config

    settings = config.from_json(os.environ["MESHD_WORKER_SETTINGS"])
    logging.configure(settings.log_format, settings.log_level, process="worker")
    die_with_parent()
    supervisor_pid = int(os.environ.get("MESHD_SUPERVISOR_PID", os.getppid()))
    if os.getppid() != supervisor_pid:
        # The supervisor died before PR_SET_PDEATHSIG was set: we were orphaned already.
        log.error("worker.parent_gone", parent_pid=supervisor_pid)
        return 1
    return_large_buffers_to_the_os()
    fd = int(os.environ["MESHD_LISTEN_FD"])
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    reason = os.environ.get("MESHD_READ_ONLY") or None
    run = run_loop(settings)  # imports the event loop's module: a standby does it ahead
    journal_scan = None
    channel_fd = os.environ.get("MESHD_STANDBY_FD")
    if channel_fd:
        # A warm standby: everything is imported; wait, touching nothing, until promoted.
        log.info("standby.waiting", pid=os.getpid())
        promotion = standby.wait_for_promotion(socket.socket(fileno=int(channel_fd)),
                                               settings.data_dir / "journal")
        if promotion is None:
            log.info("standby.channel_closed", pid=os.getpid())
            return 0
        reason = promotion.read_only_reason
        journal_scan = promotion.journal_scan
        log.info("standby.promoted", pid=os.getpid(),
                 mode="read-only" if reason else "read-write")
    try:
        run(serve(settings, sock, supervised=True, read_only_reason=reason,
                  parent_pid=supervisor_pid, journal_scan=journal_scan))
    except Exception as exc:
        log.exception("worker.failed")
        return EXIT_DB_CORRUPT if is_corruption(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(run_supervised())
