"""Agent group routes: create, list, get, membership, an agent's groups, group broadcast."""

from __future__ import annotations

from aiohttp import web

from meshd import log as logging
from meshd.api.http import (
    dumps,
    json_response,
    optional_text,
    paging,
    parse_json_column,
    present,
    read_body,
    stored_content,
    text,
    truthy,
)
from meshd.api.keys import AGENT_ID, storage
from meshd.clock import db_time
from meshd.errors import Invalid, NotFound
from meshd.store import groups as store
from meshd.store.events import Event, emitting

routes = web.RouteTableDef()
log = logging.get("meshd.groups")


def public_group(row: dict) -> dict:
    return {**row, "metadata": parse_json_column(row["metadata"])}


def public_member(row: dict) -> dict:
    return {**row, "capabilities": parse_json_column(row["capabilities"])}


@routes.post("/api/groups")
async def create_group(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not truthy(body.get("name")) or not truthy(body.get("createdBy")):
        raise Invalid("name and createdBy are required")
    name = text(body["name"], "name")
    created_by = text(body["createdBy"], "createdBy")
    description = optional_text(body, "description")
    metadata = body.get("metadata")
    metadata_json = dumps(metadata if truthy(metadata) else {}).decode()
    group_id = await storage(request).write(
        emitting(store.create, lambda group_id: [Event("group_created", {"group": {
            "id": group_id, **present(body, "name", "description", "createdBy", "metadata")}})]),
        name, description, metadata_json, created_by, db_time())
    request[AGENT_ID] = created_by
    log.info("group.created", group_id=group_id, created_by=created_by)
    return json_response({"success": True, "groupId": group_id,
                          "message": "Agent group created successfully"})


@routes.get("/api/groups")
async def list_groups(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    rows = await storage(request).read(store.list_all, limit, offset)
    return json_response([public_group(r) for r in rows])


@routes.get("/api/groups/{groupId}")
async def get_group(request: web.Request) -> web.Response:
    found = await storage(request).read(store.detail, request.match_info["groupId"])
    if found is None:
        raise NotFound("Group not found")
    row, members = found
    return json_response({**public_group(row), "members": [public_member(m) for m in members]})


@routes.post("/api/groups/{groupId}/members")
async def add_member(request: web.Request) -> web.Response:
    group_id = request.match_info["groupId"]
    body = await read_body(request)
    if not truthy(body.get("agentId")):
        raise Invalid("agentId is required")
    agent_id = text(body["agentId"], "agentId")
    role = optional_text(body, "role")
    if role is None:
        role = "member"
    await storage(request).write(
        emitting(store.add_member, lambda audience: [Event("group_member_added", {
            "groupId": group_id, "agentId": body["agentId"], "role": role}, audience)]),
        group_id, agent_id, role, db_time())
    request[AGENT_ID] = agent_id
    return json_response({"success": True, "message": "Agent added to group successfully"})


@routes.delete("/api/groups/{groupId}/members/{agentId}")
async def remove_member(request: web.Request) -> web.Response:
    group_id = request.match_info["groupId"]
    agent_id = request.match_info["agentId"]
    await storage(request).write(
        emitting(store.remove_member, lambda audience: [Event("group_member_removed", {
            "groupId": group_id, "agentId": agent_id}, audience)]),
        group_id, agent_id)
    return json_response({"success": True, "message": "Agent removed from group successfully"})


@routes.get("/api/agents/{agentId}/groups")
async def groups_of_agent(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    rows = await storage(request).read(
        store.groups_of_agent, request.match_info["agentId"], limit, offset)
    return json_response([public_group(r) for r in rows])


@routes.get("/api/groups/{groupId}/agents")
async def agents_of_group(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    rows = await storage(request).read(
        store.agents_of_group, request.match_info["groupId"], limit, offset)
    return json_response([public_member(r) for r in rows])


@routes.post("/api/groups/{groupId}/broadcast")
async def group_broadcast(request: web.Request) -> web.Response:
    group_id = request.match_info["groupId"]
    body = await read_body(request)
    if not truthy(body.get("from")) or not truthy(body.get("content")):
        raise Invalid("from and content are required")
    sender = text(body["from"], "from")
    content = stored_content(body["content"])
    message_type = optional_text(body, "messageType", "direct")

    def sent(result: tuple[list[str], list[str]]) -> list[Event]:
        message_ids, audience = result
        return [Event("group_broadcast", {
            "groupId": group_id, "from": body["from"], "content": body["content"],
            "recipientCount": len(message_ids)}, audience)]

    message_ids, _audience = await storage(request).write(
        emitting(store.broadcast, sent), group_id, sender, content, message_type, db_time())
    request[AGENT_ID] = sender
    return json_response({"success": True, "recipientCount": len(message_ids),
                          "messageIds": message_ids})
