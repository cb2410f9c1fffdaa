"""Messaging routes: send (and its idempotent replay), inbox, read, status, failed, retry,
broadcast; their bad inputs and WebSocket events."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime

from tests.conftest import call, next_event, no_event, register, ws_connect

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DB_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
ROW_KEYS = {"id", "from_agent", "to_agent", "content", "message_type", "read", "status",
            "timeout_ms", "created_at", "client_id"}
REQUIRED = "from, to, and content are required"


async def send(client, **body):
    return await call(client, "POST", "/api/messages", body)


async def sent(client, **body) -> str:
    status, resp = await send(client, **body)
    assert status == 200, resp
    return resp["messageId"]


async def query(storage, sql: str, params=()):
    return await storage.read(lambda db: db.query(sql, params))


async def execute(storage, sql: str, params=()):
    return await storage.write(lambda tx: tx.execute(sql, params))


async def row(storage, message_id: str) -> dict:
    rows = await query(storage, "SELECT * FROM messages WHERE id = ?", (message_id,))
    assert len(rows) == 1
    return rows[0]


async def test_send_echoes_stores_and_announces(client, storage):
    a, b = await register(client, "A"), await register(client, "B")
    ws = await ws_connect(client)
    status, body = await send(client, **{"from": a, "to": b, "content": "hi"})
    assert status == 200
    assert body["success"] is True
    message = body["message"]
    assert message == {"id": body["messageId"], "from": a, "to": b, "content": "hi",
                       "messageType": "direct", "createdAt": message["createdAt"]}
    assert ISO_MS.match(message["createdAt"])
    event = await next_event(ws, "new_message")
    assert event == {"type": "new_message", "message": message}
    stored = await row(storage, body["messageId"])
    assert stored["from_agent"] == a and stored["to_agent"] == b and stored["content"] == "hi"
    assert (stored["message_type"], stored["read"], stored["status"]) == ("direct", 0, "pending")
    assert stored["timeout_ms"] is None and stored["client_id"] is None
    assert DB_TIME.match(stored["created_at"])
    # The echo's ISO time and the stored DB time are the same moment.
    assert message["createdAt"][:19] == stored["created_at"].replace(" ", "T")
    await ws.close()


async def test_recipient_is_not_checked(client, storage):
    status, body = await send(client, **{"from": "ghost-1", "to": "ghost-2", "content": "x"})
    assert status == 200
    assert (await row(storage, body["messageId"]))["to_agent"] == "ghost-2"


async def test_content_of_any_type_is_stored_as_text_and_echoed_as_sent(client, storage):
    cases = [(42, "42"), (1.5, "1.5"), (True, "true"), ({"a": 1}, '{"a":1}'), ([], "[]"),
             ([1, "x"], '[1,"x"]'), ("plain", "plain")]
    for content, stored in cases:
        status, body = await send(client, **{"from": "a", "to": "b", "content": content})
        assert status == 200, content
        assert body["message"]["content"] == content
        assert (await row(storage, body["messageId"]))["content"] == stored


async def test_message_type_default_null_and_custom(client, storage):
    base = {"from": "a", "to": "b", "content": "x"}
    _, body = await send(client, **base)
    assert body["message"]["messageType"] == "direct"
    _, body = await send(client, **base, messageType=None)
    assert body["message"]["messageType"] is None
    assert (await row(storage, body["messageId"]))["message_type"] is None
    _, body = await send(client, **base, messageType="task")
    assert (await row(storage, body["messageId"]))["message_type"] == "task"


async def test_send_bad_inputs_store_nothing(client, storage):
    ws = await ws_connect(client)
    missing = [{}, {"from": "a", "to": "b"}, {"from": "a", "content": "x"},
               {"to": "b", "content": "x"}, {"from": "", "to": "b", "content": "x"},
               {"from": "a", "to": "b", "content": 0}, {"from": "a", "to": "b", "content": False},
               {"from": "a", "to": None, "content": "x"},
               {"fromAgentId": "a", "toAgentId": "b", "message": "x"},
               {"sender": "a", "recipient": "b", "content": "x"}]
    for body in missing:
        assert await send(client, **body) == (400, {"error": REQUIRED}), body
    assert await call(client, "POST", "/api/messages", []) == (400, {"error": REQUIRED})
    base = {"from": "a", "to": "b", "content": "x"}
    typed = [({**base, "from": {"id": 1}}, "from"), ({**base, "to": ["b"]}, "to"),
             ({**base, "messageType": {}}, "messageType")]
    for body, field in typed:
        status, resp = await send(client, **body)
        assert status == 400 and resp["error"] == f"{field} must be a string", body
    for bad in (0, -5, 1.5, "100", True, [], 2**60):
        status, resp = await send(client, **base, timeoutMs=bad)
        assert (status, resp) == (400, {"error": "timeoutMs must be a positive integer"}), bad
    for bad in ("", "x" * 201, 5, {"k": 1}):
        status, resp = await send(client, **base, clientId=bad)
        assert status == 400 and resp["error"].startswith("clientId must be a string"), bad
    status, resp = await call(client, "POST", "/api/messages", base,
                              headers={"Idempotency-Key": "k" * 201})
    assert status == 400 and resp["error"].startswith("Idempotency-Key must be a string")
    assert await query(storage, "SELECT id FROM messages") == []
    await no_event(ws, "new_message")
    await ws.close()


async def test_timeout_ms_extension_is_stored(client, storage):
    base = {"from": "a", "to": "b", "content": "x"}
    _, body = await send(client, **base, timeoutMs=5000)
    assert (await row(storage, body["messageId"]))["timeout_ms"] == 5000
    _, body = await send(client, **base, timeoutMs=7000.0)
    assert (await row(storage, body["messageId"]))["timeout_ms"] == 7000
    _, body = await send(client, **base, timeoutMs=None)
    assert (await row(storage, body["messageId"]))["timeout_ms"] is None


async def test_client_id_replay_returns_the_original_and_announces_once(client, storage):
    ws = await ws_connect(client)
    body = {"from": "a", "to": "b", "content": {"task": 1}, "clientId": "c-1"}
    status, first = await send(client, **body)
    assert status == 200 and first["message"]["clientId"] == "c-1"
    event = await next_event(ws, "new_message")
    assert event["message"] == first["message"]
    # A late repeat, even with other fields, gives back the stored message and no event.
    status, again = await send(client, **{**body, "to": "z", "content": "changed"})
    assert status == 200
    stored = await row(storage, first["messageId"])
    assert again == {"success": True, "messageId": first["messageId"], "message": {
        "id": first["messageId"], "from": "a", "to": "b", "content": '{"task":1}',
        "messageType": "direct",
        "createdAt": stored["created_at"].replace(" ", "T") + ".000Z", "clientId": "c-1"}}
    await no_event(ws, "new_message")
    rows = await query(storage, "SELECT id FROM messages WHERE client_id = 'c-1'")
    assert len(rows) == 1
    # The key is scoped to its sender: another sender's c-1 is a new message.
    status, other = await send(client, **{**body, "from": "other"})
    assert status == 200 and other["messageId"] != first["messageId"]
    await next_event(ws, "new_message")
    await ws.close()


async def test_idempotency_key_header_and_body_precedence(client, storage):
    base = {"from": "a", "to": "b", "content": "x"}
    status, first = await call(client, "POST", "/api/messages", base,
                               headers={"Idempotency-Key": "h-1"})
    assert status == 200 and first["message"]["clientId"] == "h-1"
    _, again = await call(client, "POST", "/api/messages", base,
                          headers={"Idempotency-Key": "h-1"})
    assert again["messageId"] == first["messageId"]
    # The body's clientId wins over the header.
    _, both = await call(client, "POST", "/api/messages", {**base, "clientId": "b-1"},
                         headers={"Idempotency-Key": "h-1"})
    assert both["messageId"] != first["messageId"]
    assert (await row(storage, both["messageId"]))["client_id"] == "b-1"
    _, by_header = await call(client, "POST", "/api/messages", base,
                              headers={"Idempotency-Key": "b-1"})
    assert by_header["messageId"] == both["messageId"]


async def test_concurrent_repeats_store_one_message(client, storage):
    body = {"from": "a", "to": "b", "content": "x", "clientId": "race"}
    results = await asyncio.gather(*[send(client, **body) for _ in range(15)])
    assert {status for status, _ in results} == {200}
    assert len({resp["messageId"] for _, resp in results}) == 1
    assert len(await query(storage, "SELECT id FROM messages")) == 1


async def test_inbox_rows_order_filters_and_paging(client, storage):
    first = await sent(client, **{"from": "a", "to": "b", "content": "1"})
    second = await sent(client, **{"from": "a", "to": "b", "content": "2"})
    third = await sent(client, **{"from": "c", "to": "b", "content": "3"})
    await sent(client, **{"from": "b", "to": "a", "content": "not in b's inbox"})
    # Same second: insertion order. An older message goes last.
    for message_id in (first, second, third):
        await execute(storage, "UPDATE messages SET created_at = '2030-01-01 10:00:00'"
                      " WHERE id = ?", (message_id,))
    await execute(storage, "UPDATE messages SET created_at = '2030-01-01 09:00:00'"
                  " WHERE id = ?", (first,))
    status, rows = await call(client, "GET", "/api/messages/b")
    assert status == 200
    assert [r["id"] for r in rows] == [second, third, first]
    assert set(rows[0]) == ROW_KEYS
    assert rows[0]["read"] == 0 and rows[0]["status"] == "pending"
    # Reading does not mark as read.
    _, again = await call(client, "GET", "/api/messages/b?unreadOnly=true")
    assert [r["id"] for r in again] == [second, third, first]
    assert await call(client, "POST", f"/api/messages/{third}/read") == (200, {"success": True})
    _, unread = await call(client, "GET", "/api/messages/b?unreadOnly=true")
    assert [r["id"] for r in unread] == [second, first]
    for ignored in ("1", "yes", "TRUE"):
        _, rows = await call(client, "GET", f"/api/messages/b?unreadOnly={ignored}")
        assert len(rows) == 3
    _, page = await call(client, "GET", "/api/messages/b?limit=1&offset=1")
    assert [r["id"] for r in page] == [third]
    _, page = await call(client, "GET", "/api/messages/b?limit=2")
    assert [r["id"] for r in page] == [second, third]
    assert (await call(client, "GET", "/api/messages/b?limit=-1"))[0] == 400
    assert await call(client, "GET", "/api/messages/nobody") == (200, [])


async def test_inbox_since_accepts_iso_and_db_format(client, storage):
    """An ISO `since` earlier the same day returns the message (the Node server dropped it)."""
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    message_id = await sent(client, **{"from": "a", "to": "b", "content": "x"})
    await execute(storage, "UPDATE messages SET created_at = ? WHERE id = ?",
                  (f"{today} 12:00:00", message_id))

    async def ids(since: str) -> list[str]:
        status, rows = await call(client, "GET", "/api/messages/b", params={"since": since})
        assert status == 200, rows
        return [r["id"] for r in rows]

    assert await ids(f"{today}T11:59:59.000Z") == [message_id]
    assert await ids(f"{today}T11:00:00Z") == [message_id]
    assert await ids(f"{today}T13:00:00+02:00") == [message_id]
    assert await ids(f"{today} 11:59:59") == [message_id]
    assert await ids(f"{today}T12:00:00.000Z") == []
    assert await ids(f"{today} 12:00:00") == []
    assert await ids("") == [message_id]
    for bad in ("yesterday", "2030-13-45", "12:00"):
        status, body = await call(client, "GET", "/api/messages/b", params={"since": bad})
        assert (status, body) == (400, {"error": "since must be a timestamp"}), bad


async def test_mark_read_unknown_message_is_404(client, storage):
    message_id = await sent(client, **{"from": "a", "to": "b", "content": "x"})
    assert await call(client, "POST", f"/api/messages/{message_id}/read") == (
        200, {"success": True})
    assert (await row(storage, message_id))["read"] == 1
    # Marking twice is fine.
    assert (await call(client, "POST", f"/api/messages/{message_id}/read"))[0] == 200
    assert await call(client, "POST", "/api/messages/nope/read") == (
        404, {"error": "Message not found"})


async def test_status_updates_and_failure_events(client, storage):
    message_id = await sent(client, **{"from": "a", "to": "b", "content": "x"})
    ws = await ws_connect(client)
    path = f"/api/messages/{message_id}/status"
    assert await call(client, "PATCH", path, {"status": "delivered"}) == (
        200, {"success": True, "status": "delivered"})
    await no_event(ws, "message_failed")
    status, _ = await call(client, "PATCH", path, {"status": "failed", "error": "boom"})
    assert status == 200
    assert await next_event(ws, "message_failed") == {
        "type": "message_failed", "messageId": message_id, "status": "failed",
        "error": "boom", "toAgent": "b"}
    stored = await row(storage, message_id)
    assert (stored["status"], stored["error"]) == ("failed", "boom")
    # No transition rules; a missing error gets the default in the event and keeps the stored.
    assert (await call(client, "PATCH", path, {"status": "timeout"}))[0] == 200
    event = await next_event(ws, "message_failed")
    assert (event["status"], event["error"]) == ("timeout", "Message processing failed")
    assert (await row(storage, message_id))["error"] == "boom"
    assert (await call(client, "PATCH", path, {"status": "completed"}))[0] == 200
    assert (await row(storage, message_id))["status"] == "completed"
    await no_event(ws, "message_failed")
    await ws.close()


async def test_status_bad_inputs_in_order(client, storage):
    message_id = await sent(client, **{"from": "a", "to": "b", "content": "x"})
    invalid = ("Invalid status. Must be one of: pending, delivered, processing, completed,"
               " failed, timeout")
    path = f"/api/messages/{message_id}/status"
    for body in ({}, {"status": ""}, {"status": None}, {"status": 0}):
        assert await call(client, "PATCH", path, body) == (
            400, {"error": "status is required"}), body
    for bad in ("bogus", "FAILED", 5, ["failed"], {"s": 1}):
        assert await call(client, "PATCH", path, {"status": bad}) == (
            400, {"error": invalid}), bad
    # The status is checked before the message exists.
    assert await call(client, "PATCH", "/api/messages/nope/status", {"status": "bogus"}) == (
        400, {"error": invalid})
    assert await call(client, "PATCH", "/api/messages/nope/status", {"status": "failed"}) == (
        404, {"error": "Message not found"})
    status, body = await call(client, "PATCH", path, {"status": "failed", "error": {"x": 1}})
    assert status == 400 and body["error"] == "error must be a string"
    assert (await row(storage, message_id))["status"] == "pending"


async def test_failed_list_statuses_order_and_default_limit(client, storage):
    failed = await sent(client, **{"from": "a", "to": "b", "content": "1"})
    timed_out = await sent(client, **{"from": "a", "to": "b", "content": "2"})
    await sent(client, **{"from": "a", "to": "b", "content": "fine"})
    other = await sent(client, **{"from": "a", "to": "c", "content": "3"})
    await call(client, "PATCH", f"/api/messages/{failed}/status", {"status": "failed"})
    await call(client, "PATCH", f"/api/messages/{timed_out}/status", {"status": "timeout"})
    await call(client, "PATCH", f"/api/messages/{other}/status", {"status": "failed"})
    await execute(storage, "UPDATE messages SET created_at = '2001-01-01 00:00:00' WHERE id = ?",
                  (failed,))
    status, rows = await call(client, "GET", "/api/messages/b/failed")
    assert status == 200
    assert [r["id"] for r in rows] == [timed_out, failed]
    assert set(rows[0]) == ROW_KEYS
    await storage.write(lambda tx: tx.executemany(
        "INSERT INTO messages (id, from_agent, to_agent, content, status, created_at)"
        " VALUES (?, 'a', 'bulk', 'x', 'failed', '2030-01-01 00:00:00')",
        [(f"m{i:03}",) for i in range(60)]))
    _, rows = await call(client, "GET", "/api/messages/bulk/failed")
    assert len(rows) == 50
    assert [r["id"] for r in rows[:2]] == ["m000", "m001"]
    _, rows = await call(client, "GET", "/api/messages/bulk/failed?limit=100")
    assert len(rows) == 60
    _, rows = await call(client, "GET", "/api/messages/bulk/failed?limit=2&offset=3")
    assert [r["id"] for r in rows] == ["m003", "m004"]
    assert (await call(client, "GET", "/api/messages/bulk/failed?offset=x"))[0] == 400


async def test_retry_requeues_as_unread_and_announces(client, storage):
    message_id = await sent(client, **{"from": "a", "to": "b", "content": "x"})
    await call(client, "POST", f"/api/messages/{message_id}/read")
    path = f"/api/messages/{message_id}/retry"
    refused = (400, {"error": "Only failed or timeout messages can be retried"})
    assert await call(client, "POST", path) == refused
    await call(client, "PATCH", f"/api/messages/{message_id}/status", {"status": "failed"})
    ws = await ws_connect(client)
    assert await call(client, "POST", path) == (
        200, {"success": True, "message": "Message queued for retry"})
    assert await next_event(ws, "message_retry") == {
        "type": "message_retry", "messageId": message_id, "toAgent": "b"}
    stored = await row(storage, message_id)
    assert (stored["status"], stored["read"]) == ("pending", 0)
    _, unread = await call(client, "GET", "/api/messages/b?unreadOnly=true")
    assert [r["id"] for r in unread] == [message_id]
    assert await call(client, "POST", path) == refused
    assert await call(client, "POST", "/api/messages/nope/retry") == (
        404, {"error": "Message not found"})
    await no_event(ws, "message_retry")
    await ws.close()


async def test_broadcast_reaches_every_other_agent_in_one_event(client, storage):
    a, b, c = [await register(client, name) for name in ("A", "B", "C")]
    ws = await ws_connect(client)
    status, body = await call(client, "POST", "/api/broadcast",
                              {"from": a, "content": {"note": 1}, "priority": "high"})
    assert status == 200
    assert body["success"] is True and body["recipientCount"] == 2
    assert len(body["messageIds"]) == 2
    assert await next_event(ws, "broadcast") == {
        "type": "broadcast", "from": a, "content": {"note": 1}, "recipientCount": 2}
    await no_event(ws, "new_message")
    rows = await query(storage, "SELECT id, from_agent, to_agent, content, message_type,"
                       " status, read, created_at FROM messages ORDER BY rowid")
    assert [r["id"] for r in rows] == body["messageIds"]
    assert [r["to_agent"] for r in rows] == [b, c]
    assert {(r["from_agent"], r["content"], r["message_type"], r["status"], r["read"])
            for r in rows} == {(a, '{"note":1}', "broadcast", "pending", 0)}
    assert len({r["created_at"] for r in rows}) == 1
    # A sender that is not an agent reaches everyone.
    _, body = await call(client, "POST", "/api/broadcast", {"from": "outsider", "content": "x"})
    assert body["recipientCount"] == 3
    await ws.close()


async def test_broadcast_with_no_recipients_and_bad_inputs(client, storage):
    a = await register(client, "Lonely")
    assert await call(client, "POST", "/api/broadcast", {"from": a, "content": "x"}) == (
        200, {"success": True, "recipientCount": 0, "messageIds": []})
    for body in ({}, {"from": a}, {"content": "x"}, {"from": "", "content": "x"},
                 {"from": a, "content": 0}, {"sender": a, "content": "x"}):
        assert await call(client, "POST", "/api/broadcast", body) == (
            400, {"error": "from and content are required"}), body
    status, body = await call(client, "POST", "/api/broadcast", {"from": [a], "content": "x"})
    assert (status, body) == (400, {"error": "from must be a string"})


async def test_broadcast_is_all_or_nothing(client, storage, monkeypatch):
    for name in ("A", "B", "C", "D"):
        await register(client, name)
    ws = await ws_connect(client)
    # The last recipient's insert fails (a duplicate id): no recipient gets the message.
    # (cycled: a backend that retries a unique violation meets the same duplicate again)
    ids = itertools.cycle(["id-1", "id-2", "id-3", "id-1"])
    monkeypatch.setattr("meshd.store.messages.new_id", lambda: next(ids))
    status, body = await call(client, "POST", "/api/broadcast", {"from": "x", "content": "y"})
    assert status == 409 and "error" in body
    assert await query(storage, "SELECT id FROM messages") == []
    await no_event(ws, "broadcast")
    await ws.close()


async def test_agent_scoped_socket_gets_only_its_messages(client):
    ws = await ws_connect(client, "/ws?agentId=b&onlyMine=true")
    await sent(client, **{"from": "a", "to": "c", "content": "not for b"})
    await sent(client, **{"from": "a", "to": "b", "content": "for b"})
    event = await next_event(ws, "new_message")
    assert event["message"]["content"] == "for b"
    await call(client, "POST", "/api/broadcast", {"from": "a", "content": "all"})
    assert (await next_event(ws, "broadcast"))["content"] == "all"
    await ws.close()
