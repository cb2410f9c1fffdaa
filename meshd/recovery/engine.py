"""The protocol engine: drives a protocol's state machine, one step at a time, persisting the
run after every step so that a supervisor killed mid-run resumes from the last completed step.

A run lives in `data/protocols/<run>.json` (written atomically, because the database may be the
thing that broke) and is sent to the worker as records for `protocol_runs` / `protocol_steps`.
Its catastrophe event moves active -> recovering -> resolved; a run that cannot finish ends in
`failed` (or `aborted`) with the reason, puts its event back to `active` and alerts, so no event
stays `recovering` with no run behind it.

Rules every run follows (tests/unit/test_engine.py):
- every step of a finished run is final: `ok`, `failed`, `aborted`, or `skipped` for the states
  a failed or aborted run never reached;
- a waiting step with a `deadline` (a Settings name) ends when it passes: its `on_deadline`
  says what was still missing and the run goes on, so every run ends;
- while an `exclusive` run (the database restore) is under way, other runs pause before their
  next step; a step that failed because the database was unavailable is retried after it,
  without using up the step's attempts.

Several nodes on PostgreSQL: a mesh-wide run is driven by the leader. `driver` names the node
whose records a run's rows are fenced with (the database keeps the run only from its driver,
`meshd/store/pg_runs.py`), `may_drive` is asked before each step (a node whose lease ran out
starts none), and a new leader `adopt`s a run another node drove, from the database's copy.
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
from meshd.clock import db_time, iso_time, new_id, parse_time, utcnow
from meshd.errors import Unavailable
from meshd.locks import write_atomic

log = logging.get("meshd.recovery")

RUNNING, COMPLETED, FAILED, ABORTED = "running", "completed", "failed", "aborted"
OK, SKIPPED = "ok", "skipped"
FAILED_STATE = "failed"
# A database error retried this many times (after the restore, if one runs) before it counts
# as one failed attempt of the step.
DB_RETRIES = 60


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
    # A waiting step's deadline: the Settings attribute holding its seconds, counted from the
    # first time the run entered the state (kept across a supervisor restart), and what the
    # step's outcome is when it passes.
    deadline: str | None = None
    on_deadline: StepFn | None = None


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
    exclusive: bool = False  # other runs pause while one of these runs (a restore)

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
    drill: bool = False  # started by hand with no detected fault: says so everywhere
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
        # The node whose records fence a run's rows (None: no fence; SQLite, node-local runs),
        # and whether this node may take the run's next step now (a mesh-wide run: it leads).
        self.driver: Callable[[Run], str | None] = lambda run: None
        self.may_drive: Callable[[Run], bool] = lambda run: True

    # -- starting, resuming, aborting --------------------------------------------------------

    def active(self, protocol: str) -> Run | None:
        return next((r for r in self.runs.values()
                     if r.protocol == protocol and r.outcome == RUNNING), None)

    def start(self, protocol: str, reason: str, context: dict[str, Any] | None = None,
              description: str | None = None, severity: str | None = None,
              title: str | None = None, drill: bool = False,
              run_id: str | None = None) -> Run:
        """Open the protocol's event and drive a new run; joins a run already under way.
        A drill's event title starts with "Drill:" and its context has `drill` set, so the
        steps state no fault that did not happen. `run_id` (a hand-over's: whoever starts
        it, the run has that id) joins the run of that id when this node has it already."""
        spec = self.protocols[protocol]
        existing = self.runs.get(run_id) if run_id else None
        existing = existing or self.active(protocol)
        if existing:
            log.info("protocol.joined", run_id=existing.id, protocol=protocol, reason=reason)
            return existing
        now = db_time()
        title, description = title or spec.title, description or reason
        context = dict(context or {})
        if drill:
            title, description = f"Drill: {title}", f"drill (nothing failed): {description}"
            context["drill"] = True
        event = incidents.event_record(spec.event_type, severity or spec.severity,
                                       title, description,
                                       recovery_protocol=protocol, occurred_at=now)
        run = Run(run_id or new_id(), protocol, event["id"], spec.initial, now, now, reason=reason,
                  drill=drill, context=context, event=event)
        self.runs[run.id] = run
        log.warning("protocol.started", run_id=run.id, protocol=protocol, reason=reason)
        self.save(run)
        self._tasks[run.id] = asyncio.create_task(self._drive(run))
        return run

    def resume_unfinished(self, hold: Callable[[Run], bool] = lambda run: False) -> list[Run]:
        """Load every run file; drive those still running from their current state, except
        the ones `hold` keeps waiting (a mesh-wide run on a node that does not lead: it is
        driven by `drive_held` once the node leads)."""
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
                if hold(run):
                    log.info("protocol.held", run_id=run.id, protocol=run.protocol,
                             state=run.state)
                    continue
                log.warning("protocol.resumed", run_id=run.id, protocol=run.protocol,
                            state=run.state)
                self._redrive(run, "interrupted: the supervisor stopped; run again on resume")
                resumed.append(run)
        return resumed

    def _redrive(self, run: Run, detail: str) -> None:
        # The step left running (by a stopped supervisor, or a run suspended) is final: it
        # runs again now.
        _abort_running_steps(run, detail)
        self._tasks[run.id] = asyncio.create_task(self._drive(run))

    def suspend(self, which: Callable[[Run], bool], reason: str) -> list[Run]:
        """Stop driving the running runs `which` selects, leaving them `running` (this node
        lost the leadership: it must not act for the mesh). `drive_held` takes them up again."""
        suspended = []
        for run_id, task in list(self._tasks.items()):
            run = self.runs.get(run_id)
            if run is None or run.outcome != RUNNING or task.done() or not which(run):
                continue
            task.cancel()
            del self._tasks[run_id]
            log.warning("protocol.suspended", run_id=run_id, protocol=run.protocol,
                        state=run.state, reason=reason)
            suspended.append(run)
        return suspended

    def drive_held(self, which: Callable[[Run], bool]) -> list[Run]:
        """Drive the running runs `which` selects that nothing drives (held at start or
        suspended), from their current state."""
        driven = []
        for run in self.held(which):
            log.warning("protocol.resumed", run_id=run.id, protocol=run.protocol,
                        state=run.state)
            self._redrive(run, "interrupted: this node stopped leading; run again")
            driven.append(run)
        return driven

    def held(self, which: Callable[[Run], bool]) -> list[Run]:
        """The running runs `which` selects that nothing drives now."""
        return [run for run in self.runs.values()
                if run.outcome == RUNNING and run.protocol in self.protocols and which(run)
                and (self._tasks.get(run.id) is None or self._tasks[run.id].done())]

    def adopt(self, run: Run, from_node: str, by_node: str) -> Run:
        """Drive a run another node drove until it lost the lead (rebuilt from the database's
        copy, already claimed for this node): the step it left running is final and runs
        again, as after a supervisor restart; the adoption is a step of its own."""
        now = db_time()
        what = f"adopted from node {from_node} after it lost the lead"
        _abort_running_steps(
            run, f"interrupted: node {from_node} lost the lead; run again by node {by_node}")
        run.steps.append(StepLog(run.state, run.state, now, now, OK,
                                 f"{what}; driven by node {by_node} from state {run.state}", 1))
        run.event["description"] = f"{run.event.get('description')}; {what} (node {by_node})"
        run.updated_at = now
        self.runs[run.id] = run
        log.warning("protocol.adopted", run_id=run.id, protocol=run.protocol, state=run.state,
                    from_node=from_node, by_node=by_node)
        self.save(run)
        self._tasks[run.id] = asyncio.create_task(self._drive(run))
        return run

    def supersede(self, run_id: str, driver: str) -> None:
        """Another node drives this run now (it adopted it): stop driving it here and move the
        local copy to `superseded/`, kept for the record but never resumed."""
        run = self.runs.pop(run_id, None)
        task = self._tasks.pop(run_id, None)
        if task is not None:
            task.cancel()
        path = self.runs_dir / f"{run_id}.json"
        kept = self.runs_dir / "superseded" / path.name
        with contextlib.suppress(FileNotFoundError):
            kept.parent.mkdir(parents=True, exist_ok=True)
            path.replace(kept)
        log.warning("protocol.superseded", run_id=run_id,
                    protocol=run.protocol if run else None,
                    state=run.state if run else None, driver=driver, kept=str(kept))

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
            self._close_steps(run, ABORTED, run.reason)
            self._reopen_event(run)
            log.warning("protocol.aborted", run_id=run.id, reason=reason)
            await self._transition(run)
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
            await self._pause_for_exclusive(run)
            if not self.may_drive(run):
                # A mesh-wide run on a node whose lease ran out before it heard of the loss
                # (a stalled loop): no further step here; the run stays `running`.
                log.warning("protocol.not_driven", run_id=run.id, protocol=run.protocol,
                            state=run.state, reason="this node does not lead now")
                return
            transition = spec.table[run.state]
            step = StepLog(run.state, transition.next, db_time())
            run.steps.append(step)
            if transition.deadline and self._remaining(run, transition) is not None:
                self.save(run)  # when the wait began, for a supervisor restarted during it
            ok, detail = await self._attempt(run, transition, step)
            step.finished_at = db_time()
            step.detail = detail
            if not ok:
                step.outcome = FAILED
                run.outcome = FAILED
                run.reason = f"step {run.state} failed: {detail}"
                run.state = FAILED_STATE
                self._close_steps(run, SKIPPED, None)
                self._reopen_event(run)
                log.error("protocol.failed", run_id=run.id, protocol=run.protocol,
                          state=step.state, detail=detail)
                await self._transition(run)
                return
            step.outcome = OK
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
        attempt = db_errors = 0
        while attempt <= transition.retries:
            step.attempts = attempt + 1
            try:
                return True, await self._call(run, transition)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                detail = f"timed out after {transition.timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - a step failure is the run's outcome
                detail = f"{type(exc).__name__}: {exc}"
                if _database_unavailable(exc) and db_errors < DB_RETRIES:
                    db_errors += 1
                    log.warning("protocol.step_waits_for_database", run_id=run.id,
                                state=run.state, detail=detail)
                    await asyncio.sleep(min(self.retry_pause * (2 ** min(db_errors, 6)), 5.0))
                    await self._pause_for_exclusive(run)
                    continue
            log.warning("protocol.step_retry", run_id=run.id, state=run.state,
                        attempt=attempt + 1, detail=detail)
            await asyncio.sleep(min(self.retry_pause * (2 ** attempt), 5.0))
            attempt += 1
        return False, detail

    async def _call(self, run: Run, transition: Transition) -> str | None:
        """One attempt of the step, within its timeout and, for a waiting step, its deadline
        (then `on_deadline` gives the step's outcome)."""
        coro = transition.step(self.host, run)
        remaining = self._remaining(run, transition)
        if remaining is None:
            return await (asyncio.wait_for(coro, transition.timeout)
                          if transition.timeout else coro)
        limit = remaining if not transition.timeout else min(remaining, transition.timeout)
        try:
            return await asyncio.wait_for(coro, max(limit, 0.0))
        except TimeoutError:
            if self._remaining(run, transition) > 0.001:
                raise  # the step's own timeout, not the deadline
        waited = getattr(self.host.settings, transition.deadline)
        outcome = (await transition.on_deadline(self.host, run)
                   if transition.on_deadline else None)
        log.warning("protocol.deadline_passed", run_id=run.id, state=run.state,
                    deadline=transition.deadline, seconds=waited, outcome=outcome)
        return f"deadline {transition.deadline} ({waited:g} s) passed: {outcome or 'ended'}"

    def _remaining(self, run: Run, transition: Transition) -> float | None:
        """Seconds until the deadline of the run's current state (None: it has none)."""
        if not transition.deadline:
            return None
        seconds = float(getattr(self.host.settings, transition.deadline))
        entered = run.context.setdefault("entered", {}).setdefault(str(run.state), iso_time())
        start = parse_time(entered)
        elapsed = (utcnow() - start).total_seconds() if start else 0.0
        return seconds - elapsed

    async def _pause_for_exclusive(self, run: Run) -> None:
        """Wait while another run that excludes all others (a restore) is under way."""
        paused = False
        while True:
            busy = [r for r in self.runs.values() if r.id != run.id and r.outcome == RUNNING
                    and self.protocols.get(r.protocol) is not None
                    and self.protocols[r.protocol].exclusive]
            if not busy or self.protocols[run.protocol].exclusive:
                break
            if not paused:
                paused = True
                log.info("protocol.paused", run_id=run.id, protocol=run.protocol,
                         behind=busy[0].id)
            task = self._tasks.get(busy[0].id)
            if task is None or task.done():
                await asyncio.sleep(self.retry_pause)  # ending; its outcome is being saved
            else:
                await asyncio.wait({task})  # our own cancellation still propagates
        if paused:
            log.info("protocol.resumed_after", run_id=run.id, protocol=run.protocol)

    def _close_steps(self, run: Run, outcome: str, detail: str | None) -> None:
        """Make every step of an ended run final: the one running gets `outcome`; the states
        the run never reached are listed as `skipped`."""
        now = db_time()
        for step in run.steps:
            if step.outcome == RUNNING:
                step.outcome, step.finished_at = outcome, now
                step.detail = step.detail or detail
        spec = self.protocols.get(run.protocol)
        if spec is None:
            return
        reached = {s.state for s in run.steps}
        for state in spec.states:
            if state in spec.table and state not in reached:
                run.steps.append(StepLog(state, spec.table[state].next, now, now, SKIPPED,
                                         None, 0))

    @staticmethod
    def _reopen_event(run: Run) -> None:
        """An event whose run ended without resolving it is `active` again, with the reason."""
        run.event["description"] = f"{run.event.get('description')}; {run.reason}"
        if run.event.get("status") != "resolved":
            run.event["status"] = "active"

    async def _transition(self, run: Run) -> None:
        run.updated_at = db_time()
        self.save(run)
        try:
            await self.host.publish(self.alert(run))
        except Exception as exc:  # noqa: BLE001 - a broadcast never blocks recovery
            log.warning("protocol.broadcast_failed", run_id=run.id, error=str(exc))

    def save(self, run: Run) -> None:
        """The run file, then the records for the database. A run with a driver carries a
        fence on both records, and its whole document (what a new leader rebuilds it from)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.runs_dir / f"{run.id}.json", run.to_json())
        event = dict(run.event)
        record = {"kind": "run", "id": f"run-{run.id}", "run": _run_row(run)}
        driver = self.driver(run)
        if driver is not None:
            fence = {"run_id": run.id, "driver": driver,
                     "handovers": list(run.context.get("handovers") or [])}
            event["fence"] = record["fence"] = fence
            record["document"] = asdict(run)
        self.host.queue_record(event)
        self.host.queue_record(record)

    @staticmethod
    def alert(run: Run) -> dict[str, Any]:
        return incidents.alert(run.event, asdict(run))


def _abort_running_steps(run: Run, detail: str) -> None:
    """Close the step a run left running (its driver stopped or lost the lead) as aborted:
    it is final, and the step runs again as a new one."""
    for step in run.steps:
        if step.outcome == RUNNING:
            step.outcome, step.finished_at = ABORTED, db_time()
            step.detail = detail


def _database_unavailable(exc: BaseException) -> bool:
    """The database could not be read or written just now (locked, being restored, corrupt
    until the restore), as opposed to a step that is wrong."""
    if isinstance(exc, Unavailable):
        return True
    # sqlite3's errors from the supervisor's read-only storage (recovery never imports sqlite3:
    # only the store does); an IntegrityError or ProgrammingError is a bug, not an outage.
    kind = type(exc)
    return kind.__module__ == "sqlite3" and kind.__name__ in ("DatabaseError",
                                                              "OperationalError")


def _run_row(run: Run) -> dict[str, Any]:
    data = run.public()
    data["steps"] = [asdict(s) for s in run.steps]
    return data
