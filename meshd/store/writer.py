"""The writer thread: one long-lived thread fed from a queue, running queued writes in batches.

Why not an executor round trip per batch: the profile (docs/performance.md) put the event
loop's hand-off to the writer (`ThreadPoolExecutor.submit`, its futures wrapped for asyncio,
the writer task waking to set the results) at a third and more of a write's Python CPU. Here
the writes submitted during one pass of the event loop are handed to the thread together, as
one `SimpleQueue.put` (one wake-up of the thread at most, however many requests that pass
ran); the thread takes everything queued while the previous batch ran as the next batch (group
commit, so the batch grows with the load instead of with a timer), and each batch is answered
with a single `loop.call_soon_threadsafe`: one wake-up of the loop per batch, not per write.

Order: the thread runs batches one after another and schedules their completions in that order;
the loop runs callbacks first-in first-out, so completions (and the events they deliver) arrive
in commit order. Control calls (`call`: open, close) run on the same thread between batches,
after every write queued before them.

Shutdown drains: `stop` enqueues a sentinel after everything already queued, and the caller
refuses new writes before calling it, so every accepted write is run and answered.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd import log as logging

log = logging.get("meshd.store")


@dataclass(slots=True)
class Write:
    """A queued write: `fn(tx, *args)`, answered through `future` (a loop future)."""

    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future


@dataclass(slots=True)
class _Call:
    """Something to run on the writer thread outside any batch (open, close)."""

    fn: Callable[[], Any]
    future: asyncio.Future


_STOP = object()

# One per write, in order: (ok, result or exception, the events it emitted).
Outcome = tuple[bool, Any, list]
# run_batch(writes) -> outcomes; called on the writer thread.
RunBatch = Callable[[list[Write]], list[Outcome]]
# complete(writes, outcomes) on the event loop, once per batch.
Complete = Callable[[list[Write], list[Outcome]], None]


class WriterThread:
    def __init__(self, run_batch: RunBatch, complete: Complete, *, max_batch: int,
                 name: str = "meshd-writer") -> None:
        self._run_batch = run_batch
        self._complete = complete
        self._max_batch = max_batch
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future | None = None
        self._gathered: list[Write] = []  # submitted during this pass of the loop, not yet put
        self.batches = 0  # batches run (tests check that writes were grouped)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._stopped is not None \
            and not self._stopped.done()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        # A daemon thread: a process that exits without closing the store is not held up by a
        # thread waiting for work. A batch cut short that way is safe: its journal frame is
        # fsync'd before COMMIT (replayed on the next open) or torn (cut, never acknowledged).
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], args: tuple) -> asyncio.Future:
        """Queue a write; its future is answered after its batch (on the loop). Writes
        submitted in the same pass of the loop reach the thread together (`_hand_over`)."""
        future = self._loop.create_future()
        if not self._gathered:
            self._loop.call_soon(self._hand_over)
        self._gathered.append(Write(fn, args, future))
        return future

    def _hand_over(self) -> None:
        if self._gathered:
            self._queue.put(self._gathered)
            self._gathered = []

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the writer thread after every write submitted so far, outside a
        batch."""
        future = self._loop.create_future()
        self._hand_over()
        self._queue.put(_Call(fn, future))
        return await future

    async def stop(self) -> None:
        """Run and answer everything submitted so far, then end the thread."""
        if self._thread is None:
            return
        self._hand_over()
        self._queue.put(_STOP)
        await self._stopped
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # -- on the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        pending: object | None = None  # an item taken while filling a batch, not yet run
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _STOP:
                self._answer(self._stopped.set_result, None)
                return
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            batch = list(item)  # writes handed over together
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, list):
                    pending = nxt  # a call or the sentinel: after this batch
                    break
                batch.extend(nxt)
            for start in range(0, len(batch), self._max_batch):
                self._run_writes(batch[start:start + self._max_batch])

    def _run_writes(self, batch: list[Write]) -> None:
        try:
            outcomes = self._run_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - a bug in the batch must not hang callers
            log.exception("store.writer_batch_failed", writes=len(batch))
            outcomes = [(False, exc, [])] * len(batch)
        self.batches += 1
        self._answer(self._complete, batch, outcomes)

    def _run_call(self, item: _Call) -> None:
        try:
            value = item.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._answer(_settle, item.future, False, exc)
        else:
            self._answer(_settle, item.future, True, value)

    def _answer(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("store.writer_answer_dropped", reason="event loop closed")


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def settle(write: Write, ok: bool, value: Any) -> None:
    """Answer one write (on the loop); a write whose caller went away is skipped."""
    _settle(write.future, ok, value)
