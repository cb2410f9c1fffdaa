"""Database Corruption protocol: detect -> record -> stop worker -> restore + replay -> verify ->
start read-only -> self-test -> read-write -> broadcast complete.

Each step is one supervisor action and safe to run twice: stopping a stopped worker, restoring
again onto the same backup and journal, or re-enabling writes all end in the same state.
"""

from __future__ import annotations

from enum import StrEnum

from meshd.recovery.engine import ProtocolSpec, Run, Transition


class Corruption(StrEnum):
    DETECTED = "detected"
    RECORDED = "recorded"
    STOPPED = "stopped"
    RESTORED = "restored"
    VERIFIED = "verified"
    READ_ONLY = "read_only"
    SELF_TESTED = "self_tested"
    READ_WRITE = "read_write"
    DONE = "done"


async def record(host, run: Run) -> str:
    host.hold_worker(run.id)  # nothing restarts the worker behind the protocol's back
    return f"event {run.event['id']} recorded: {run.reason}"


async def stop_worker(host, run: Run) -> str:
    return await host.stop_worker_for(run.id)


async def restore_and_replay(host, run: Run) -> str:
    report = await host.restore_database(run)
    run.context["restore"] = {"backup": report.backup, "replayed": report.replayed,
                              "journal_seq": report.journal_seq, "skipped": report.skipped}
    skipped = f"; skipped {len(report.skipped)} unverifiable backup(s)" if report.skipped else ""
    return (f"restored {report.backup} and replayed {report.replayed} journal records to "
            f"seq {report.journal_seq} in {report.seconds} s{skipped}")


async def verify(host, run: Run) -> str:
    return await host.verify_database()


async def start_read_only(host, run: Run) -> str:
    return await host.start_worker_read_only(run.id, "restored from backup; self-test pending")


async def self_test(host, run: Run) -> str:
    return await host.self_test()


async def enable_writes(host, run: Run) -> str:
    return await host.enable_writes(run.id)


async def broadcast_complete(host, run: Run) -> str:
    host.release_worker(run.id)
    return "recovery complete: serving read-write"


SPEC = ProtocolSpec(
    name="database_corruption",
    event_type="db_corruption",
    severity="critical",
    title="Database corruption",
    trigger="SQLite reports corruption (a failed quick_check or integrity_check, or "
            "SQLITE_CORRUPT / SQLITE_NOTADB while serving)",
    states=tuple(Corruption),
    exclusive=True,  # other runs pause while the database is replaced under them
    table={
        Corruption.DETECTED: Transition(record, Corruption.RECORDED),
        Corruption.RECORDED: Transition(stop_worker, Corruption.STOPPED, timeout=60),
        Corruption.STOPPED: Transition(restore_and_replay, Corruption.RESTORED, timeout=600),
        Corruption.RESTORED: Transition(verify, Corruption.VERIFIED, timeout=600),
        Corruption.VERIFIED: Transition(start_read_only, Corruption.READ_ONLY, timeout=120),
        Corruption.READ_ONLY: Transition(self_test, Corruption.SELF_TESTED, timeout=60),
        Corruption.SELF_TESTED: Transition(enable_writes, Corruption.READ_WRITE, timeout=None,
                                           retries=0),
        Corruption.READ_WRITE: Transition(broadcast_complete, Corruption.DONE),
    },
    summaries={
        Corruption.DETECTED: "Corruption detected via error logs, quick_check or a worker report",
        Corruption.RECORDED: "Catastrophe event marked; the watchdog stops restarting on its own",
        Corruption.STOPPED: "API worker stopped; the supervisor answers 503 meanwhile",
        Corruption.RESTORED: "Newest verified backup restored and the journal replayed; the "
                             "corrupt files are quarantined",
        Corruption.VERIFIED: "Restored database passes integrity_check",
        Corruption.READ_ONLY: "Worker started in read-only mode (writes get 503)",
        Corruption.SELF_TESTED: "Critical endpoints tested (test writes rolled back)",
        Corruption.READ_WRITE: "Writes enabled again (automatically, or by the operator)",
        Corruption.DONE: "Recovery complete broadcast",
    },
)
