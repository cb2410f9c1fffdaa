"""The protocol engine: drives a protocol's state machine, one step at a time, persisting the
run after every step so that a supervisor killed mid-run resumes from the last completed step.

A run lives in `data/protocols/<run>.json` (written atomically, because the database may be the
thing that broke) and is sent to the worker as records for `protocol_runs` / `protocol_steps`.
Its catastrophe event moves active -> recovering -> resolved; a run that cannot finish ends in
`failed` with the reason and leaves the event open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from meshd import incidents
from meshd import log as logging
from meshd.clock import db_time, new_id
from meshd.locks import write_atomic

log = logging.get("meshd.recovery")

RUNNING, COMPLETED, FAILED, ABORTED = "running", "completed", "failed", "aborted"
FAILED_STATE = "failed"


if TYPE_CHECKING:
    from meshd.recovery.host import RecoveryHost

# A step: one thing, safe to run twice; its return value is the step's detail in the log.
StepFn = Callable[["RecoveryHost", "Run"], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Transition:
    step: StepFn
    next: str
    timeout: float | None = 120.0
    retries: int = 2  # attempts after the first


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    name: str
    event_type: str
    severity: str
    title: str
    trigger: str
    states: tuple[str, ...]  # in order; the first is the initial state, the last is done
    table: dict[str, Transition]
    summaries: dict[str, str]  # state -> what happens there (runbook, catalog)

    @property
    def initial(self) -> str:
        return self.states[0]

    @property
    def done(self) -> str:
        return self.states[-1]


@dataclass
class StepLog:
    state: str
    next_state: str | None
    started_at: str
    finished_at: str | None = None
    outcome: str = RUNNING
    detail: str | None = None
    attempts: int = 0


@dataclass
class Run:
    id: str
    protocol: str
    event_id: str
    state: str
    started_at: str
    updated_at: str
    outcome: str = RUNNING
    reason: str | None = None
    dry_run: bool = False
    steps: list[StepLog] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Run:
        raw = orjson.loads(data)
        raw["steps"] = [StepLog(**s) for s in raw.get("steps", [])]
        return cls(**raw)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("context")
        data.pop("event")
        return data


class Engine:
    def __init__(self, host: RecoveryHost, runs_dir: Path, protocols: dict[str, ProtocolSpec],
                 retry_pause: float = 0.5) -> None:
        self.host = host
        self.retry_pause = retry_pause  # before the first retry; doubles, at most 5 s
        self.runs_dir = runs_dir
        self.protocols = protocols
        self.runs: dict[str, Run] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    # -- starting, resuming, aborting --------------------------------------------------------

    def active(self, protocol: str) -> Run | None:
        return next((r for r in self.runs.values()
                     if r.protocol == protocol and r.outcome == RUNNING), None)

    def start(self, protocol: str, reason: str, context: dict[str, Any] | None = None,
              description: str | None = None, severity: str | None = None,
              title: str | None = None) -> Run:
        """Open the protocol's event and drive a new run; joins a run already under way."""
        spec = self.protocols[protocol]
        existing = self.active(protocol)
        if existing:
            log.info("protocol.joined", run_id=existing.id, protocol=protocol, reason=reason)
            return existing
        now = db_time()
        event = incidents.event_record(spec.event_type, severity or spec.severity,
                                       title or spec.title, description or reason,
                                       recovery_protocol=protocol, occurred_at=now)
        run = Run(new_id(), protocol, event["id"], spec.initial, now, now, reason=reason,
                  context=dict(context or {}), event=event)
        self.runs[run.id] = run
        log.warning("protocol.started", run_id=run.id, protocol=protocol, reason=reason)
        self.save(run)
        self._tasks[run.id] = asyncio.create_task(self._drive(run))
        return run

    def resume_unfinished(self) -> list[Run]:
        """Load every run file; drive those still running from their current state."""
        resumed = []
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                run = Run.from_json(path.read_bytes())
            except (orjson.JSONDecodeError, TypeError, OSError) as exc:
                log.error("protocol.run_file_unreadable", path=str(path), error=str(exc))
                continue
            self.runs[run.id] = run
            if run.outcome == RUNNING and run.protocol in self.protocols:
                log.warning("protocol.resumed", run_id=run.id, protocol=run.protocol,
                            state=run.state)
                self._tasks[run.id] = asyncio.create_task(self._drive(run))
                resumed.append(run)
        return resumed

    async def abort(self, run_id: str, reason: str) -> Run:
        run = self.runs[run_id]
        task = self._tasks.pop(run_id, None)
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if run.outcome == RUNNING:
            run.outcome = ABORTED
            run.reason = f"aborted: {reason}"
            self.save(run)
            log.warning("protocol.aborted", run_id=run.id, reason=reason)
        return run

    async def wait(self, run_id: str) -> Run:
        task = self._tasks.get(run_id)
        if task:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return self.runs[run_id]

    # -- driving -----------------------------------------------------------------------------

    async def _drive(self, run: Run) -> None:
        spec = self.protocols[run.protocol]
        while run.outcome == RUNNING and run.state != spec.done:
            transition = spec.table[run.state]
            step = StepLog(run.state, transition.next, db_time())
            run.steps.append(step)
            ok, detail = await self._attempt(run, transition, step)
            step.finished_at = db_time()
            step.detail = detail
            if not ok:
                step.outcome = FAILED
                run.outcome = FAILED
                run.reason = f"step {run.state} failed: {detail}"
                run.state = FAILED_STATE
                run.event["description"] = f"{run.event.get('description')}; {run.reason}"
                log.error("protocol.failed", run_id=run.id, protocol=run.protocol,
                          state=step.state, detail=detail)
                await self._transition(run)
                return
            step.outcome = "ok"
            run.state = transition.next
            if run.event["status"] == "active":
                run.event["status"] = "recovering"
            if run.state == spec.done:
                run.outcome = COMPLETED
                run.event.update(status="resolved", resolved_at=db_time(),
                                 resolution_notes=f"{spec.name} completed: {detail or 'ok'}")
            log.info("protocol.transition", run_id=run.id, protocol=run.protocol,
                     from_state=step.state, to_state=run.state, detail=detail,
                     attempts=step.attempts)
            await self._transition(run)

    async def _attempt(self, run: Run, transition: Transition,
                       step: StepLog) -> tuple[bool, str | None]:
        detail: str | None = None
        for attempt in range(transition.retries + 1):
            step.attempts = attempt + 1
            try:
                coro = transition.step(self.host, run)
                detail = await (asyncio.wait_for(coro, transition.timeout)
                                if transition.timeout else coro)
                return True, detail
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                detail = f"timed out after {transition.timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - a step failure is the run's outcome
                detail = f"{type(exc).__name__}: {exc}"
            log.warning("protocol.step_retry", run_id=run.id, state=run.state,
                        attempt=attempt + 1, detail=detail)
            await asyncio.sleep(min(self.retry_pause * (2 ** attempt), 5.0))
        return False, detail

    async def _transition(self, run: Run) -> None:
        run.updated_at = db_time()
        self.save(run)
        try:
            await self.host.publish(self.alert(run))
        except Exception as exc:  # noqa: BLE001 - a broadcast never blocks recovery
            log.warning("protocol.broadcast_failed", run_id=run.id, error=str(exc))

    def save(self, run: Run) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.runs_dir / f"{run.id}.json", run.to_json())
        self.host.queue_record(dict(run.event))
        self.host.queue_record({"kind": "run", "id": f"run-{run.id}", "run": _run_row(run)})

    @staticmethod
    def alert(run: Run) -> dict[str, Any]:
        return incidents.alert(run.event, asdict(run))


def _run_row(run: Run) -> dict[str, Any]:
    data = run.public()
    data["steps"] = [asdict(s) for s in run.steps]
    return data
