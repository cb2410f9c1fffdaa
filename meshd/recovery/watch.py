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
                          last_seen: dict[str, str],
                          returned: dict[str, str] | None = None) -> dict[str, str]:
    """Until every listed agent has been seen after its last heartbeat before the
    partition; agent -> the time it was back. `returned` is filled as they come back, so a
    caller cut off by a deadline knows who is still away."""
    returned = {} if returned is None else returned
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


def previous_stable(versions: list[str], required: str) -> str | None:
    """The highest valid version below `required`: where a roll-back returns agents."""
    below = [v for v in versions if semver.is_valid(v) and semver.compare(v, required) < 0]
    best = None
    for version in below:
        if best is None or semver.compare(version, best) > 0:
            best = version
    return best


async def wait_for_version(settings: Settings, storage: ReadStorage, version: str) -> str:
    """Until every agent active within adoption_window reports `version` (at least one)."""
    while True:
        cutoff = db_time(datetime.now(UTC) - timedelta(seconds=settings.adoption_window))
        agents = await storage.read(reads.active_agent_versions, cutoff)
        if agents and all(a["version"] == version for a in agents):
            return f"{len(agents)} active agents report {version}"
        await asyncio.sleep(min(2.0, settings.offline_check_interval))


async def wait_update_grace(settings: Settings, created_at: str | None) -> str:
    created = parse_time(created_at) if created_at else None
    if created is not None:
        remaining = (created + timedelta(seconds=settings.update_grace)
                     - datetime.now(UTC)).total_seconds()
        if remaining > 0:
            await asyncio.sleep(remaining)
    return f"grace of {settings.update_grace:g} s over; enforcing"


async def adoption(settings: Settings, storage: ReadStorage,
                   update_id: str) -> tuple[str | None, list[dict[str, Any]], list[str]]:
    """(required version, the agents active within adoption_window, the ids of those below
    it). An agent is active when it heartbeat (HTTP, health post or WebSocket) within the
    window; its version is the one it last reported (X-Agent-Version, or agentVersion on an
    acknowledgment)."""
    enforced, required = await storage.read(reads.required_version, update_id)
    if not enforced:
        raise Withdrawn(f"update {update_id} is no longer enforced (completed, withdrawn by a "
                        "roll-back, or deleted)")
    cutoff = db_time(datetime.now(UTC) - timedelta(seconds=settings.adoption_window))
    agents = await storage.read(reads.active_agent_versions, cutoff)
    behind = [a["id"] for a in agents
              if not a["version"] or semver.compare(a["version"], required) < 0]
    return required, agents, behind


class Withdrawn(Exception):
    """The update is no longer enforced: nothing left to adopt."""


async def wait_for_adoption(settings: Settings, storage: ReadStorage, update_id: str) -> str:
    """Until at least one agent is active and every active agent has acknowledged at or above
    the required version. With no active agent nothing is adopted: it keeps waiting (the
    step's deadline, adoption_max_wait, ends it)."""
    while True:
        try:
            required, agents, behind = await adoption(settings, storage, update_id)
        except Withdrawn as exc:
            return str(exc)
        if agents and not behind:
            return f"{len(agents)} active agents at or above {required}"
        await asyncio.sleep(min(2.0, settings.offline_check_interval))
