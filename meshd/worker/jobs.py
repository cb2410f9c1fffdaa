"""The worker's periodic jobs (each a small coroutine loop): the message-timeout sweeper and
offline detection.

Jobs that read files or run checks belong to the supervisor's scheduler instead; these touch
only the API's own data and run where the writer is. They act for the whole mesh, so with
several nodes on PostgreSQL they run only on the leader's worker, while its lease lasts
(`meshd/worker/leadership.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from meshd import log as logging
from meshd.clock import db_time, utcnow
from meshd.config import Settings
from meshd.store import event_log
from meshd.store import health as health_store
from meshd.store import messages as messages_store
from meshd.store.base import Storage
from meshd.worker.leadership import Lease
from meshd.worker.supervisor_client import SupervisorClient

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


def heartbeating(went_offline: list[dict], since: str) -> list[dict]:
    """The agents of `went_offline` with evidence of having been online: a heartbeat (HTTP,
    health post or WebSocket) at or after `since`. An agent registered and never heard from
    again, or silent since long before, cannot be cut off by a partition."""
    return [r for r in went_offline if r.get("heartbeat_at") and r["heartbeat_at"] >= since]


@dataclass
class PartitionDetector:
    """Agents going offline together, not one by one: more than `share` of the active agents
    (and at least `min_agents`) within `window` seconds is a network partition. Only agents
    that were heartbeating are observed (see `heartbeating`)."""

    share: float
    min_agents: int
    window: float
    recent: deque = field(default_factory=deque)  # (time, agent_id, last_seen)

    def observe(self, now: float, went_offline: list[dict], still_online: int) -> list | None:
        for row in went_offline:
            self.recent.append((now, row["agent_id"], row["last_seen"]))
        while self.recent and now - self.recent[0][0] > self.window:
            self.recent.popleft()
        offline = len(self.recent)
        active = offline + still_online
        if offline >= self.min_agents and active and offline / active > self.share:
            fired = list(self.recent)
            self.recent.clear()
            return fired
        return None


def start(settings: Settings, storage: Storage, supervisor: SupervisorClient | None = None,
          lease: Lease | None = None) -> list[asyncio.Task]:
    """The worker's periodic jobs; the events their writes cause reach the WebSocket through
    the storage's event path, like any write's. Each round runs only while `lease` leads."""
    lease = lease or Lease(always=True)

    async def sweep() -> None:
        if storage.read_only_reason or not lease.leads():
            return
        timed_out = await storage.write(
            messages_store.time_out_expired, db_time())
        if timed_out:
            log.info("messages.timed_out", count=len(timed_out))
        pruned = await storage.write(event_log.prune, settings.event_log_keep)
        if pruned:
            log.info("events.pruned", count=pruned)

    loop = asyncio.get_running_loop()
    detector = PartitionDetector(settings.partition_share, settings.partition_min_agents,
                                 settings.partition_window)
    # Agents cannot have reached a server that was down: give them one heartbeat_timeout
    # after a start before reporting any of them offline.
    detect_from = loop.time() + settings.heartbeat_timeout
    # A node that becomes leader starts partition detection afresh, after the same grace: the
    # agents of a node that just died are reconnecting elsewhere, not cut off together.
    partition = {"gained": None, "from": 0.0}

    async def detect_offline() -> None:
        if storage.read_only_reason or loop.time() < detect_from or not lease.leads():
            return
        if lease.gained_at != partition["gained"]:
            partition["gained"] = lease.gained_at
            partition["from"] = (lease.gained_at or 0.0) + settings.heartbeat_timeout
            detector.recent.clear()
        now = utcnow()
        cutoff = db_time(now - timedelta(seconds=settings.heartbeat_timeout))
        went_offline = await storage.write(health_store.mark_offline, cutoff, db_time(now))
        if went_offline:
            log.info("agents.offline", count=len(went_offline),
                     agent_ids=[r["agent_id"] for r in went_offline])
        online = await storage.read(health_store.count_online, cutoff)
        # Evidence: a heartbeat within partition_window before the agent's timeout began.
        since = db_time(now - timedelta(seconds=settings.heartbeat_timeout
                                        + settings.partition_window))
        if time.monotonic() < partition["from"]:
            return  # marked offline, but not evidence of a partition yet
        fired = detector.observe(loop.time(), heartbeating(went_offline, since), online)
        if fired and supervisor is not None:
            agents = [agent_id for _t, agent_id, _ls in fired]
            log.warning("partition.detected", agents=agents, still_online=online)
            supervisor.start_protocol(
                "network_partition", f"{len(agents)} agents went offline together",
                {"agents": agents, "last_seen": {a: ls for _t, a, ls in fired}})

    return [
        asyncio.create_task(_every(settings.sweep_interval, "sweep", sweep)),
        asyncio.create_task(
            _every(settings.offline_check_interval, "offline_detection", detect_offline)),
    ]


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
