"""Breaking API Update protocol: announce -> collect acknowledgments -> enforce -> monitor
adoption -> complete when every active agent is at or above the required version (or an
operator closes it). The worker enforces; this run watches and closes.
"""

from __future__ import annotations

from enum import StrEnum

from meshd.recovery import watch
from meshd.recovery.engine import ProtocolSpec, Run, Transition


class Breaking(StrEnum):
    ANNOUNCED = "announced"
    ACKNOWLEDGING = "acknowledging"
    ENFORCING = "enforcing"
    ADOPTED = "adopted"
    COMPLETED = "completed"


async def open_acknowledgments(host, run: Run) -> str:
    return (f"update {run.context.get('update_id')} requires version "
            f"{run.context.get('required_version')}; acknowledgments open")


async def wait_grace(host, run: Run) -> str:
    return await watch.wait_update_grace(host.settings, run.context.get("created_at"))


async def monitor_adoption(host, run: Run) -> str:
    return await watch.wait_for_adoption(host.settings, host.storage, run.context["update_id"])


async def complete(host, run: Run) -> str:
    await host.complete_update(run.context["update_id"])
    return "update complete; enforcement ends"


SPEC = ProtocolSpec(
    name="breaking_api_update",
    event_type="breaking_update",
    severity="minor",
    title="Breaking API update",
    trigger="A system update is posted with breakingChange true and a requiredVersion",
    states=tuple(Breaking),
    table={
        Breaking.ANNOUNCED: Transition(open_acknowledgments, Breaking.ACKNOWLEDGING),
        Breaking.ACKNOWLEDGING: Transition(wait_grace, Breaking.ENFORCING, timeout=None,
                                           retries=0),
        Breaking.ENFORCING: Transition(monitor_adoption, Breaking.ADOPTED, timeout=None,
                                       retries=0),
        Breaking.ADOPTED: Transition(complete, Breaking.COMPLETED),
    },
    summaries={
        Breaking.ANNOUNCED: "Update announced to every agent, marked breaking, with the "
                            "required version and upgrade instructions",
        Breaking.ACKNOWLEDGING: "Agents acknowledge during the grace period (update_grace)",
        Breaking.ENFORCING: "Sending requests of agents below the required version are "
                            "refused with the upgrade instructions",
        Breaking.ADOPTED: "Adoption monitored until every active agent is at or above the "
                          "required version",
        Breaking.COMPLETED: "Update marked complete",
    },
)
