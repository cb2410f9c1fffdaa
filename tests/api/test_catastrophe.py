"""Catastrophe routes: report and its alert, protocols, get, list filters, resolve; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.recovery.protocols import PROTOCOLS
from meshd.store import catastrophe as store
from tests.conftest import call, next_event, no_event, ws_connect

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "catastrophe_protocols.json"
EVENT = {"eventType": "server_down", "severity": "critical", "title": "Server fell over"}
EVENT_KEYS = {"id", "event_type", "severity", "title", "description", "affected_agents",
              "recovery_protocol", "status", "occurred_at", "resolved_at", "resolution_notes",
              "affectedAgents"}


async def report(client, **fields) -> str:
    status, body = await call(client, "POST", "/api/catastrophe", {**EVENT, **fields})
    assert status == 200, body
    return body["eventId"]


async def test_report_broadcasts_alert(client):
    ws = await ws_connect(client)
    status, body = await call(client, "POST", "/api/catastrophe", {
        **EVENT, "description": "all gone", "affectedAgents": ["a1", "a2"]})
    assert status == 200
    assert body == {"success": True, "eventId": body["eventId"], "broadcast": True,
                    "message": "Catastrophe event reported and broadcasted"}
    event = await next_event(ws, "catastrophe_alert")
    alert = event["catastrophe"]
    assert alert.pop("occurredAt").endswith("Z")
    # recoveryProtocol was not sent, so it is left out.
    assert alert == {"id": body["eventId"], "eventType": "server_down", "severity": "critical",
                     "title": "Server fell over", "description": "all gone",
                     "affectedAgents": ["a1", "a2"], "status": "active"}
    await ws.close()


async def test_get_event(client):
    event_id = await report(client, affectedAgents=["x"], recoveryProtocol="restart")
    status, row = await call(client, "GET", f"/api/catastrophe/{event_id}")
    assert status == 200
    assert set(row) == EVENT_KEYS | {"protocolRuns"} and row["protocolRuns"] == []
    assert row["affected_agents"] == '["x"]' and row["affectedAgents"] == ["x"]
    assert row["status"] == "active" and row["resolved_at"] is None
    assert row["recovery_protocol"] == "restart" and row["description"] is None
    assert len(row["occurred_at"]) == 19 and "T" not in row["occurred_at"]
    no_agents = await report(client)
    assert (await call(client, "GET", f"/api/catastrophe/{no_agents}"))[1]["affectedAgents"] == []
    assert await call(client, "GET", "/api/catastrophe/nope") == (
        404, {"error": "Catastrophe event not found"})


async def test_report_bad_inputs(client):
    required = {"error": "eventType, severity, and title are required"}
    for missing in ("eventType", "severity", "title"):
        body = {k: v for k, v in EVENT.items() if k != missing}
        assert await call(client, "POST", "/api/catastrophe", body) == (400, required)
    assert await call(client, "POST", "/api/catastrophe", {**EVENT, "title": ""}) == (
        400, required)
    assert await call(client, "POST", "/api/catastrophe", []) == (400, required)
    status, body = await call(client, "POST", "/api/catastrophe", {**EVENT, "eventType": "fire"})
    assert status == 400
    for name in ("server_down", "db_corruption", "network_partition", "api_crash",
                 "breaking_update"):
        assert name in body["error"]
    for severity in ("catastrophic", 5, ["critical"]):
        status, body = await call(client, "POST", "/api/catastrophe",
                                  {**EVENT, "severity": severity})
        assert status == 400 and "critical, major, minor" in body["error"], severity
    for agents in ("a1", [1, 2], {"a": 1}, ["a", None]):
        status, body = await call(client, "POST", "/api/catastrophe",
                                  {**EVENT, "affectedAgents": agents})
        assert status == 400 and "affectedAgents" in body["error"], agents
    status, body = await call(client, "POST", "/api/catastrophe", {**EVENT, "title": {"x": 1}})
    assert status == 400 and "title" in body["error"]
    status, body = await call(client, "POST", "/api/catastrophe",
                              {**EVENT, "description": ["x"]})
    assert status == 400 and "description" in body["error"]
    # Nothing was stored by the refused reports.
    assert (await call(client, "GET", "/api/catastrophe"))[1] == []


async def test_every_event_type_and_severity_is_accepted(client):
    for event_type in ("server_down", "db_corruption", "network_partition", "api_crash",
                       "breaking_update"):
        for severity in ("critical", "major", "minor"):
            await report(client, eventType=event_type, severity=severity)
    assert len((await call(client, "GET", "/api/catastrophe"))[1]) == 15


async def test_protocols_route_is_not_shadowed(client):
    status, body = await call(client, "GET", "/api/catastrophe/protocols")
    assert status == 200
    golden = json.loads(GOLDEN.read_text())
    # The Node server's shape (same keys in the same order, a trigger, numbered steps), with
    # the steps generated from meshd's own state machines: one per state.
    assert list(body) == list(golden)
    for name, protocol in body.items():
        assert isinstance(protocol["trigger"], str) and protocol["trigger"]
        assert all(step.startswith(f"{n}. ") for n, step in enumerate(protocol["steps"], 1))
        assert len(protocol["steps"]) == len(protocol["states"]) == len(PROTOCOLS[name].states)
        assert protocol["states"] == list(PROTOCOLS[name].states)
    assert (await call(client, "GET", "/API/Catastrophe/Protocols/"))[0] == 200


async def test_list_filters_combine(client, storage):
    a = await report(client, severity="critical")
    b = await report(client, severity="minor")
    c = await report(client, severity="critical")
    await call(client, "POST", f"/api/catastrophe/{c}/resolve", {})
    status, rows = await call(client, "GET", "/api/catastrophe")
    assert status == 200 and {r["id"] for r in rows} == {a, b, c}
    assert all(set(r) == EVENT_KEYS for r in rows)
    stamps = [r["occurred_at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    ids = lambda rows: {r["id"] for r in rows}  # noqa: E731
    assert ids((await call(client, "GET", "/api/catastrophe?severity=critical"))[1]) == {a, c}
    assert ids((await call(client, "GET", "/api/catastrophe?status=active"))[1]) == {a, b}
    # Both filters apply (the Node server applied only severity, RB-14).
    both = (await call(client, "GET", "/api/catastrophe?status=active&severity=critical"))[1]
    assert ids(both) == {a}
    # open: active or recovering, what an operator looks for (a protocol makes it recovering).
    await storage.write(store.set_status, b, "recovering", "2026-01-01 00:00:01")
    assert ids((await call(client, "GET", "/api/catastrophe?status=active"))[1]) == {a}
    assert ids((await call(client, "GET", "/api/catastrophe?status=open"))[1]) == {a, b}
    assert ids((await call(client, "GET", "/api/catastrophe?status=open&severity=minor"))[1]) \
        == {b}
    assert (await call(client, "GET", "/api/catastrophe?status=resolved&severity=minor"))[1] == []
    status, rows = await call(client, "GET", "/api/catastrophe?limit=2")
    assert status == 200 and len(rows) == 2
    status, rows = await call(client, "GET", "/api/catastrophe?limit=2&offset=2")
    assert len(rows) == 1
    assert (await call(client, "GET", "/api/catastrophe?limit=x"))[0] == 400


async def test_resolve_keeps_notes_and_refuses_twice(client):
    event_id = await report(client)
    ws = await ws_connect(client)
    # A client that connects is told the open events first.
    opened = await next_event(ws, "catastrophe_alert")
    assert (opened["catastrophe"]["id"], opened["catastrophe"]["status"]) == (event_id, "active")
    status, body = await call(client, "POST", f"/api/catastrophe/{event_id}/resolve",
                              {"resolutionNotes": "restarted the box"})
    assert (status, body) == (200, {"success": True, "message": "Catastrophe resolved"})
    await no_event(ws, "catastrophe_alert")
    _, row = await call(client, "GET", f"/api/catastrophe/{event_id}")
    assert row["status"] == "resolved"
    assert row["resolution_notes"] == "restarted the box"
    assert row["resolved_at"] is not None and len(row["resolved_at"]) == 19
    assert await call(client, "POST", f"/api/catastrophe/{event_id}/resolve", {}) == (
        409, {"error": "Catastrophe event already resolved"})
    _, again = await call(client, "GET", f"/api/catastrophe/{event_id}")
    assert again == row
    await ws.close()


async def test_resolve_without_notes_and_bad_inputs(client):
    event_id = await report(client)
    assert (await call(client, "POST", f"/api/catastrophe/{event_id}/resolve"))[0] == 200
    assert (await call(client, "GET", f"/api/catastrophe/{event_id}"))[1][
        "resolution_notes"] is None
    assert await call(client, "POST", "/api/catastrophe/nope/resolve", {}) == (
        404, {"error": "Catastrophe event not found"})
    other = await report(client)
    status, body = await call(client, "POST", f"/api/catastrophe/{other}/resolve",
                              {"resolutionNotes": {"a": 1}})
    assert status == 400 and "resolutionNotes" in body["error"]
    assert (await call(client, "GET", f"/api/catastrophe/{other}"))[1]["status"] == "active"


async def test_status_moves_forward_for_the_protocol_engine(storage):
    from meshd.errors import Conflict

    def create(tx):
        return store.create_event(tx, event_type="db_corruption", severity="critical",
                                  title="corrupt", now="2026-01-01 00:00:00",
                                  affected_agents=["a"])

    event_id = await storage.write(create)
    for status in ("recovering", "recovering"):
        await storage.write(store.set_status, event_id, status, "2026-01-01 00:00:01")
        assert (await storage.read(store.get_event, event_id))["status"] == "recovering"
    await storage.write(store.set_status, event_id, "resolved", "2026-01-01 00:00:02")
    row = await storage.read(store.get_event, event_id)
    assert (row["status"], row["resolved_at"]) == ("resolved", "2026-01-01 00:00:02")
    with pytest.raises(Conflict):
        await storage.write(store.set_status, event_id, "active", "2026-01-01 00:00:03")


async def test_auth_required(anon):
    assert (await call(anon, "GET", "/api/catastrophe/protocols"))[0] == 401
    assert (await call(anon, "POST", "/api/catastrophe", EVENT))[0] == 401


async def test_connecting_client_gets_only_open_events(client):
    resolved = await report(client, title="old")
    await call(client, "POST", f"/api/catastrophe/{resolved}/resolve", {})
    open_id = await report(client, title="still open")
    ws = await ws_connect(client)
    event = await next_event(ws, "catastrophe_alert")
    assert event["catastrophe"]["id"] == open_id
    await no_event(ws, "catastrophe_alert")
    await ws.close()


async def test_get_event_includes_its_protocol_runs_and_their_steps(client, storage):
    from meshd.store import records

    event_id = await report(client)
    steps = [{"state": "detected", "next_state": "restarted", "outcome": "ok",
              "detail": "worker back", "attempts": 1, "started_at": "2026-01-01 00:00:00",
              "finished_at": "2026-01-01 00:00:01"},
             {"state": "restarted", "next_state": "announced", "outcome": "aborted",
              "detail": "aborted: operator", "attempts": 1,
              "started_at": "2026-01-01 00:00:01", "finished_at": "2026-01-01 00:00:02"},
             {"state": "announced", "next_state": "database_checked", "outcome": "skipped",
              "detail": None, "attempts": 0, "started_at": "2026-01-01 00:00:02",
              "finished_at": "2026-01-01 00:00:02"}]
    for run_id, dry in (("run-1", False), ("run-dry", True)):
        await storage.write(records.upsert_run, {
            "id": run_id, "protocol": "server_crash_recovery", "event_id": event_id,
            "state": "restarted", "outcome": "aborted", "reason": "aborted: operator",
            "dry_run": dry, "started_at": "2026-01-01 00:00:00",
            "updated_at": "2026-01-01 00:00:02", "steps": steps})
    status, row = await call(client, "GET", f"/api/catastrophe/{event_id}")
    assert status == 200
    [run] = row["protocolRuns"]  # dry runs left out
    assert (run["id"], run["outcome"]) == ("run-1", "aborted")
    assert run["steps"] == steps
