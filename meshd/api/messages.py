"""Messaging routes: send (idempotent by client id), inbox, read, status, failed, retry, and
the global broadcast."""

from __future__ import annotations

from aiohttp import web

from meshd import log as logging
from meshd.api.http import (
    MISSING,
    json_response,
    optional_text,
    paging,
    query_flag,
    query_text,
    read_body,
    stored_content,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, storage
from meshd.clock import db_time, iso_time, normalize_since, parse_time, utcnow
from meshd.errors import Invalid
from meshd.store import messages as store
from meshd.store.events import Event, emitting

log = logging.get("meshd.messages")

routes = web.RouteTableDef()

STATUSES = ("pending", "delivered", "processing", "completed", "failed", "timeout")
FAILURE_STATUSES = ("failed", "timeout")
DEFAULT_FAILURE = "Message processing failed"
FAILED_LIST_LIMIT = 50
CLIENT_ID_MAX = 200
MAX_SAFE_INTEGER = 2**53 - 1


def timeout_ms(body: dict) -> int | None:
    """The optional `timeoutMs` extension (RB-04): a positive whole number of milliseconds."""
    value = body.get("timeoutMs")
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or not 0 < value <= MAX_SAFE_INTEGER:
        raise Invalid("timeoutMs must be a positive integer")
    return int(value)


def client_id(request: web.Request, body: dict) -> str | None:
    """The sender's idempotency key: body `clientId`, else the `Idempotency-Key` header."""
    value, source = body.get("clientId"), "clientId"
    if value is None:
        value, source = request.headers.get("Idempotency-Key"), "Idempotency-Key"
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= CLIENT_ID_MAX:
        raise Invalid(f"{source} must be a string of 1 to {CLIENT_ID_MAX} characters")
    return value


def echo_of_row(row: dict) -> dict:
    """The `message` echo of an already stored message, for an idempotent replay."""
    moment = parse_time(row["created_at"])
    echo = {"id": row["id"], "from": row["from_agent"], "to": row["to_agent"],
            "content": row["content"], "messageType": row["message_type"],
            "createdAt": iso_time(moment) if moment else row["created_at"]}
    if row["client_id"] is not None:
        echo["clientId"] = row["client_id"]
    return echo


@routes.post("/api/messages")
async def send(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not (truthy(body.get("from")) and truthy(body.get("to")) and truthy(body.get("content"))):
        raise Invalid("from, to, and content are required")
    message_type = body.get("messageType", MISSING)
    outgoing = store.Outgoing(
        from_agent=text(body["from"], "from"),
        to_agent=text(body["to"], "to"),
        content=stored_content(body["content"]),
        message_type=optional_text(body, "messageType", "direct"),
        timeout_ms=timeout_ms(body),
        client_id=client_id(request, body),
    )
    request[AGENT_ID] = outgoing.from_agent
    moment = utcnow()

    def echo(message_id: str) -> dict:
        message = {"id": message_id, "from": body["from"], "to": body["to"],
                   "content": body["content"],
                   "messageType": "direct" if message_type is MISSING else message_type,
                   "createdAt": iso_time(moment)}
        if outgoing.client_id is not None:
            message["clientId"] = outgoing.client_id
        return message

    def delivered(result: tuple[dict, bool]) -> list[Event]:
        row, replayed = result
        return [] if replayed else [Event("new_message", {"message": echo(row["id"])},
                                          [outgoing.to_agent, outgoing.from_agent])]

    row, replayed = await storage(request).write(emitting(store.send, delivered), outgoing,
                                                 db_time(moment))
    if replayed:
        log.info("messages.replayed", message_id=row["id"], from_agent=row["from_agent"],
                 client_id=row["client_id"])
        return json_response({"success": True, "messageId": row["id"],
                              "message": echo_of_row(row)})
    return json_response({"success": True, "messageId": row["id"], "message": echo(row["id"])})


@routes.get("/api/messages/{agentId}")
async def inbox(request: web.Request) -> web.Response:
    raw_since = query_text(request, "since")
    # Normalized to the stored format: the Node server compared ISO text with it (RB-03).
    since = normalize_since(raw_since) if raw_since else None
    if raw_since and since is None:
        raise Invalid("since must be a timestamp")
    limit, offset = paging(request)
    rows = await storage(request).read(store.inbox, request.match_info["agentId"], since,
                                       query_flag(request, "unreadOnly"), limit, offset)
    return json_response(rows)


@routes.post("/api/messages/{id}/read")
async def mark_read(request: web.Request) -> web.Response:
    await storage(request).write(store.mark_read, request.match_info["id"])
    return json_response({"success": True})


@routes.post("/api/broadcast")
async def broadcast(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not (truthy(body.get("from")) and truthy(body.get("content"))):
        raise Invalid("from and content are required")
    from_agent = text(body["from"], "from")
    request[AGENT_ID] = from_agent
    ids = await storage(request).write(
        emitting(store.broadcast, lambda ids: [Event("broadcast", {
            "from": body["from"], "content": body["content"], "recipientCount": len(ids)})]),
        from_agent, stored_content(body["content"]), db_time())
    return json_response({"success": True, "recipientCount": len(ids), "messageIds": ids})


@routes.patch("/api/messages/{id}/status")
async def set_status(request: web.Request) -> web.Response:
    body = await read_body(request)
    status = body.get("status")
    if not truthy(status):
        raise Invalid("status is required")
    if not isinstance(status, str) or status not in STATUSES:
        raise Invalid(f"Invalid status. Must be one of: {', '.join(STATUSES)}")
    error = body.get("error")
    error_text = text(error, "error") if truthy(error) else None
    message_id = request.match_info["id"]

    def failure(to_agent: str) -> list[Event]:
        if status not in FAILURE_STATUSES:
            return []
        return [Event("message_failed", {
            "messageId": message_id, "status": status,
            "error": error if truthy(error) else DEFAULT_FAILURE, "toAgent": to_agent},
            [to_agent])]

    await storage(request).write(emitting(store.set_status, failure), message_id, status,
                                 error_text)
    return json_response({"success": True, "status": status})


@routes.get("/api/messages/{agentId}/failed")
async def failed(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    if not request.query.get("limit"):
        limit = FAILED_LIST_LIMIT
    rows = await storage(request).read(store.failed, request.match_info["agentId"], limit,
                                       offset)
    return json_response(rows)


@routes.post("/api/messages/{id}/retry")
async def retry(request: web.Request) -> web.Response:
    message_id = request.match_info["id"]
    await storage(request).write(
        emitting(store.retry, lambda to_agent: [Event(
            "message_retry", {"messageId": message_id, "toAgent": to_agent}, [to_agent])]),
        message_id, db_time())
    return json_response({"success": True, "message": "Message queued for retry"})
