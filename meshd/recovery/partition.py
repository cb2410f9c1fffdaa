"""Network Partition protocol, server side: many agents' heartbeats time out together ->
event listing them -> wait for them to come back -> count what each synced -> resolved.

The worker detects it (its offline job); detection is suspended while meshd is not read-write
and for one heartbeat_timeout after a start, so meshd's own outage never looks like one.
"""

from __future__ import annotations

from enum import StrEnum

from meshd.recovery import watch
from meshd.recovery.engine import ProtocolSpec, Run, Transition


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
    returned = await watch.wait_for_agents(host.settings, host.storage, _last_seen(run))
    run.context["returned"] = returned
    return f"{len(returned)} agents back"


async def count_synced(host, run: Run) -> str:
    summary = await watch.partition_summary(host.storage, run.context.get("returned", {}),
                                            _last_seen(run))
    run.context["summary"] = summary
    run.event["description"] = (
        f"{run.event.get('description')}; " + "; ".join(
            f"{s['agentId']} away {s['awaySeconds']} s, synced {s['syncedMessages']} queued "
            "messages" for s in summary))
    return "; ".join(f"{s['agentId']}: {s['awaySeconds']} s, {s['syncedMessages']} msgs"
                     for s in summary)


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
                                       retries=0),
        Partition.AGENTS_BACK: Transition(count_synced, Partition.SYNCED),
        Partition.SYNCED: Transition(resolve, Partition.RESOLVED),
    },
    summaries={
        Partition.DETECTED: "Agents' heartbeats time out together (agents switch to offline "
                            "mode: local queue and shared spool directory)",
        Partition.RECORDED: "Event opened listing the unreachable agents",
        Partition.AGENTS_BACK: "Every listed agent heartbeats again",
        Partition.SYNCED: "Queued messages synced; how long each agent was away recorded",
        Partition.RESOLVED: "Catastrophe marked resolved",
    },
)
