"""Server Crash Recovery protocol: detected crash -> restart (the watchdog) -> broadcast ->
check the database -> review a recent system update -> recovered.

"Roll agents to previous stable version" becomes: when the crash follows a system update within
a window, that update is marked suspect in the event and agents are told.
"""

from __future__ import annotations

from enum import StrEnum

from meshd import incidents
from meshd.recovery import watch
from meshd.recovery.engine import ProtocolSpec, Run, Transition


class Crash(StrEnum):
    DETECTED = "detected"
    RESTARTED = "restarted"
    ANNOUNCED = "announced"
    DATABASE_CHECKED = "database_checked"
    UPDATES_REVIEWED = "updates_reviewed"
    RECOVERED = "recovered"


async def wait_for_restart(host, run: Run) -> str:
    return await host.wait_for_healthy_worker()


async def announce_crash(host, run: Run) -> str:
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
    update = await watch.recent_update(host.settings, host.storage, run.context.get("crashed_at"))
    if update is None:
        return "no system update before the crash"
    run.context["suspect_update"] = update
    run.event["description"] = (
        f"{run.event.get('description')}; suspect update {update['id']} "
        f"(version {update['version']}, created {update['created_at']})")
    await host.publish(incidents.alert(run.event, title="Crash follows a system update",
                                       suspectUpdate=update))
    return f"update {update['id']} ({update['version']}) marked suspect; agents told"


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
        Crash.UPDATES_REVIEWED: Transition(announce_recovery, Crash.RECOVERED),
    },
    summaries={
        Crash.DETECTED: "Crash detected by the watchdog (exit, or failed liveness probes)",
        Crash.RESTARTED: "Worker restarted on the same socket with the database preserved",
        Crash.ANNOUNCED: "Crash broadcast to all agents",
        Crash.DATABASE_CHECKED: "Database checked with quick_check; on failure the Database "
                                "Corruption protocol takes over",
        Crash.UPDATES_REVIEWED: "A system update shortly before the crash is marked suspect "
                                "and agents are told (instead of rolling agents back)",
        Crash.RECOVERED: "Recovery status broadcast",
    },
)
