"""System update routes: announce, list, get, acknowledge (upsert), acknowledgments, adoption;
their bad inputs and the system_update event."""

from __future__ import annotations

from meshd.clock import db_time_ago
from tests.conftest import call, next_event, no_event, register, ws_connect

UPDATE_KEYS = ["id", "version", "update_type", "title", "description", "required_version",
               "breaking_change", "announcement", "created_by", "created_at", "expires_at"]


async def create(client, **fields) -> str:
    body = {"version": "2.0.0", "updateType": "api", "title": "T", **fields}
    status, resp = await call(client, "POST", "/api/updates", body)
    assert status == 200, resp
    return resp["updateId"]


async def set_column(storage, table: str, column: str, value, row_id: str) -> None:
    await storage.write(lambda tx: tx.execute(
        f"UPDATE {table} SET {column} = ? WHERE id = ?", (value, row_id)))


def ids(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows]


async def test_create_broadcasts_and_stores(client):
    ws = await ws_connect(client)
    body = {"version": "2.0.0", "updateType": "api", "title": "New File Transfer Features",
            "description": "Agents can now share files", "breakingChange": False,
            "announcement": "# File Transfer Support"}
    status, resp = await call(client, "POST", "/api/updates", body)
    assert status == 200
    update_id = resp["updateId"]
    assert resp == {"success": True, "updateId": update_id, "broadcast": True,
                    "message": "System update created and broadcasted"}
    event = await next_event(ws, "system_update")
    created_at = event["update"].pop("createdAt")
    assert created_at.endswith("Z") and "T" in created_at
    assert event["update"] == {"id": update_id, "version": "2.0.0", "updateType": "api",
                               "title": "New File Transfer Features",
                               "description": "Agents can now share files",
                               "breakingChange": False,
                               "announcement": "# File Transfer Support"}
    status, row = await call(client, "GET", f"/api/updates/{update_id}")
    assert status == 200 and list(row) == UPDATE_KEYS
    assert row["breaking_change"] == 0 and row["created_by"] == "DuckBot"
    assert row["required_version"] is None and row["expires_at"] is None
    assert row["created_at"].replace(" ", "T") == created_at[:19]
    # Absent optional keys are left out of the event.
    await create(client, title="Minimal")
    event = await next_event(ws, "system_update")
    assert set(event["update"]) == {"id", "version", "updateType", "title", "createdAt"}
    await ws.close()


async def test_create_options_and_truthiness(client):
    cases = [(True, 1), ("yes", 1), (1, 1), (False, 0), ("", 0), (0, 0), (None, 0)]
    for value, stored in cases:
        update_id = await create(client, breakingChange=value)
        _, row = await call(client, "GET", f"/api/updates/{update_id}")
        assert row["breaking_change"] == stored, value
    update_id = await create(client, createdBy="Ops", expiresAt="2031-05-06T07:08:09.123Z",
                             requiredVersion=3, version=2)
    _, row = await call(client, "GET", f"/api/updates/{update_id}")
    assert (row["created_by"], row["expires_at"], row["required_version"], row["version"]) == (
        "Ops", "2031-05-06 07:08:09", "3", "2")
    update_id = await create(client, expiresAt="2031-05-06 07:08:09", createdBy="")
    _, row = await call(client, "GET", f"/api/updates/{update_id}")
    assert (row["created_by"], row["expires_at"]) == ("DuckBot", "2031-05-06 07:08:09")


async def test_create_bad_inputs(client):
    required = (400, {"error": "version, updateType, and title are required"})
    good = {"version": "1", "updateType": "api", "title": "T"}
    for key in good:
        assert await call(client, "POST", "/api/updates",
                          {k: v for k, v in good.items() if k != key}) == required
        assert await call(client, "POST", "/api/updates", {**good, key: ""}) == required
    assert await call(client, "POST", "/api/updates", {}) == required
    for key, value in (("title", {"a": 1}), ("description", ["x"]), ("createdBy", {}),
                       ("expiresAt", "next tuesday"), ("expiresAt", 12)):
        status, resp = await call(client, "POST", "/api/updates", {**good, key: value})
        assert status == 400 and key in resp["error"], (key, value)
    assert (await call(client, "GET", "/api/updates"))[1] == []


async def test_curl_style_form_content_type(client):
    """The seed's phase 5 `curl -d` sends the JSON as a form; it is accepted."""
    status, resp = await call(
        client, "POST", "/api/updates",
        data=b'{"version":"2.0.0","updateType":"api","title":"New","breakingChange":false}',
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and resp["broadcast"] is True


async def test_list_filters_combine_and_order(client, storage):
    old, mid, new = [await create(client, title=t) for t in ("old", "mid", "new")]
    for update_id, stamp in ((old, "2030-01-01 00:00:00"), (mid, "2030-01-02 00:00:00"),
                             (new, "2030-01-03 00:00:00")):
        await set_column(storage, "system_updates", "created_at", stamp, update_id)
    await set_column(storage, "system_updates", "expires_at", db_time_ago(60), new)
    await set_column(storage, "system_updates", "expires_at", "2999-01-01 00:00:00", mid)
    status, rows = await call(client, "GET", "/api/updates")
    assert status == 200 and ids(rows) == [new, mid, old]
    assert list(rows[0]) == UPDATE_KEYS
    # ISO and DB-format `since` both compare as times (RB-03).
    assert ids((await call(client, "GET", "/api/updates?since=2030-01-01T12:00:00Z"))[1]) == [
        new, mid]
    assert ids((await call(client, "GET", "/api/updates?since=2030-01-02 00:00:00"))[1]) == [
        new]
    assert ids((await call(client, "GET", "/api/updates?activeOnly=true"))[1]) == [mid, old]
    assert ids((await call(client, "GET", "/api/updates?activeOnly=1"))[1]) == [new, mid, old]
    # Combined with AND (the Node server dropped `since` under activeOnly, RB-14).
    assert ids((await call(
        client, "GET", "/api/updates?activeOnly=true&since=2030-01-01T12:00:00Z"))[1]) == [mid]
    assert ids((await call(client, "GET", "/api/updates?since="))[1]) == [new, mid, old]
    assert ids((await call(client, "GET", "/api/updates?limit=1&offset=1"))[1]) == [mid]
    status, resp = await call(client, "GET", "/api/updates?since=yesterday")
    assert status == 400 and "since" in resp["error"]
    assert (await call(client, "GET", "/api/updates?offset=-1"))[0] == 400


async def test_get_unknown_update(client):
    assert await call(client, "GET", "/api/updates/nope") == (
        404, {"error": "Update not found"})


async def test_acknowledge_upserts_one_row_per_agent(client):
    update_id = await create(client)
    agent = await register(client, "Worker", endpoint="http://w:1")
    ws = await ws_connect(client)
    path = f"/api/updates/{update_id}/acknowledge"
    status, resp = await call(client, "POST", path, {
        "agentId": agent, "status": "accepted", "agentVersion": "2.0.0",
        "notes": "Updating to support file transfer"})
    assert status == 200
    ack_id = resp["acknowledgmentId"]
    assert resp == {"success": True, "message": "Update acknowledged",
                    "acknowledgmentId": ack_id}
    await no_event(ws, "update_acknowledged")
    await ws.close()
    status, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments")
    assert status == 200 and len(rows) == 1
    first = rows[0]
    assert first == {"id": ack_id, "update_id": update_id, "agent_id": agent,
                     "acknowledged_at": first["acknowledged_at"], "agent_version": "2.0.0",
                     "status": "accepted", "notes": "Updating to support file transfer",
                     "agent_name": "Worker", "agent_endpoint": "http://w:1"}
    # A repeat (a reconnecting auto-update client) updates the same row (RB-05).
    status, resp = await call(client, "POST", path, {"agentId": agent, "status": "completed",
                                                      "agentVersion": "2.0.1"})
    assert (status, resp["acknowledgmentId"]) == (200, ack_id)
    _, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments")
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["agent_version"], rows[0]["notes"]) == (
        "completed", "2.0.1", "Updating to support file transfer")
    await call(client, "POST", path, {"agentId": agent, "status": "rejected", "notes": None})
    _, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments")
    assert (rows[0]["status"], rows[0]["agent_version"], rows[0]["notes"]) == (
        "rejected", "2.0.1", None)


async def test_acknowledgments_newest_first(client, storage):
    update_id = await create(client)
    acks = []
    for name, stamp in (("A", "2030-01-02 00:00:00"), ("B", "2030-01-03 00:00:00"),
                        ("C", "2030-01-01 00:00:00")):
        agent = await register(client, name)
        _, resp = await call(client, "POST", f"/api/updates/{update_id}/acknowledge",
                             {"agentId": agent, "status": "accepted"})
        await set_column(storage, "update_acknowledgments", "acknowledged_at", stamp,
                         resp["acknowledgmentId"])
        acks.append(resp["acknowledgmentId"])
    _, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments")
    assert [r["id"] for r in rows] == [acks[1], acks[0], acks[2]]
    _, rows = await call(client, "GET", f"/api/updates/{update_id}/acknowledgments?limit=1")
    assert [r["id"] for r in rows] == [acks[1]]
    assert await call(client, "GET", "/api/updates/nope/acknowledgments") == (200, [])


async def test_acknowledge_bad_inputs(client):
    update_id = await create(client)
    agent = await register(client, "Worker")
    path = f"/api/updates/{update_id}/acknowledge"
    required = (400, {"error": "agentId and status are required"})
    for body in ({}, {"agentId": agent}, {"status": "accepted"}, {"agentId": "",
                                                                   "status": "accepted"}):
        assert await call(client, "POST", path, body) == required
    status, resp = await call(client, "POST", path, {"agentId": agent,
                                                     "status": "anything-goes"})
    assert status == 400
    assert resp["error"] == "status must be one of pending, accepted, rejected, completed"
    status, resp = await call(client, "POST", path, {"agentId": agent, "status": "accepted",
                                                     "notes": {"x": 1}})
    assert status == 400 and "notes" in resp["error"]
    assert await call(client, "POST", "/api/updates/nope/acknowledge",
                      {"agentId": agent, "status": "accepted"}) == (
        404, {"error": "Update not found"})
    assert await call(client, "POST", path, {"agentId": "ghost", "status": "accepted"}) == (
        404, {"error": "Agent not found"})
    assert (await call(client, "GET", f"/api/updates/{update_id}/acknowledgments"))[1] == []


async def test_adoption_among_active_agents(client, storage):
    update_id = await create(client, version="3.1.0", requiredVersion="3.0.0",
                             breakingChange=True)
    path = f"/api/updates/{update_id}/adoption"
    status, resp = await call(client, "GET", path)
    assert status == 200
    assert resp == {"updateId": update_id, "version": "3.1.0", "requiredVersion": "3.0.0",
                    "breakingChange": True, "activeAgents": 0,
                    "counts": {"pending": 0, "accepted": 0, "rejected": 0, "completed": 0},
                    "acknowledged": 0, "adopted": 0, "adoptionRate": 0}
    statuses = {"A": "accepted", "B": "completed", "C": "rejected", "D": "pending",
                "Stale": "accepted"}
    for name, ack_status in statuses.items():
        agent = await register(client, name)
        await call(client, "POST", f"/api/updates/{update_id}/acknowledge",
                   {"agentId": agent, "status": ack_status})
        if name == "Stale":
            await set_column(storage, "agents", "last_seen", "2020-01-01 00:00:00", agent)
    await register(client, "Silent")
    _, resp = await call(client, "GET", path)
    assert resp["counts"] == {"pending": 1, "accepted": 2, "rejected": 1, "completed": 1}
    assert resp["acknowledged"] == 5
    assert resp["activeAgents"] == 5  # A, B, C, D, Silent
    assert resp["adopted"] == 2  # A and B; Stale is not active
    assert resp["adoptionRate"] == 0.4
    assert await call(client, "GET", "/api/updates/nope/adoption") == (
        404, {"error": "Update not found"})
