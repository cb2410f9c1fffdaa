"""Skill routes: register a skill of an agent, discover skills, invoke one (a message to the
skill's owner)."""

from __future__ import annotations

from aiohttp import web

from meshd.api.http import json_response, paging, read_body, text, truthy
from meshd.api.keys import AGENT_ID, storage
from meshd.clock import db_time
from meshd.errors import Invalid
from meshd.store import skills as store
from meshd.store.events import Event, emitting

routes = web.RouteTableDef()


def text_or_empty(body: dict, key: str) -> str:
    """An optional text field stored as '' when JS-falsy, as the Node server did."""
    value = body.get(key)
    return text(value, key) if truthy(value) else ""


@routes.post("/api/skills")
async def register(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not (truthy(body.get("agentId")) and truthy(body.get("name"))):
        raise Invalid("agentId and name are required")
    agent_id = text(body["agentId"], "agentId")
    request[AGENT_ID] = agent_id
    skill_id = await storage(request).write(
        store.register, agent_id, text(body["name"], "name"),
        text_or_empty(body, "description"), text_or_empty(body, "endpoint"), db_time())
    return json_response({"success": True, "skillId": skill_id})


@routes.get("/api/skills")
async def list_skills(request: web.Request) -> web.Response:
    limit, offset = paging(request)
    return json_response(await storage(request).read(store.list_all, limit, offset))


@routes.post("/api/skills/{id}/invoke")
async def invoke(request: web.Request) -> web.Response:
    body = await read_body(request)
    sender = body.get("from")
    # A missing sender is checked after the skill lookup (Node's order), inside the write.
    from_agent = text(sender, "from") if truthy(sender) else None
    if from_agent is not None:
        request[AGENT_ID] = from_agent
    payload_field = {"payload": body["payload"]} if "payload" in body else {}

    def invoked(result: tuple[str, dict]) -> list[Event]:
        _message_id, skill = result
        return [Event("skill_invoked", {
            "skillId": skill["id"], "skillName": skill["name"], "from": sender,
            "to": skill["agent_id"]}, [skill["agent_id"], from_agent])]

    message_id, _skill = await storage(request).write(
        emitting(store.invoke, invoked), request.match_info["id"], from_agent, payload_field,
        db_time())
    return json_response({"success": True, "invocationId": message_id})
