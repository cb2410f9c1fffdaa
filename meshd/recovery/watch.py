"""What protocols wait for and look up, read through the supervisor's read-only storage (the
worker is the only writer; these read even while it is down): agents coming back, adoption of
an update, recent updates. The SQL is in `meshd.store.recovery_reads`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from meshd import semver
from meshd.clock import db_time, parse_time
from meshd.config import Settings
from meshd.store import recovery_reads as reads
from meshd.store.base import ReadStorage


async def recent_update(settings: Settings, storage: ReadStorage,
                        crashed_at: str | None) -> dict[str, Any] | None:
    moment = parse_time(crashed_at) if crashed_at else None
    if moment is None:
        return None
    since = db_time(moment - timedelta(seconds=settings.crash_update_window))
    return await storage.read(reads.latest_update_between, since, db_time(moment))


async def wait_for_agents(settings: Settings, storage: ReadStorage,
                          last_seen: dict[str, str]) -> dict[str, str]:
    """Until every listed agent has been seen after its last heartbeat before the
    partition; agent -> the time it was back."""
    returned: dict[str, str] = {}
    agents = list(last_seen)
    while len(returned) < len(agents):
        seen = await storage.read(reads.last_seen_of, agents)
        for agent_id, back in seen.items():
            if agent_id not in returned and (back or "") > last_seen[agent_id]:
                returned[agent_id] = back
        for gone in set(agents) - set(seen):  # an agent no longer registered cannot return
            returned.setdefault(gone, last_seen[gone])
        if len(returned) < len(agents):
            await asyncio.sleep(min(2.0, settings.offline_check_interval))
    return returned


async def partition_summary(storage: ReadStorage, returned: dict[str, str],
                            last_seen: dict[str, str]) -> list[dict[str, Any]]:
    """Per agent: how long it was away, and how many messages with a client id (queued by
    the SDK while offline) it delivered since it went silent."""
    summary = []
    for agent_id, back_at in returned.items():
        since = last_seen.get(agent_id, back_at)
        synced = await storage.read(reads.synced_messages, agent_id, since)
        start, end = parse_time(since), parse_time(back_at)
        away = round((end - start).total_seconds()) if start and end else None
        summary.append({"agentId": agent_id, "awaySeconds": away, "backAt": back_at,
                        "syncedMessages": synced})
    return summary


async def wait_update_grace(settings: Settings, created_at: str | None) -> str:
    created = parse_time(created_at) if created_at else None
    if created is not None:
        remaining = (created + timedelta(seconds=settings.update_grace)
                     - datetime.now(UTC)).total_seconds()
        if remaining > 0:
            await asyncio.sleep(remaining)
    return f"grace of {settings.update_grace:g} s over; enforcing"


async def wait_for_adoption(settings: Settings, storage: ReadStorage, update_id: str) -> str:
    """Until every active agent has acknowledged at or above the required version."""
    while True:
        exists, required = await storage.read(reads.required_version, update_id)
        if not exists:
            raise RuntimeError(f"update {update_id} no longer exists")
        cutoff = db_time(datetime.now(UTC) - timedelta(seconds=settings.heartbeat_timeout))
        agents = await storage.read(reads.active_agent_versions, cutoff)
        behind = [a["id"] for a in agents
                  if not a["version"] or semver.compare(a["version"], required) < 0]
        if not behind:
            return f"{len(agents)} active agents at or above {required}"
        await asyncio.sleep(min(2.0, settings.offline_check_interval))
