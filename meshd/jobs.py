"""The worker's periodic jobs (each a small coroutine loop): the message-timeout sweeper.

Jobs that read files or run checks belong to the supervisor's scheduler instead; these touch
only the API's own data and run where the writer is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from meshd import log as logging
from meshd.clock import db_time
from meshd.config import Settings
from meshd.store import messages as messages_store
from meshd.ws import Hub

log = logging.get("meshd.jobs")


async def _every(interval: float, name: str, fn: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed round is logged, the next one runs
            log.warning("job.failed", job=name, error=str(exc))


def start(settings: Settings, storage, hub: Hub) -> list[asyncio.Task]:
    async def sweep() -> None:
        if storage.read_only_reason:
            return
        timed_out = await storage.write(
            messages_store.time_out_expired, db_time())
        for row in timed_out:
            hub.publish({"type": "message_timeout", "messageId": row["id"],
                         "toAgent": row["to_agent"], "fromAgent": row["from_agent"],
                         "createdAt": row["created_at"]}, audience=[row["to_agent"]])
        if timed_out:
            log.info("messages.timed_out", count=len(timed_out))

    return [asyncio.create_task(_every(settings.sweep_interval, "sweep", sweep))]


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
