"""Server Crash Recovery protocol: detected crash -> restart (the watchdog) -> broadcast ->
check the database -> review a recent system update -> recovered.

When the crash follows an update that could have caused it (breaking, or of type api, schema or
emergency) within crash_update_window, that update is named "possibly related" in the event and
agents are told. "Roll agents to previous stable version" (the seed's step 4): when it is a
breaking update, its enforcement is withdrawn (no more 426 / close 4426 for it), a non-breaking
emergency update naming the previous stable version (`rollbackTo`) is published, and the run
waits (until adoption_max_wait) for the agents active within adoption_window to report that
version. A roll-back update is never breaking, so it never triggers a roll-back. An operator
rolls back by hand with `meshd protocol run server_crash_recovery --rollback-to V`.

A run started by hand with no crash behind it is a drill (`context["drill"]`): its event, run
and broadcasts say so, and it states no crash count and names no update.
"""

from __future__ import annotations

from enum import StrEnum

from meshd import incidents
from meshd.clock import db_time, new_id
from meshd.recovery import watch
from meshd.recovery.engine import ProtocolSpec, Run, Transition
from meshd.store import recovery_reads as reads


class Crash(StrEnum):
    DETECTED = "detected"
    RESTARTED = "restarted"
    ANNOUNCED = "announced"
    DATABASE_CHECKED = "database_checked"
    UPDATES_REVIEWED = "updates_reviewed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_ADOPTED = "rollback_adopted"
    RECOVERED = "recovered"


async def wait_for_restart(host, run: Run) -> str:
    return await host.wait_for_healthy_worker()


async def announce_crash(host, run: Run) -> str:
    if run.context.get("drill"):
        return "agents told: this is a drill; nothing crashed"
    crashes = run.context.get("crashes", 1)
    return f"agents told: the API worker crashed {crashes} time(s) and is back"


async def check_database(host, run: Run) -> str:
    problems = await host.quick_check()
    if not problems:
        return "quick_check ok"
    if host.on_postgresql:
        handover = host.start_unreachable_protocol(
            f"connection check failed after a crash: {'; '.join(problems[:3])}")
        run.context["handed_over_to"] = handover.id
        return f"connection check failed; handed over to database_unreachable run {handover.id}"
    handover = host.start_corruption_protocol(
        f"quick_check failed after a crash: {'; '.join(problems[:3])}")
    run.context["handed_over_to"] = handover.id
    return f"quick_check failed; handed over to database_corruption run {handover.id}"


async def review_recent_update(host, run: Run) -> str:
    if run.context.get("rollback_to"):  # an operator's roll-back: of the newest breaking update
        update = await host.storage.read(reads.latest_breaking_update)
        if update is None:
            raise RuntimeError("no breaking update to roll back")
        run.context["rollback"] = {"update": update, "to": run.context["rollback_to"]}
        return (f"operator roll-back of update {update['id']} ({update['version']}) to "
                f"{run.context['rollback_to']}")
    if run.context.get("drill"):
        return "drill: no crash, no update reviewed"
    update = await watch.recent_update(host.settings, host.storage, run.context.get("crashed_at"))
    if update is None:
        return "no breaking, api, schema or emergency update before the crash"
    run.context["suspect_update"] = update
    run.event["description"] = (
        f"{run.event.get('description')}; possibly related update {update['id']} "
        f"({update['update_type']}, version {update['version']}, created "
        f"{update['created_at']})")
    await host.publish(incidents.alert(run.event, title="Crash follows a system update",
                                       suspectUpdate=update))
    detail = f"update {update['id']} ({update['version']}) named possibly related; agents told"
    if update["breaking_change"] and update["required_version"] and not update["rollback_to"]:
        versions = await host.storage.read(reads.versions_before, update["created_at"])
        previous = watch.previous_stable(versions, update["required_version"])
        if previous is None:
            return f"{detail}; no previous stable version known: no roll-back"
        run.context["rollback"] = {"update": update, "to": previous}
        detail += f"; breaking: roll-back to {previous}"
    return detail


async def roll_back(host, run: Run) -> str:
    """Withdraw the breaking update's enforcement and publish the emergency roll-back update
    (both idempotent: queued records with fixed ids)."""
    rollback = run.context.get("rollback")
    if not rollback:
        return "no roll-back needed"
    update, version = rollback["update"], rollback["to"]
    await host.complete_update(update["id"])  # enforcement withdrawn: no more 426 / 4426
    rollback_id = rollback.setdefault("update_id", new_id())
    host.publish_rollback_update({
        "id": rollback_id, "version": version, "rollback_to": version,
        "title": f"Roll back to {version}",
        "description": f"Update {update['id']} ({update['version']}, requires "
                       f"{update['required_version']}) is withdrawn after a crash; run "
                       f"version {version}",
        "created_at": db_time()})
    run.event["description"] = (f"{run.event.get('description')}; enforcement of update "
                                f"{update['id']} withdrawn; roll-back update {rollback_id} "
                                f"to {version} published")
    return f"enforcement of {update['id']} withdrawn; emergency update {rollback_id} " \
           f"(rollbackTo {version}) published"


async def wait_rollback_adoption(host, run: Run) -> str:
    rollback = run.context.get("rollback")
    if not rollback:
        return "no roll-back to adopt"
    outcome = await watch.wait_for_version(host.settings, host.storage, rollback["to"])
    run.event["description"] = f"{run.event.get('description')}; roll-back adopted: {outcome}"
    return outcome


async def rollback_deadline(host, run: Run) -> str:
    outcome = f"not every active agent reports {run.context['rollback']['to']}"
    run.event["description"] = f"{run.event.get('description')}; {outcome}"
    return outcome


async def announce_recovery(host, run: Run) -> str:
    return "recovery broadcast: serving"


SPEC = ProtocolSpec(
    name="server_crash_recovery",
    event_type="server_down",
    severity="major",
    title="API worker crashed",
    trigger="The API worker process dies or stops answering its liveness probe",
    states=tuple(Crash),
    table={
        Crash.DETECTED: Transition(wait_for_restart, Crash.RESTARTED, timeout=180, retries=0),
        Crash.RESTARTED: Transition(announce_crash, Crash.ANNOUNCED),
        Crash.ANNOUNCED: Transition(check_database, Crash.DATABASE_CHECKED, timeout=600),
        Crash.DATABASE_CHECKED: Transition(review_recent_update, Crash.UPDATES_REVIEWED),
        Crash.UPDATES_REVIEWED: Transition(roll_back, Crash.ROLLED_BACK),
        Crash.ROLLED_BACK: Transition(wait_rollback_adoption, Crash.ROLLBACK_ADOPTED,
                                      timeout=None, retries=0, deadline="adoption_max_wait",
                                      on_deadline=rollback_deadline),
        Crash.ROLLBACK_ADOPTED: Transition(announce_recovery, Crash.RECOVERED),
    },
    summaries={
        Crash.DETECTED: "Crash detected by the watchdog (exit, or failed liveness probes)",
        Crash.RESTARTED: "Worker restarted on the same socket with the database preserved",
        Crash.ANNOUNCED: "Crash broadcast to all agents",
        Crash.DATABASE_CHECKED: "Database checked with quick_check; on failure the Database "
                                "Corruption protocol takes over",
        Crash.UPDATES_REVIEWED: "A breaking, api, schema or emergency update shortly before "
                                "the crash is named possibly related and agents are told "
                                "(a breaking one: roll-back to the previous stable version)",
        Crash.ROLLED_BACK: "After a breaking update: its enforcement withdrawn and an emergency "
                           "update naming the previous stable version (rollbackTo) published",
        Crash.ROLLBACK_ADOPTED: "Agents active within adoption_window report the previous "
                                "stable version (or adoption_max_wait passes)",
        Crash.RECOVERED: "Recovery status broadcast",
    },
)
