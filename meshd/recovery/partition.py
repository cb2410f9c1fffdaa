"""Network Partition protocol, server side: many agents' heartbeats time out together ->
event listing them -> wait for them to come back -> count what each synced -> resolved.

The worker detects it (its offline job) from evidence: only agents that heartbeat (HTTP
heartbeat, health post or WebSocket heartbeat; `agents.heartbeat_at`) within partition_window
before their timeout count, so agents registered and never heard from cannot "go offline
together". Detection is suspended while meshd is not read-write and for one heartbeat_timeout
after a start, so meshd's own outage never looks like one. The wait for the agents ends after
partition_max_wait; those still away are listed as lost.
"""

from __future__ import annotations

from enum import StrEnum

from meshd.recovery import watch
from meshd.recovery.engine import ProtocolSpec, Run, Transition
from meshd.store import recovery_reads as reads


class Partition(StrEnum):
    DETECTED = "detected"
    RECORDED = "recorded"
    AGENTS_BACK = "agents_back"
    SYNCED = "synced"
    RESOLVED = "resolved"


async def record(host, run: Run) -> str:
    agents = run.context.get("agents", [])
    run.event["affected_agents"] = agents
    return f"{len(agents)} agents offline at once: {', '.join(agents[:10])}"


async def wait_for_agents(host, run: Run) -> str:
    returned = run.context.setdefault("returned", {})
    await watch.wait_for_agents(host.settings, host.storage, _last_seen(run), returned)
    return f"{len(returned)} agents back"


async def list_lost(host, run: Run) -> str:
    """partition_max_wait passed: the agents still away are lost (the worker's offline
    detection keeps their health `offline` until they heartbeat again)."""
    returned = run.context.get("returned", {})
    lost = [a for a in run.context.get("agents", []) if a not in returned]
    run.context["lost"] = lost
    run.event["description"] = (
        f"{run.event.get('description')}; lost after {host.settings.partition_max_wait:g} s "
        f"(health offline): {', '.join(lost)}")
    return f"{len(returned)} agents back, {len(lost)} lost: {', '.join(lost[:10])}"


async def count_synced(host, run: Run) -> str:
    returned = run.context.get("returned", {})
    registered = await host.storage.read(reads.last_seen_of, list(returned))
    deleted = sorted(a for a in returned if a not in registered)
    back = {a: t for a, t in returned.items() if a in registered}
    summary = await watch.partition_summary(host.storage, back, _last_seen(run))
    run.context["summary"] = summary
    run.context["deleted"] = deleted
    parts = [f"{s['agentId']} away {s['awaySeconds']} s, synced {s['syncedMessages']} queued "
             "messages" for s in summary]
    parts += [f"{a} deleted while away" for a in deleted]
    if parts:
        run.event["description"] = f"{run.event.get('description')}; " + "; ".join(parts)
    return "; ".join([f"{s['agentId']}: {s['awaySeconds']} s, {s['syncedMessages']} msgs"
                      for s in summary] + [f"{a}: deleted" for a in deleted]) or "none back"


def _last_seen(run: Run) -> dict[str, str]:
    """Each listed agent's last heartbeat before it went silent (run start when unknown, as
    for a run an operator started by hand)."""
    known = run.context.get("last_seen") or {}
    return {a: known.get(a) or run.started_at for a in run.context.get("agents", [])}


async def resolve(host, run: Run) -> str:
    return "partition over"


SPEC = ProtocolSpec(
    name="network_partition",
    event_type="network_partition",
    severity="major",
    title="Network partition: agents unreachable",
    trigger="More than a configured share of active agents (default 50%, at least 2) miss "
            "their heartbeats within one window while meshd keeps serving",
    states=tuple(Partition),
    table={
        Partition.DETECTED: Transition(record, Partition.RECORDED),
        Partition.RECORDED: Transition(wait_for_agents, Partition.AGENTS_BACK, timeout=None,
                                       retries=0, deadline="partition_max_wait",
                                       on_deadline=list_lost),
        Partition.AGENTS_BACK: Transition(count_synced, Partition.SYNCED),
        Partition.SYNCED: Transition(resolve, Partition.RESOLVED),
    },
    summaries={
        Partition.DETECTED: "Agents' heartbeats time out together (agents switch to offline "
                            "mode: local queue and shared spool directory)",
        Partition.RECORDED: "Event opened listing the unreachable agents",
        Partition.AGENTS_BACK: "Every listed agent heartbeats again, or partition_max_wait "
                               "passes and those still away are listed as lost",
        Partition.SYNCED: "Queued messages synced; how long each agent was away recorded",
        Partition.RESOLVED: "Catastrophe marked resolved",
    },
)
