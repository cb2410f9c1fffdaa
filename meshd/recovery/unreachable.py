"""Database Unreachable protocol (PostgreSQL): detect -> record -> refuse with 503 -> reconnect
-> verify -> resolve. It takes the place of Database Corruption on PostgreSQL, where meshd has
no file to restore: the server is down, restarting or cut off, and meshd waits for it.

Nothing here stops or restarts the worker. Its store already refuses every request at once
with 503 and the reason, and probes the server twice a second; the protocol records the event,
watches the server come back on connections of its own, checks the schema, and resolves.
"""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum

from meshd.recovery.engine import ProtocolSpec, Run, Transition

POLL = 1.0


class Unreachable(StrEnum):
    DETECTED = "detected"
    RECORDED = "recorded"
    REFUSING = "refusing"
    RECONNECTED = "reconnected"
    VERIFIED = "verified"
    RESOLVED = "resolved"


async def record(host, run: Run) -> str:
    run.context["since"] = time.time()
    return f"event {run.event['id']} recorded: {run.reason}"


async def refuse(host, run: Run) -> str:
    problems = await host.database_check(False)
    if not problems:
        return "the database answered again before refusal began"
    return f"requests get 503 with the reason while the worker's store probes: {problems[0]}"


async def wait_reconnected(host, run: Run) -> str:
    while problems := await host.database_check(False):
        run.context["last_problem"] = problems[0]
        await asyncio.sleep(POLL)
    away = round(time.time() - run.context.get("since", time.time()), 1)
    return f"PostgreSQL answers again ({away} s after detection)"


async def verify(host, run: Run) -> str:
    problems = await host.database_check(True)
    if problems:
        raise RuntimeError(f"the database answers but fails its check: {'; '.join(problems)}")
    return "schema version and every meshd table present"


async def resolve(host, run: Run) -> str:
    return await host.wait_for_healthy_worker() + "; serving again"


SPEC = ProtocolSpec(
    name="database_unreachable",
    event_type="database_unreachable",
    severity="critical",
    title="Database unreachable",
    trigger="PostgreSQL backend: the worker's store cannot connect (or a connection check "
            "fails)",
    states=tuple(Unreachable),
    table={
        Unreachable.DETECTED: Transition(record, Unreachable.RECORDED),
        Unreachable.RECORDED: Transition(refuse, Unreachable.REFUSING, timeout=30),
        Unreachable.REFUSING: Transition(wait_reconnected, Unreachable.RECONNECTED,
                                         timeout=None, retries=0),
        Unreachable.RECONNECTED: Transition(verify, Unreachable.VERIFIED, timeout=60),
        Unreachable.VERIFIED: Transition(resolve, Unreachable.RESOLVED, timeout=120),
    },
    summaries={
        Unreachable.DETECTED: "A request or a connection check could not reach PostgreSQL",
        Unreachable.RECORDED: "Catastrophe event recorded (delivered once the database is back)",
        Unreachable.REFUSING: "Requests get 503 with the reason at once; the store probes the "
                              "server twice a second",
        Unreachable.RECONNECTED: "PostgreSQL accepts connections again",
        Unreachable.VERIFIED: "The schema is this meshd's and every table is there",
        Unreachable.RESOLVED: "Serving again; the event is resolved",
    },
)
