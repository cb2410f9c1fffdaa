"""The protocol engine's rules, in process with a fake host (milliseconds, not processes):
transitions and persistence, retries, timeouts, a failing step, resume after a restart,
abort, joining a run under way, and a broadcast that fails without stopping recovery."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from meshd.recovery.engine import Engine, ProtocolSpec, Run, Transition
from meshd.recovery.host import RecoveryHost
from meshd.supervisor.actions import ProtocolActions


class FakeHost:
    """Records what the engine queues and announces; nothing else is reachable."""

    def __init__(self, fail_publish: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.published: list[dict[str, Any]] = []
        self.fail_publish = fail_publish

    def queue_record(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))

    async def publish(self, event: dict[str, Any]) -> None:
        if self.fail_publish:
            raise ConnectionError("no worker")
        self.published.append(event)


def spec(table: dict[str, Transition], name: str = "drill") -> ProtocolSpec:
    """States in the table's order, ending at the last transition's target."""
    states = (*table, *(t.next for t in table.values() if t.next not in table))
    return ProtocolSpec(name=name, event_type="server_down", severity="major",
                        title="Drill", trigger="test", states=states, table=table,
                        summaries={s: s for s in states})


def ok(detail: str, calls: list[str] | None = None):
    async def step(host, run: Run) -> str:
        if calls is not None:
            calls.append(detail)
        return detail
    return step


def engine(tmp_path, host, *specs: ProtocolSpec) -> Engine:
    return Engine(host, tmp_path / "protocols", {s.name: s for s in specs}, retry_pause=0.001)


async def test_a_run_walks_every_state_and_resolves_its_event(tmp_path):
    host = FakeHost()
    eng = engine(tmp_path, host, spec({"a": Transition(ok("one"), "b"),
                                       "b": Transition(ok("two"), "c")}))
    run = await eng.wait(eng.start("drill", "testing").id)

    assert (run.outcome, run.state) == ("completed", "c")
    assert [(s.state, s.next_state, s.outcome, s.detail, s.attempts) for s in run.steps] == [
        ("a", "b", "ok", "one", 1), ("b", "c", "ok", "two", 1)]
    assert run.event["status"] == "resolved" and "completed: two" in \
        run.event["resolution_notes"]
    # One alert per transition, in order, carrying the run's state.
    assert [(p["run"]["state"], p["catastrophe"]["status"]) for p in host.published] == [
        ("b", "recovering"), ("c", "resolved")]
    assert host.published[0]["catastrophe"]["occurredAt"].endswith("Z")
    # The event and the run row are queued after every save; the last ones are final.
    events = [r for r in host.records if r["kind"] == "event"]
    runs = [r for r in host.records if r["kind"] == "run"]
    assert events[-1]["status"] == "resolved" and runs[-1]["run"]["outcome"] == "completed"
    assert len(runs[-1]["run"]["steps"]) == 2
    # The run file is the source a restarted supervisor resumes from.
    saved = Run.from_json((tmp_path / "protocols" / f"{run.id}.json").read_bytes())
    assert saved.outcome == "completed" and len(saved.steps) == 2


async def test_a_step_is_retried_until_it_succeeds(tmp_path):
    attempts = []

    async def flaky(host, run):
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)} failed")
        return "third time"

    eng = engine(tmp_path, FakeHost(), spec({"a": Transition(flaky, "b", retries=2),
                                             "b": Transition(ok("done"), "c")}))
    run = await eng.wait(eng.start("drill", "testing").id)
    assert run.outcome == "completed"
    assert (run.steps[0].attempts, run.steps[0].detail) == (3, "third time")


async def test_a_failing_step_fails_the_run_reopens_its_event_and_skips_the_rest(tmp_path):
    calls = []

    async def broken(host, run):
        raise OSError("disk on fire")

    host = FakeHost()
    eng = engine(tmp_path, host, spec({"a": Transition(ok("one"), "b"),
                                       "b": Transition(broken, "c", retries=1),
                                       "c": Transition(ok("never", calls), "d")}))
    run = await eng.wait(eng.start("drill", "testing").id)

    assert (run.outcome, run.state) == ("failed", "failed")
    assert run.reason == "step b failed: OSError: disk on fire"
    assert [(s.state, s.outcome, s.attempts) for s in run.steps] == [
        ("a", "ok", 1), ("b", "failed", 2), ("c", "skipped", 0)]
    assert all(s.finished_at for s in run.steps)
    # Nothing stays `recovering` with no run behind it: the event is active again, and says why.
    assert run.event["status"] == "active" and "disk on fire" in run.event["description"]
    assert host.published[-1]["run"]["outcome"] == "failed"
    assert host.published[-1]["catastrophe"]["status"] == "active"
    assert calls == []


async def test_a_step_past_its_timeout_counts_as_a_failed_attempt(tmp_path):
    async def slow(host, run):
        await asyncio.sleep(10)

    eng = engine(tmp_path, FakeHost(), spec({"a": Transition(slow, "b", timeout=0.01,
                                                             retries=1)}))
    run = await eng.wait(eng.start("drill", "testing").id)
    assert run.outcome == "failed"
    assert run.steps[0].detail == "timed out after 0.01 s" and run.steps[0].attempts == 2


async def test_an_unfinished_run_resumes_from_its_last_completed_step(tmp_path):
    calls: list[str] = []
    gate = asyncio.Event()

    async def blocked(host, run):
        await gate.wait()
        return "never reached"

    first = engine(tmp_path, FakeHost(), spec({"a": Transition(ok("one", calls), "b"),
                                               "b": Transition(blocked, "c")}))
    run = first.start("drill", "testing")
    while run.state != "b":
        await asyncio.sleep(0.001)
    for task in first._tasks.values():  # the supervisor is killed mid-step
        task.cancel()

    host = FakeHost()
    second = engine(tmp_path, host, spec({"a": Transition(ok("one again", calls), "b"),
                                          "b": Transition(ok("two", calls), "c")}))
    resumed = second.resume_unfinished()
    assert [r.id for r in resumed] == [run.id]
    done = await second.wait(run.id)
    assert done.outcome == "completed" and calls == ["one", "two"]
    assert [s.state for s in done.steps] == ["a", "b"]  # saved after each completed step


async def test_abort_stops_a_run_and_leaves_its_event_open(tmp_path):
    started = asyncio.Event()

    async def forever(host, run):
        started.set()
        await asyncio.Event().wait()

    eng = engine(tmp_path, FakeHost(), spec({"a": Transition(forever, "b", timeout=None)}))
    run = eng.start("drill", "testing")
    await started.wait()
    aborted = await eng.abort(run.id, "operator")

    assert (aborted.outcome, aborted.reason) == ("aborted", "aborted: operator")
    assert aborted.event["status"] == "active"
    assert [(s.state, s.outcome) for s in aborted.steps] == [("a", "aborted")]
    assert aborted.steps[0].finished_at and aborted.steps[0].detail == "aborted: operator"
    saved = Run.from_json((tmp_path / "protocols" / f"{run.id}.json").read_bytes())
    assert saved.outcome == "aborted"
    assert eng.resume_unfinished() == []  # an aborted run is not resumed


async def test_a_second_start_joins_the_run_under_way(tmp_path):
    gate = asyncio.Event()

    async def waits(host, run):
        await gate.wait()
        return "released"

    eng = engine(tmp_path, FakeHost(), spec({"a": Transition(waits, "b")}))
    first = eng.start("drill", "first")
    assert eng.start("drill", "second") is first
    gate.set()
    assert (await eng.wait(first.id)).outcome == "completed"
    assert eng.start("drill", "third") is not first


async def test_a_failed_broadcast_does_not_stop_recovery(tmp_path):
    eng = engine(tmp_path, FakeHost(fail_publish=True),
                 spec({"a": Transition(ok("one"), "b"), "b": Transition(ok("two"), "c")}))
    run = await eng.wait(eng.start("drill", "testing").id)
    assert run.outcome == "completed"


def test_the_supervisor_implements_every_member_of_the_recovery_host():
    members = {name for name, _ in inspect.getmembers(RecoveryHost)
               if not name.startswith("_")} | set(RecoveryHost.__annotations__)
    missing = {m for m in members if not hasattr(ProtocolActions, m)
               and m not in ProtocolActions.__init__.__code__.co_names}
    assert members >= {"settings", "storage", "queue_record", "publish", "self_test"}
    assert not missing, missing


@pytest.mark.parametrize("module", ["breaking", "corruption", "crash", "partition"])
def test_steps_call_only_what_the_host_lists(module):
    """Every `host.<name>` a protocol step uses is a member of RecoveryHost."""
    import re

    from meshd.recovery import breaking, corruption, crash, partition

    source = inspect.getsource({"breaking": breaking, "corruption": corruption,
                                "crash": crash, "partition": partition}[module])
    used = set(re.findall(r"\bhost\.([a-z_]+)", source))
    listed = {name for name, _ in inspect.getmembers(RecoveryHost)} | set(
        RecoveryHost.__annotations__)
    assert used and used <= listed, used - listed


# -- rules of issue 12: every run ends, final states, runs and restores coexist --------------


class Settings:
    """The one setting the deadline tests name."""

    wait_for_it = 0.05


def waiting_host() -> FakeHost:
    host = FakeHost()
    host.settings = Settings()  # type: ignore[attr-defined]
    return host


async def test_a_waiting_step_ends_at_its_deadline_and_the_run_goes_on(tmp_path):
    async def forever(host, run):
        run.context["seen"] = ["x"]
        await asyncio.Event().wait()

    async def lost(host, run):
        return f"still away: {run.context['seen']}"

    host = waiting_host()
    eng = engine(tmp_path, host, spec({
        "a": Transition(forever, "b", timeout=None, retries=0, deadline="wait_for_it",
                        on_deadline=lost),
        "b": Transition(ok("after"), "c")}))
    run = await asyncio.wait_for(eng.wait(eng.start("drill", "testing").id), 5)

    assert (run.outcome, run.state) == ("completed", "c")
    assert run.steps[0].outcome == "ok"
    assert run.steps[0].detail == "deadline wait_for_it (0.05 s) passed: still away: ['x']"
    assert run.event["status"] == "resolved"


async def test_a_deadline_counts_from_first_entering_the_state_across_a_restart(tmp_path):
    calls: list[str] = []

    async def forever(host, run):
        calls.append("waiting")
        await asyncio.Event().wait()

    table = {"a": Transition(forever, "b", timeout=None, retries=0, deadline="wait_for_it"),
             "b": Transition(ok("after"), "c")}
    first = engine(tmp_path, waiting_host(), spec(table))
    run = first.start("drill", "testing")
    while not calls:
        await asyncio.sleep(0.001)
    entered = run.context["entered"]["a"]
    for task in first._tasks.values():  # the supervisor is killed mid-wait
        task.cancel()
    await asyncio.sleep(0.06)  # pacing: the deadline passes while no supervisor runs

    second = engine(tmp_path, waiting_host(), spec(table))
    second.resume_unfinished()
    done = await asyncio.wait_for(second.wait(run.id), 5)
    assert done.outcome == "completed" and done.context["entered"]["a"] == entered
    assert done.steps[-2].detail == "deadline wait_for_it (0.05 s) passed: ended"
    # The wait the killed supervisor left running is final too, not `running` for ever.
    assert (done.steps[0].state, done.steps[0].outcome) == ("a", "aborted")
    assert done.steps[0].detail.startswith("interrupted") and done.steps[0].finished_at


async def test_a_step_timeout_is_still_a_failed_attempt_under_a_longer_deadline(tmp_path):
    async def slow(host, run):
        await asyncio.sleep(10)

    host = waiting_host()
    host.settings.wait_for_it = 60
    eng = engine(tmp_path, host, spec({"a": Transition(slow, "b", timeout=0.01, retries=0,
                                                       deadline="wait_for_it")}))
    run = await eng.wait(eng.start("drill", "testing").id)
    assert run.outcome == "failed" and run.steps[0].detail == "timed out after 0.01 s"


async def test_runs_pause_while_an_exclusive_run_restores_and_resume_after(tmp_path):
    order: list[str] = []
    restoring = asyncio.Event()
    restored = asyncio.Event()

    async def restore(host, run):
        order.append("restore begins")
        restoring.set()
        await restored.wait()
        order.append("restore ends")
        return "restored"

    async def other_step(host, run):
        order.append("other step")
        return "done"

    restore_spec = spec({"r": Transition(restore, "d")}, "restore")
    restore_spec = ProtocolSpec(restore_spec.name, restore_spec.event_type, "critical",
                                "Restore", "test", restore_spec.states, restore_spec.table,
                                restore_spec.summaries, exclusive=True)
    eng = engine(tmp_path, FakeHost(), restore_spec,
                 spec({"a": Transition(other_step, "b")}, "other"))
    eng.start("restore", "corrupt")
    await restoring.wait()
    other = eng.start("other", "meanwhile")
    await asyncio.sleep(0.02)  # pacing: the other run would have stepped by now
    assert order == ["restore begins"] and other.steps == []
    restored.set()
    done = await asyncio.wait_for(eng.wait(other.id), 5)
    assert done.outcome == "completed"
    assert order == ["restore begins", "restore ends", "other step"]


async def test_a_database_error_is_retried_without_failing_the_step(tmp_path):
    import sqlite3

    failures = iter([sqlite3.DatabaseError("database disk image is malformed"),
                     sqlite3.OperationalError("unable to open database file")])

    async def reads(host, run):
        error = next(failures, None)
        if error:
            raise error
        return "read after the restore"

    eng = engine(tmp_path, FakeHost(), spec({"a": Transition(reads, "b", retries=0)}))
    run = await asyncio.wait_for(eng.wait(eng.start("drill", "testing").id), 5)
    assert run.outcome == "completed"
    assert (run.steps[0].detail, run.steps[0].attempts) == ("read after the restore", 1)


async def test_a_paused_run_can_still_be_aborted(tmp_path):
    gate = asyncio.Event()

    async def restore(host, run):
        await gate.wait()
        return "restored"

    base = spec({"r": Transition(restore, "d", timeout=None)}, "restore")
    restore_spec = ProtocolSpec(base.name, base.event_type, "critical", "Restore", "test",
                                base.states, base.table, base.summaries, exclusive=True)
    eng = engine(tmp_path, FakeHost(), restore_spec,
                 spec({"a": Transition(ok("x"), "b"), "b": Transition(ok("y"), "c")}, "other"))
    eng.start("restore", "corrupt")
    await asyncio.sleep(0)
    other = eng.start("other", "meanwhile")
    await asyncio.sleep(0.01)
    aborted = await asyncio.wait_for(eng.abort(other.id, "operator"), 5)
    assert aborted.outcome == "aborted" and aborted.event["status"] == "active"
    assert [(s.state, s.outcome) for s in aborted.steps] == [("a", "skipped"), ("b", "skipped")]
    gate.set()


async def test_a_drill_says_so_in_its_event_and_run(tmp_path):
    host = FakeHost()
    eng = engine(tmp_path, host, spec({"a": Transition(ok("one"), "b")}))
    run = await eng.wait(eng.start("drill", "by hand", drill=True).id)
    assert run.drill and run.context["drill"] is True
    assert run.event["title"].startswith("Drill: ")
    assert run.event["description"].startswith("drill (nothing failed)")
    assert host.published[-1]["run"]["drill"] is True


async def test_runs_held_at_resume_or_suspended_are_driven_only_when_asked(tmp_path):
    """A node that does not lead keeps a mesh-wide run waiting (held at start, suspended when
    it stops leading); `drive_held` takes it up from its state, the interrupted step final."""
    gate = asyncio.Event()
    calls: list[str] = []

    async def waits(host, run: Run) -> str:
        calls.append("wait")
        await gate.wait()
        return "back"

    table = {"a": Transition(waits, "b"), "b": Transition(ok("two", calls), "c")}
    eng = engine(tmp_path, FakeHost(), spec(table))
    run = eng.start("drill", "testing")
    await asyncio.sleep(0.01)
    assert eng.suspend(lambda r: r.protocol == "drill", "not leading") == [run]
    await asyncio.sleep(0.01)
    assert run.outcome == "running" and calls == ["wait"]

    # A restarted supervisor that does not lead holds it too.
    again = engine(tmp_path, FakeHost(), spec(table))
    assert again.resume_unfinished(hold=lambda r: True) == []
    await asyncio.sleep(0.01)
    assert again.runs[run.id].outcome == "running" and calls == ["wait"]

    gate.set()
    assert eng.drive_held(lambda r: r.protocol == "drill") == [run]
    done = await eng.wait(run.id)
    assert (done.outcome, done.state) == ("completed", "c")
    assert [(s.state, s.outcome) for s in done.steps] == [
        ("a", "aborted"), ("a", "ok"), ("b", "ok")]
    assert done.steps[0].detail.startswith("interrupted")
    assert eng.drive_held(lambda r: True) == []  # nothing left to drive
