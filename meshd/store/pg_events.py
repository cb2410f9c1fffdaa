"""Events across meshd nodes on PostgreSQL: ids in commit order, and one ordered stream per worker.

Ids in commit order. A write's events get their rows at pre-commit time (after its write
function ran), under one transaction-level advisory lock shared by every node
(`EVENTS_LOCK`), then the transaction notifies `meshd_events` with its last id and commits.
The lock is held until the COMMIT ends, so an event with a higher id always commits after
every lower one has committed or aborted: any snapshot shows a prefix of the id order, with
gaps only where a transaction aborted after taking its ids. (PostgreSQL already serializes
the commits of transactions that NOTIFY; the lock extends that to the id assignment.) A write
with no events takes no lock.

One ordered stream. `EventPump` turns this node's committed events (handed over after
COMMIT) and the notifications of every node (`Listener`, one LISTEN connection) into one
gapless, duplicate-free sequence for the hub: it keeps `last_id`, the highest id it handed on;
whatever arrives is handed on only once everything below it has been, reading what it lacks
from the events table. A notification or a MAX(id) seen in a snapshot proves that every lower
id has committed or aborted, so a read up to it is complete. The payload is only the id
(NOTIFY payloads are capped at 8000 bytes). A node skips the notifications of its own write
connections (by backend pid): the hand-over after COMMIT carries the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
from psycopg.rows import dict_row

from meshd import log as logging
from meshd.store import event_log
from meshd.store.events import Encoded

log = logging.get("meshd.store.pg_events")

CHANNEL = "meshd_events"
EVENTS_LOCK = 0x6D6573686576  # "meshev": serializes event ids and their commits, mesh-wide
READ_PAGE = 1000
POLL_INTERVAL = 3.0  # the safety poll: one indexed MAX(id) query
RETRY_DELAY = 0.5  # after a failed read, before the pump tries again
READ_TIMEOUT = 10.0
RECONNECT_MAX = 5.0
CONNECT_TIMEOUT = 5

_INSERT_HEAD = "INSERT INTO events (type, data, audience, created_at) VALUES "
_INSERT_TAIL = (" RETURNING id) SELECT array_agg(id ORDER BY id) AS ids,"
                f" pg_notify('{CHANNEL}', max(id)::text) FROM ins")


def commit_with_events(conn: psycopg.Connection, events: list[Encoded], now: str
                       ) -> list[Encoded]:
    """Rows for a transaction's events, then its COMMIT: under EVENTS_LOCK (held until the
    COMMIT ends), one INSERT that also notifies the last id, then COMMIT; the events with
    their ids. The three statements go in one pipeline (one round trip), so the lock is
    held for the server's work alone, never while this thread waits for the CPU. The ids
    are taken in VALUES order, so the sorted ids match the events in order."""
    values = ",".join(["(%s, %s, %s, %s)"] * len(events))
    params = [value for event in events for value in event_log.row_values(event, now)]
    # Never server-side prepared: a pipeline aborted by a failed COMMIT (a serialization
    # failure, retried) would leave psycopg's cache of prepared statements out of step.
    # The first error is the one raised (the pipeline's end then reports "aborted").
    first: psycopg.Error | None = None
    try:
        with conn.pipeline():
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,),
                             prepare=False)
                cursor = conn.execute(f"WITH ins AS ({_INSERT_HEAD}{values}{_INSERT_TAIL}",
                                      params, prepare=False)
                conn.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                first = exc
    except psycopg.Error as exc:
        first = first or exc
    if first is not None:
        raise first
    ids = cursor.fetchone()["ids"]
    return [event_log.with_id(event, event_id) for event, event_id in zip(events, ids,
                                                                          strict=True)]


ReadRange = Callable[[int, int, int], Awaitable[list[Encoded]]]

_BETWEEN = ("SELECT id, type, data, audience FROM events WHERE id > %s AND id <= %s"
            " ORDER BY id LIMIT %s")


class TableReader:
    """The pump's reads, on a connection of its own on the event loop: one autocommit SELECT
    each (its own snapshot, taken after the notification or hand-over that asked for it),
    with no thread hand-off and no BEGIN/ROLLBACK round trips. The pump reads for every
    other node's commit, so this is on every write's path when nodes interleave. A broken
    connection is dropped and made again on the next read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                row_factory=dict_row)
        return self._conn

    async def between(self, after: int, upto: int, limit: int) -> list[Encoded]:
        rows = await self._query(_BETWEEN, (after, upto, limit))
        return [event_log.from_row(row) for row in rows]

    async def latest(self) -> int:
        rows = await self._query("SELECT MAX(id) AS id FROM events", ())
        return rows[0]["id"] or 0

    async def _query(self, sql: str, params: tuple) -> list[dict]:
        """Bounded by READ_TIMEOUT: a connection that hangs (a network partition) is dropped
        instead of holding the pump, which retries on a new one."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                conn = await self._connection()
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()
        except (psycopg.Error, TimeoutError):
            self._conn = await _closed(self._conn)
            raise

    async def close(self) -> None:
        self._conn = await _closed(self._conn)


class EventPump:
    """Hands events to `deliver` strictly in id order, each once.

    Three inputs, all on the event loop: `local(events)` (a commit of this node, handed over
    in any order), `notified(id)` (another node's commit; an own one would be harmless too),
    `catch_up()` (the LISTEN connection came back, or the safety poll: every committed id up
    to MAX(id)). One task (`run`) does the reads, so the inputs never interleave out of
    order. A local batch that follows `last_id` directly, with no read in flight, is handed
    on at once without any read (a lone node's usual case)."""

    def __init__(self, read_range: ReadRange, read_latest: Callable[[], Awaitable[int]],
                 deliver: Callable[[list[Encoded]], None], last_id: int = 0) -> None:
        self._read_range = read_range  # (after, upto, limit) -> events, oldest first
        self._read_latest = read_latest
        self._deliver = deliver
        self.last_id = last_id
        self.target = last_id  # the highest id known to be committed (or aborted)
        self.reads = 0  # range reads done: the cost of the other nodes' events
        self._local: list[Encoded] = []
        self._wake = asyncio.Event()
        self._busy = False
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def local(self, events: list[Encoded]) -> None:
        if not events:
            return
        if not self._busy and not self._local and events[0].id == self.last_id + 1:
            # Next in line: nothing below it is missing, whatever else is pending (a read in
            # flight would deliver it too, hence `_busy`).
            self._hand_on(events)
            self.target = max(self.target, self.last_id)
            return
        self._local.extend(events)
        self._wake.set()

    async def handed_on(self, event_id: int, timeout: float) -> bool:
        """Wait until `event_id` was handed on (at most `timeout` s: a committed write is
        answered anyway, its events follow when the database answers again)."""
        if self.last_id >= event_id:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((event_id, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((event_id, waiter))

    def notified(self, event_id: int) -> None:
        if event_id > self.target:
            self.target = event_id
            self._wake.set()

    async def catch_up(self) -> None:
        """Everything committed up to now (MAX(id) in a fresh snapshot)."""
        self.notified(await self._read_latest())

    def pending(self) -> bool:
        return bool(self._local) or self.target > self.last_id

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.step():
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()

    async def step(self) -> bool:
        """Hand on everything up to the highest id known; False when a read failed (what is
        missing stays pending: `target` still covers it, and the rows are in the table)."""
        self._busy = True
        try:
            known = {e.id: e for e in self._local if e.id is not None and e.id > self.last_id}
            self._local = []
            high = max(self.target, max(known, default=0))
            self.target = high
            if high <= self.last_id:
                return True
            # Read what is not in hand: up to the highest id below `high` we do not hold.
            upto = high
            while upto in known and upto > self.last_id:
                upto -= 1
            while upto > self.last_id:
                try:
                    page = await self._read_range(self.last_id, upto, READ_PAGE)
                except Exception as exc:  # noqa: BLE001 - retried; the rows stay in the table
                    log.warning("events.read_failed", after=self.last_id, upto=upto,
                                error=str(exc)[:200])
                    return False
                self.reads += 1
                self._hand_on(page)
                if len(page) < READ_PAGE:
                    self._advance(upto)  # ids in between were aborted (or pruned)
            self._hand_on([known[i] for i in sorted(known) if i > self.last_id])
            self._advance(high)
            return True
        finally:
            self._busy = False

    def _hand_on(self, events: list[Encoded]) -> None:
        if events:
            self._deliver(events)
            self._advance(events[-1].id or 0)

    def _advance(self, event_id: int) -> None:
        self.last_id = max(self.last_id, event_id)
        if self._waiters:
            for wanted, waiter in self._waiters:
                if wanted <= self.last_id and not waiter.done():
                    waiter.set_result(None)


class Listener:
    """The LISTEN connection of one worker (psycopg's async connection, on the worker's own
    event loop: notifications reach the pump without a thread hand-off), plus the safety poll.

    On every (re)connection it asks the pump to catch up, since notifications sent while it
    was away are lost; the poll covers a connection that died silently."""

    def __init__(self, url: str, pump: EventPump, poll_interval: float = POLL_INTERVAL) -> None:
        self.url = url
        self.pump = pump
        self.poll_interval = poll_interval
        self.connected = asyncio.Event()
        self.connections = 0
        # Backend pids of this worker's write connections (added by the storage before each
        # commit with events). Their notifications are skipped: the hand-over after COMMIT
        # brings the same ids, and reading the rows first would only cost a read. A pid a
        # later connection of another node reuses costs that node's notification only; its
        # next one, or the poll, covers it.
        self.own_backends: set[int] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self, initial_id: Callable[[], Awaitable[int]]) -> None:
        """LISTEN first, then the pump starts after `initial_id()` (the newest id now): every
        commit from then on is at or below it or notified. A first connection that fails is
        retried by the listening task, which catches up once it is in."""
        conn = None
        try:
            conn = await self._connect()
            await conn.execute(f"LISTEN {CHANNEL}")
        except (psycopg.Error, OSError) as exc:
            log.warning("events.listen_connect_failed", error=str(exc).strip()[:200])
            conn = await _closed(conn)
        try:
            self.pump.last_id = self.pump.target = await initial_id()
        except BaseException:
            await _closed(conn)
            raise
        self._tasks = [asyncio.create_task(self._listen(conn), name="meshd-pg-listen"),
                       asyncio.create_task(self.pump.run(), name="meshd-pg-pump"),
                       asyncio.create_task(self._poll(), name="meshd-pg-events-poll")]

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, keepalives=1,
            keepalives_idle=10, keepalives_interval=5, keepalives_count=3)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _listen(self, conn: psycopg.AsyncConnection | None) -> None:
        delay = 0.1
        try:
            while True:
                if conn is None:
                    try:
                        conn = await self._connect()
                        await conn.execute(f"LISTEN {CHANNEL}")
                    except (psycopg.Error, OSError) as exc:
                        log.warning("events.listen_connect_failed",
                                    error=str(exc).strip()[:200], retry_s=delay)
                        conn = await _closed(conn)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, RECONNECT_MAX)
                        continue
                    log.info("events.listening", reconnected=self.connections > 0)
                    await self._catch_up()  # what was notified while nobody listened
                self.connections += 1
                self.connected.set()
                delay = 0.1
                try:
                    async for notify in conn.notifies():
                        if notify.pid in self.own_backends:
                            continue  # this node's commit: its hand-over carries the same
                        with contextlib.suppress(ValueError):
                            self.pump.notified(int(notify.payload))
                except (psycopg.Error, OSError) as exc:
                    log.warning("events.listen_lost", error=str(exc).strip()[:200])
                conn = await _closed(conn)
                self.connected.clear()
                await asyncio.sleep(delay)
        finally:
            if conn is not None:
                await _closed(conn)

    async def _catch_up(self) -> None:
        try:
            await self.pump.catch_up()
        except Exception as exc:  # noqa: BLE001 - the database unreachable: the poll retries
            log.debug("events.catch_up_failed", error=str(exc)[:200])

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self._catch_up()


async def _closed(conn: psycopg.AsyncConnection | None) -> None:
    """Close a connection that may already be broken; None, for `conn = await _closed(conn)`."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
