"""`GET /api/openapi.json`: an OpenAPI 3.1 description of every route of meshd.

The document is written by hand, as data, and never generated from the router: the test that
compares its operations with the router's routes (tests/api/test_openapi.py) then fails when a
route is added, removed or renamed without this description following.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd import __version__
from meshd.api import auth
from meshd.api.http import json_response
from meshd.api.keys import SETTINGS

routes = web.RouteTableDef()

Schema = dict[str, Any]

# -- schema shorthands ---------------------------------------------------------------------

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY: Schema = {}
NULL_STR: Schema = {"type": ["string", "null"]}
NULL_INT: Schema = {"type": ["integer", "null"]}
NULL_NUM: Schema = {"type": ["number", "null"]}
DB_TIME: Schema = {"type": "string", "description": "UTC `YYYY-MM-DD HH:MM:SS`",
                   "examples": ["2026-01-31 12:00:00"]}
NULL_DB_TIME: Schema = {**DB_TIME, "type": ["string", "null"]}
ISO_TIME: Schema = {"type": "string", "format": "date-time"}
STR_LIST: Schema = {"type": "array", "items": STR}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def obj(*required: str, **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def fields(*required: str, **properties: Schema) -> Schema:
    """A request body: a required text field must be non-empty (the routes check that each
    is present and truthy, so `""` is a 400)."""
    non_empty = {k: ({**v, "minLength": 1} if k in required and v == STR else v)
                 for k, v in properties.items()}
    return obj(*required, **non_empty)


def success(**properties: Schema) -> Schema:
    return obj("success", success=BOOL, **properties)


# -- parameters ----------------------------------------------------------------------------


def path(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": schema or {"type": "string", "minLength": 1}, "description": description}


def query(name: str, description: str, schema: Schema = STR) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": STR,
            "description": description}


# SQLite takes 64-bit integers; a larger limit or offset is a 400, never a 500.
ROW_COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
PAGING = (
    query("limit", "at most this many rows (default: all)", ROW_COUNT),
    query("offset", "rows to skip (default 0)", ROW_COUNT),
)
AGENT_VERSION = header("X-Agent-Version", "the sending agent's version, checked against a "
                       "breaking update's required version")
X_AGENT_ID = header("X-Agent-Id", "the agent the request acts for")

# -- responses -----------------------------------------------------------------------------

ERRORS = {
    "400": "Bad request: a missing or mistyped field, malformed or too deeply nested JSON, "
           "a header that is not UTF-8",
    "401": "Invalid or missing API key",
    "403": "Forbidden",
    "404": "Not found",
    "408": "The request body stopped arriving (body_timeout)",
    "409": "Conflict with the stored state",
    "413": "Body or file larger than the configured limit",
    "503": "Read-only mode or the store is unavailable (Retry-After)",
    "507": "The disk refused the write",
}


def error(code: str, description: str | None = None) -> dict[str, Any]:
    return {"description": description or ERRORS[code],
            "content": {"application/json": {"schema": ref("Error")}}}


def ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


UPGRADE_REQUIRED = {
    "description": "The agent is below a breaking update's required version",
    "content": {"application/problem+json": {"schema": ref("UpgradeProblem")}},
}

HTML = {"description": "An HTML page", "content": {"text/html": {"schema": STR}}}
FILE = {"description": "The file", "content": {"application/octet-stream": {"schema": STR}}}
REDIRECT = {"description": "No console session: redirect to /login"}
NEVER_200 = {"description": "Never sent: the answer is a redirect (303)"}
TEXT_METRICS = {"description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": STR}}}


def HTML_ERROR(description: str) -> dict[str, Any]:  # noqa: N802 - reads as a constant
    return {"description": description, "content": {"text/html": {"schema": STR}}}


# -- operations ----------------------------------------------------------------------------


def op(
    tag: str,
    summary: str,
    response: Schema | dict[str, Any],
    *errors: str,
    params: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
    body: Schema | None = None,
    body_required: bool = True,
    writes: bool = False,
    sends: bool = False,
    auth: str = "api",
    form: Schema | None = None,
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation. `response` is the 200 schema (or a whole response object when it has
    a `description`); `errors` the 4xx/5xx codes the route itself answers; `writes` adds
    the store's 503/507, `sends` the breaking-update 426, `auth` the security scheme."""
    responses: dict[str, Any] = {
        "200": response if "description" in response else ok(response)}
    # Any request can carry a header that is not UTF-8; any body can stall or be too large.
    codes = set(errors) | {"400"}
    if body is not None:
        codes.update(("408", "413"))
    if auth in ("api", "owner"):
        codes.add("401")
    if auth in ("owner", "admin"):
        codes.add("403")
    if writes:
        codes.update(("503", "507"))
    for code in sorted(codes):
        responses[code] = error(code)
    if sends:
        responses["426"] = UPGRADE_REQUIRED
    if extra:
        responses.update(extra)
    operation: dict[str, Any] = {"tags": [tag], "summary": summary,
                                 "responses": dict(sorted(responses.items()))}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "description": "JSON, whatever Content-Type is declared",
            "content": {"application/json": {"schema": body}},
        }
    if form is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": form}},
        }
    if auth == "none":
        operation["security"] = []
    elif auth == "console":
        operation["security"] = [{"consoleSession": []}]
    elif auth == "metrics":
        operation["security"] = [{}, {"apiKeyHeader": []}, {"bearer": []},
                                 {"consoleSession": []}]
    elif auth == "admin":
        operation["security"] = [{"adminKey": []}]
    elif auth == "owner":
        operation["security"] = [{"agentToken": []}, {"adminKey": []}]
    elif auth == "ws":
        operation["security"] = [{}, {"apiKeyQuery": []}, {"apiKeyHeader": []},
                                 {"agentToken": []}, {"consoleSession": []}]
    return operation


AGENT_ID = path("id", "agent id")
MESSAGE_ID = path("id", "message id")
GROUP_ID = path("groupId", "group id")
MEMORY_KEY = path("key", "memory key (a `/` inside it is sent as `%2F`)")
FILE_ID = path("id", "file id")
UPDATE_ID = path("id", "system update id")
EVENT_ID = path("id", "catastrophe event id")
RUN_ID = path("runId", "run id (a UUID; anything else is a 400)",
              {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"})

HEALTH_BODY = obj(
    status=enum("healthy", "degraded", "unhealthy", "offline"),
    uptimeSeconds=NULL_NUM, cpuUsage=NULL_NUM, memoryUsage=NULL_NUM,
    customMetrics={"type": ["object", "null"]},
)

PATHS: dict[str, dict[str, Any]] = {
    # -- agents ----------------------------------------------------------------------------
    "/api/agents/register": {"post": op(
        "agents", "Register an agent (the same name keeps its id)",
        success(agentId=STR, message=STR, existed=BOOL, agentToken=STR), "400", "403",
        writes=True, body=fields("name", name=STR, endpoint=STR, capabilities=array(ANY)),
        description="A name already registered gets its existing id back (`existed: true`); "
                    "absent capabilities keep the stored ones. WebSocket: `agent_joined`. "
                    "`agentToken` (prefix `mat_`) is shown once: to a new agent, to an agent "
                    "that never had one on its next registration (agent_auth optional), or "
                    "to the admin key (X-Admin-Key) for an agent without an active token. "
                    "It is never handed out again for a name without proof.")},
    "/api/agents/{id}/token": {
        "post": op("agents", "Rotate an agent's token (the old one stops working)",
                   success(agentId=STR, agentToken=STR), "403", "404", "409", writes=True,
                   params=(AGENT_ID,), auth="owner",
                   description="Needs the agent's own token or the admin key; 409 when "
                               "agent_auth is off."),
        "delete": op("agents", "Revoke an agent's token", success(agentId=STR, message=STR),
                     "403", "404", "409", writes=True, params=(AGENT_ID,), auth="owner",
                     description="Needs the agent's own token or the admin key. Afterwards "
                                 "only the admin key can give the agent a token again.")},
    "/api/agents": {"get": op("agents", "List agents, most recently seen first",
                              array(ref("Agent")), "400", params=PAGING)},
    "/api/agents/{id}": {"get": op("agents", "Get an agent", ref("Agent"), "404",
                                   params=(AGENT_ID,))},
    "/api/agents/{id}/heartbeat": {"post": op(
        "health", "Heartbeat: refresh last_seen, optionally with health metrics",
        success(), "400", "404", params=(AGENT_ID,), body=HEALTH_BODY, body_required=False,
        writes=True, description="Metrics left out keep their stored values. WebSocket: "
                                 "`agent_health_change` when the status changes.")},
    "/api/agents/{id}/health": {
        "post": op("health", "Report an agent's health", success(message=STR), "400", "404",
                   params=(AGENT_ID,), body=HEALTH_BODY, body_required=False, writes=True,
                   description="WebSocket: `agent_health_change` on every post."),
        "get": op("health", "Get an agent's health", ref("Health"), "404",
                  params=(AGENT_ID,)),
    },
    "/api/agents/{agentId}/groups": {"get": op(
        "groups", "Groups an agent belongs to, with its role",
        array({"allOf": [ref("Group"), obj(role=STR)]}), "400",
        params=(path("agentId", "agent id"), *PAGING))},
    # -- messages --------------------------------------------------------------------------
    "/api/messages": {"post": op(
        "messages", "Send a direct message",
        success(messageId=STR, message=ref("MessageEcho")), "400", "409", writes=True,
        sends=True, params=(header("Idempotency-Key", "the sender's idempotency key, when "
                                   "the body has no clientId"), AGENT_VERSION),
        body=fields("from", "to", "content", **{
            "from": STR, "to": STR, "content": ANY, "messageType": STR,
            "timeoutMs": {"type": "integer", "minimum": 1},
            "clientId": {"type": "string", "minLength": 1, "maxLength": 200}}),
        description="A repeated clientId from the same sender returns the stored message "
                    "instead of a second one. WebSocket: `new_message`.")},
    "/api/messages/{agentId}": {"get": op(
        "messages", "An agent's inbox, newest first", array(ref("Message")), "400",
        params=(path("agentId", "recipient agent id"),
                query("since", "only messages created after this time (ISO-8601 or DB "
                      "format)"),
                query("unreadOnly", "`true` for unread messages only"), *PAGING))},
    "/api/messages/{agentId}/failed": {"get": op(
        "messages", "An agent's failed and timed-out messages", array(ref("Message")), "400",
        params=(path("agentId", "recipient agent id"),
                query("limit", "at most this many rows (default 50)", ROW_COUNT),
                PAGING[1]))},
    "/api/messages/{id}/read": {"post": op(
        "messages", "Mark a message read", success(), "404", params=(MESSAGE_ID,),
        writes=True)},
    "/api/messages/{id}/status": {"patch": op(
        "messages", "Set a message's delivery status", success(status=STR), "400", "404",
        params=(MESSAGE_ID,), writes=True,
        body=fields("status", status=enum("pending", "delivered", "processing", "completed",
                                       "failed", "timeout"), error=STR),
        description="WebSocket: `message_failed` for failed and timeout.")},
    "/api/messages/{id}/retry": {"post": op(
        "messages", "Queue a failed or timed-out message again", success(message=STR),
        "400", "404", params=(MESSAGE_ID,), writes=True,
        description="WebSocket: `message_retry`.")},
    "/api/broadcast": {"post": op(
        "messages", "Send a message to every other agent",
        success(recipientCount=INT, messageIds=STR_LIST), "400", writes=True, sends=True,
        params=(AGENT_VERSION,), body=fields("from", "content", **{"from": STR, "content": ANY}),
        description="WebSocket: `broadcast`.")},
    # -- skills ----------------------------------------------------------------------------
    "/api/skills": {
        "post": op("skills", "Register a skill of an agent", success(skillId=STR),
                   "400", "404", writes=True,
                   body=fields("agentId", "name", agentId=STR, name=STR, description=STR,
                            endpoint=STR)),
        "get": op("skills", "Discover skills", array(ref("Skill")), "400", params=PAGING),
    },
    "/api/skills/{id}/invoke": {"post": op(
        "skills", "Invoke a skill (a `skill_invocation` message to its owner)",
        success(invocationId=STR), "400", "404", writes=True, sends=True,
        params=(path("id", "skill id"), AGENT_VERSION),
        body=fields("from", **{"from": STR, "payload": ANY}),
        description="WebSocket: `skill_invoked`.")},
    # -- groups ----------------------------------------------------------------------------
    "/api/groups": {
        "post": op("groups", "Create a group", success(groupId=STR, message=STR), "400",
                   writes=True,
                   body=fields("name", "createdBy", name=STR, createdBy=STR, description=STR,
                            metadata={"type": "object"}),
                   description="WebSocket: `group_created`."),
        "get": op("groups", "List groups, newest first",
                  array({"allOf": [ref("Group"), obj(member_count=INT)]}), "400",
                  params=PAGING),
    },
    "/api/groups/{groupId}": {"get": op(
        "groups", "Get a group with its members",
        {"allOf": [ref("Group"), obj(members=array(ref("Member")))]}, "404",
        params=(GROUP_ID,))},
    "/api/groups/{groupId}/members": {"post": op(
        "groups", "Add an agent to a group", success(message=STR), "400", "404", "409",
        params=(GROUP_ID,), writes=True, body=fields("agentId", agentId=STR, role=STR),
        description="WebSocket: `group_member_added`.")},
    "/api/groups/{groupId}/members/{agentId}": {"delete": op(
        "groups", "Remove an agent from a group", success(message=STR), "404",
        params=(GROUP_ID, path("agentId", "member agent id")), writes=True,
        description="WebSocket: `group_member_removed`.")},
    "/api/groups/{groupId}/agents": {"get": op(
        "groups", "A group's agents, with their role",
        array({"allOf": [ref("Agent"), obj(role=STR)]}), "400", params=(GROUP_ID, *PAGING))},
    "/api/groups/{groupId}/broadcast": {"post": op(
        "groups", "Send a message to every member of a group",
        success(recipientCount=INT, messageIds=STR_LIST), "400", "404", writes=True,
        sends=True, params=(GROUP_ID, AGENT_VERSION),
        body=fields("from", "content", **{"from": STR, "content": ANY, "messageType": STR}),
        description="WebSocket: `group_broadcast`.")},
    # -- collective memory -----------------------------------------------------------------
    "/api/groups/{groupId}/memory": {
        "post": op("memory", "Create or update a memory key (its version goes up)",
                   success(memoryId=STR, version=INT), "400", "403", "404",
                   params=(GROUP_ID,), writes=True,
                   body=fields("agentId", "key", "value", agentId=STR, key=STR, value=ANY,
                            memoryType=STR),
                   description="Only members write; a `readonly` key only by its writer. "
                               "WebSocket: `memory_updated`."),
        "get": op("memory", "A group's memory, most recently updated first",
                  array(ref("Memory")), "400",
                  params=(GROUP_ID, query("keys", "comma-separated keys (at most 500)"),
                          query("memoryType", "only this memory type"), *PAGING)),
    },
    "/api/groups/{groupId}/memory/{key}": {
        "get": op("memory", "Get a memory key", ref("Memory"), "404",
                  params=(GROUP_ID, MEMORY_KEY)),
        "delete": op("memory", "Delete a memory key", success(message=STR), "400", "403",
                     "404", writes=True, body=fields(agentId=STR), body_required=False,
                     params=(GROUP_ID, MEMORY_KEY,
                             query("agentId", "the deleting agent, when the body has none"),
                             X_AGENT_ID),
                     description="The deleting agent is named by the body, the query or "
                                 "X-Agent-Id. WebSocket: `memory_deleted`."),
    },
    "/api/groups/{groupId}/memory/{key}/history": {"get": op(
        "memory", "A memory key's versions, oldest first", ref("MemoryHistory"), "404",
        params=(GROUP_ID, MEMORY_KEY))},
    # -- files -----------------------------------------------------------------------------
    "/api/files/upload": {"post": op(
        "files", "Upload a file as base64",
        success(fileId=STR, url=STR, filename=STR, fileSize=INT, sha256=STR, message=STR),
        "400", "404", "413", writes=True, sends=True, params=(AGENT_VERSION, X_AGENT_ID),
        body=fields("agentId", "filename", "fileData", agentId=STR, filename=STR,
                 fileData={"type": "string", "contentEncoding": "base64"}, fileType=STR,
                 description=STR),
        description="The size limit applies to the decoded bytes. WebSocket: "
                    "`file_available`.")},
    "/api/files": {"get": op(
        "files", "List files (never their contents)", array(ref("FileListing")), "400",
        params=(query("agentId", "only this agent's files"), *PAGING))},
    "/api/files/{id}": {
        "get": op("files", "Get a file: its row with the base64 content, or the raw bytes",
                  {"description": "The file's row (JSON), or its bytes with `raw=1`",
                   "content": {"application/json": {"schema": ref("File")},
                               "application/octet-stream": {"schema": {
                                   "type": "string", "format": "binary"}}}},
                  "404", params=(FILE_ID, query("raw", "`1` or `true`: the raw bytes with "
                                                "Content-Type and Content-Disposition",
                                                enum("1", "true")),
                                 header("If-None-Match", "the ETag (SHA-256) of a raw copy")),
                  extra={"304": {"description": "Not modified (raw download)"}}),
        "delete": op("files", "Delete a file (its uploader only)", success(message=STR),
                     "400", "403", "404", writes=True, body=fields(agentId=STR),
                     body_required=False,
                     params=(FILE_ID, query("agentId", "the deleting agent, when the body "
                                                       "has none"), X_AGENT_ID)),
    },
    "/api/files/{id}/download": {"get": op(
        "files", "Download a file's raw bytes",
        {"description": "The file's bytes",
         "content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
        "404", params=(FILE_ID, header("If-None-Match", "the ETag (SHA-256)")),
        extra={"304": {"description": "Not modified"}})},
    # -- system updates --------------------------------------------------------------------
    "/api/updates": {
        "post": op("updates", "Announce a system update",
                   success(updateId=STR, broadcast=BOOL, message=STR), "400", writes=True,
                   body=fields("version", "updateType", "title", version=STR, updateType=STR,
                            title=STR, description=STR, requiredVersion=STR,
                            breakingChange=BOOL, announcement=STR, createdBy=STR,
                            expiresAt={"type": ["string", "null"]}),
                   description="A breaking update with a required version is enforced on "
                               "sending routes after its grace period. WebSocket: "
                               "`system_update`."),
        "get": op("updates", "List system updates, newest first", array(ref("Update")),
                  "400", params=(query("since", "only updates created after this time"),
                                 query("activeOnly", "`true` leaves out expired updates"),
                                 *PAGING)),
    },
    "/api/updates/{id}": {"get": op("updates", "Get a system update", ref("Update"), "404",
                                    params=(UPDATE_ID,))},
    "/api/updates/{id}/acknowledge": {"post": op(
        "updates", "Acknowledge an update (one row per agent; again updates it)",
        success(message=STR, acknowledgmentId=STR), "400", "404", params=(UPDATE_ID,),
        writes=True,
        body=fields("agentId", "status", agentId=STR,
                 status=enum("pending", "accepted", "rejected", "completed"),
                 agentVersion=STR, notes=STR))},
    "/api/updates/{id}/acknowledgments": {"get": op(
        "updates", "An update's acknowledgments", array(ref("Acknowledgment")), "400",
        params=(UPDATE_ID, *PAGING))},
    "/api/updates/{id}/adoption": {"get": op(
        "updates", "Adoption of an update among active agents", ref("Adoption"), "404",
        params=(UPDATE_ID,))},
    # -- catastrophe events ----------------------------------------------------------------
    "/api/catastrophe": {
        "post": op("catastrophe", "Report a catastrophe event",
                   success(eventId=STR, broadcast=BOOL, message=STR), "400", writes=True,
                   body=fields("eventType", "severity", "title",
                            eventType=enum("server_down", "db_corruption",
                                           "network_partition", "api_crash",
                                           "breaking_update"),
                            severity=enum("critical", "major", "minor"), title=STR,
                            description=STR, recoveryProtocol=STR,
                            affectedAgents=STR_LIST),
                   description="WebSocket: `catastrophe_alert`."),
        "get": op("catastrophe", "List catastrophe events, newest first",
                  array(ref("CatastropheEvent")), "400",
                  params=(query("status", "active, recovering or resolved"),
                          query("severity", "critical, major or minor"), *PAGING)),
    },
    "/api/catastrophe/protocols": {"get": op(
        "catastrophe", "The recovery protocols",
        {"type": "object", "additionalProperties": ref("Protocol")})},
    "/api/catastrophe/{id}": {"get": op(
        "catastrophe", "Get a catastrophe event", ref("CatastropheEvent"), "404",
        params=(EVENT_ID,))},
    "/api/catastrophe/{id}/runs": {"get": op(
        "catastrophe", "The protocol runs working on a catastrophe event, oldest first",
        array(ref("ProtocolRun")), "404", params=(EVENT_ID,))},
    "/api/catastrophe/{id}/resolve": {"post": op(
        "catastrophe", "Resolve a catastrophe event", success(message=STR), "404", "409",
        params=(EVENT_ID,), writes=True, body=fields(resolutionNotes=STR), body_required=False)},
    # -- health ----------------------------------------------------------------------------
    "/api/health/dashboard": {"get": op(
        "health", "Health of every agent, counts by status, open catastrophes",
        ref("Dashboard"), "400", params=PAGING)},
    "/health": {"get": op(
        "system", "Liveness (no key needed)",
        obj("status", "service", "timestamp", "mode", status=enum("ok"), service=STR,
            timestamp=ISO_TIME, mode=enum("read-write", "read-only")), auth="none")},
    "/readyz": {"get": op(
        "system", "Readiness: whether writes are taken (no key needed)",
        obj("ready", "mode", ready=BOOL, mode=STR), auth="none",
        extra={"503": ok(obj(ready=BOOL, mode=STR, reason=STR), "Read-only")})},
    # -- operator API ----------------------------------------------------------------------
    "/api/admin/protocols": {"get": op(
        "admin", "List recovery protocols",
        obj(protocols={"type": "object", "additionalProperties": ref("Protocol")}),
        auth="admin")},
    "/api/admin/protocols/{name}/run": {"post": op(
        "admin", "Run (or dry-run) a recovery protocol", {"type": "object"},
        "400", "404", "409", "503", auth="admin", params=(path("name", "protocol name"),),
        body=fields(dryRun=BOOL, reason=STR, context={"type": "object"}), body_required=False)},
    "/api/admin/protocols/runs": {"get": op(
        "admin", "List protocol runs", {"type": "object"}, "503", auth="admin")},
    "/api/admin/protocols/runs/{runId}": {"get": op(
        "admin", "Get a protocol run with its steps", {"type": "object"}, "404", "503",
        auth="admin", params=(RUN_ID,))},
    "/api/admin/protocols/runs/{runId}/abort": {"post": op(
        "admin", "Abort a protocol run", {"type": "object"}, "404", "409", "503",
        auth="admin", params=(RUN_ID,), body=fields(reason=STR),
        body_required=False)},
    # -- WebSocket and this document -------------------------------------------------------
    "/ws": {"get": op(
        "system", "WebSocket of mesh events",
        {"description": "Never sent: the connection is upgraded (101)"}, "400", auth="ws",
        params=(query("apiKey", "the API key or an agent token (ws_auth public: without "
                                "one only mesh-wide events; required: one is needed)"),
                query("agentId", "the agent this socket belongs to"),
                query("onlyMine", "`true`: only events addressed to agentId")),
        extra={"101": {"description": "Switching protocols; frames are JSON events "
                                      "(`connected` first)"},
               "401": error("401", "Invalid or missing API key (ws_auth required), or an "
                                   "unknown or revoked agent token"),
               "403": error("403", "agentId names another agent than the token's"),
               "429": error("429", "Too many WebSocket connections from this address "
                                   "(ws_max_per_address)")},
        description="Client frames: `register_agent` {agentId, onlyMine, version} and "
                    "`heartbeat`. A socket opened with an agent token is bound to that agent "
                    "and receives its own events plus the mesh-wide ones; frames it may not "
                    "send are answered with `{\"type\": \"error\", \"error\": ...}`.")},
    "/api/openapi.json": {"get": op(
        "system", "This OpenAPI document", {"type": "object"})},
    # -- observability ---------------------------------------------------------------------
    "/metrics": {"get": op(
        "observability", "Prometheus metrics: the worker's, then the supervisor's",
        TEXT_METRICS, auth="metrics",
        extra={"401": error("401", "Invalid or missing API key (metrics_auth on)")})},
    # -- web console -----------------------------------------------------------------------
    "/": {"get": op(
        "console", "The web console (redirects to /login without a session)", HTML,
        auth="console", extra={"303": REDIRECT})},
    "/login": {
        "get": op("console", "The login form", HTML, auth="none", extra={"303": REDIRECT}),
        "post": op("console", "Open a console session with the API key or the admin key",
                   NEVER_200, auth="none",
                   body=None, form=obj("key", key=STR),
                   extra={"303": {"description": "Logged in: session cookie set, to /"},
                          "401": HTML_ERROR("Invalid key"),
                          "429": HTML_ERROR("Too many failed logins from this address"),
                          "403": HTML_ERROR("Not from meshd's own page (Origin)")})},
    "/logout": {"post": op(
        "console", "Close the console session", NEVER_200, "403", auth="console",
        form=obj(csrf=STR), extra={"303": {"description": "Logged out, to /login"}})},
    "/console/panels": {"get": op(
        "console", "Every console panel rendered as HTML, by name",
        {"type": "object", "additionalProperties": STR}, auth="console",
        extra={"401": error("401", "No console session")})},
    "/console/actions/{action}": {"post": op(
        "console", "An operator action (admin session, same origin, X-CSRF-Token)",
        obj("action", "result", action=STR, result=ANY), "400", "403", "404", "503",
        auth="console", params=(path("action", "backup, drill, abort or mode"),
                                header("X-CSRF-Token", "the session's CSRF token")),
        body=obj(agents=STR_LIST, runId=STR, mode=enum("read-only", "read-write")),
        body_required=False, extra={"401": error("401", "No console session")})},
    "/console/static/{name}": {"get": op(
        "console", "A console stylesheet or script", FILE, "404", auth="none",
        params=(path("name", "file name"),))},
    "/docs": {"get": op(
        "console", "Interactive API documentation (Swagger UI)", HTML, auth="console",
        extra={"303": REDIRECT})},
    "/docs/openapi.json": {"get": op(
        "console", "This OpenAPI document, for a console session", {"type": "object"},
        auth="console", extra={"401": error("401", "No console session")})},
    "/docs/static/{name}": {"get": op(
        "console", "A Swagger UI file (from the swagger-ui-bundle package)", FILE, "404",
        auth="none", params=(path("name", "file name"),))},
}

AGENT_FORBIDDEN = ("Another agent's token acts here, or the shared key with "
                   "agent_auth=required (docs/security.md)")


def _forbidden_for_agents(paths: dict[str, dict[str, Any]]) -> None:
    """Every route that acts as an agent (api/auth.py RULES) answers 403 to another agent's
    token: documented from the same table the middleware applies."""
    for path_, item in paths.items():
        for method, operation in item.items():
            rule = auth.rule_for(method.upper(), path_)
            if rule is not None and (rule.scope is auth.Scope.AGENT or rule.locate is not None):
                operation["responses"].setdefault("403", error("403", AGENT_FORBIDDEN))
                operation["responses"] = dict(sorted(operation["responses"].items()))


_forbidden_for_agents(PATHS)


# An array by convention, but any JSON value registered is kept and served back, as the Node
# server kept it (null when never registered).
CAPABILITIES: Schema = {"description": "as registered: an array by convention, any JSON value "
                                       "is kept"}

SCHEMAS: dict[str, Schema] = {
    "Error": obj("error", error={"type": "string", "minLength": 1}),
    "UpgradeProblem": obj("type", "title", "status", "error", type=STR, title=STR,
                          status=INT, detail=STR, instance=STR, error=STR, updateId=STR,
                          requiredVersion=STR, agentVersion=NULL_STR,
                          upgradeInstructions=NULL_STR),
    "Agent": obj("id", "name", id=STR, name=STR, endpoint=NULL_STR,
                 capabilities=CAPABILITIES, last_seen=DB_TIME, created_at=DB_TIME),
    "Message": obj("id", "from_agent", "to_agent", "content", id=STR, from_agent=STR,
                   to_agent=STR, content=STR, message_type=STR, read=INT, status=STR,
                   timeout_ms=NULL_INT, created_at=DB_TIME, client_id=NULL_STR),
    "MessageEcho": obj("id", "from", "to", "content", "messageType", "createdAt", **{
        "id": STR, "from": STR, "to": STR, "content": ANY, "messageType": STR,
        "createdAt": ISO_TIME, "clientId": STR}),
    "Skill": obj("id", "agent_id", "name", id=STR, agent_id=STR, name=STR, description=STR,
                 endpoint=STR, created_at=DB_TIME, agent_name=STR),
    "Group": obj("id", "name", "created_by", id=STR, name=STR, description=NULL_STR,
                 metadata=ANY, created_by=STR, created_at=DB_TIME),
    "Member": obj("group_id", "agent_id", group_id=STR, agent_id=STR, role=STR,
                  joined_at=DB_TIME, name=STR, endpoint=NULL_STR,
                  capabilities=CAPABILITIES, last_seen=DB_TIME),
    "Memory": obj("id", "group_id", "key", "value", "version", id=STR, group_id=STR,
                  agent_id=STR, key=STR, value=ANY, memory_type=STR, version=INT,
                  created_at=DB_TIME, updated_at=DB_TIME),
    "MemoryHistory": obj("key", "currentVersion", "versions", key=STR, currentVersion=INT,
                         lastUpdated=DB_TIME, lastUpdatedBy=STR,
                         versions=array(obj(version=INT, value=ANY, memoryType=STR,
                                            agentId=STR,
                                            change=enum("created", "updated", "deleted"),
                                            changedAt=DB_TIME))),
    "FileListing": obj("id", "agentId", "filename", id=STR, agentId=STR, filename=STR,
                       fileType=NULL_STR, fileSize=INT, description=NULL_STR,
                       createdAt=DB_TIME, sha256=NULL_STR),
    "File": obj("id", "agent_id", "filename", "file_data", "fileData", id=STR, agent_id=STR,
                filename=STR, file_type=NULL_STR, file_size=INT, file_data=STR,
                description=NULL_STR, created_at=DB_TIME, sha256=NULL_STR, fileData=STR),
    "Update": obj("id", "version", "update_type", "title", id=STR, version=STR,
                  update_type=STR, title=STR, description=NULL_STR,
                  required_version=NULL_STR, breaking_change=INT, announcement=NULL_STR,
                  created_by=STR, created_at=DB_TIME, expires_at=NULL_DB_TIME),
    "Acknowledgment": obj("id", "update_id", "agent_id", "status", id=STR, update_id=STR,
                          agent_id=STR, acknowledged_at=DB_TIME, agent_version=NULL_STR,
                          status=STR, notes=NULL_STR, agent_name=NULL_STR,
                          agent_endpoint=NULL_STR),
    "Adoption": obj("updateId", "activeAgents", "counts", "adoptionRate", updateId=STR,
                    version=STR, requiredVersion=NULL_STR, breakingChange=BOOL,
                    activeAgents=INT,
                    counts=obj(pending=INT, accepted=INT, rejected=INT, completed=INT),
                    acknowledged=INT, adopted=INT, adoptionRate=NUM),
    "CatastropheEvent": obj("id", "event_type", "severity", "title", "status", id=STR,
                            event_type=STR, severity=STR, title=STR, description=NULL_STR,
                            affected_agents=NULL_STR, recovery_protocol=NULL_STR,
                            status=enum("active", "recovering", "resolved"),
                            occurred_at=DB_TIME, resolved_at=NULL_DB_TIME,
                            resolution_notes=NULL_STR, affectedAgents=ANY),
    "ProtocolRun": obj("id", "protocol", "state", "outcome", id=STR, protocol=STR, state=STR,
                       outcome=STR, reason=NULL_STR, started_at=STR, updated_at=STR),
    "Protocol": obj(trigger=STR, steps=STR_LIST, states=STR_LIST, eventType=NULL_STR,
                    runbook=STR),
    "Health": obj("agentId", "status", agentId=STR, status=STR, lastHeartbeat=NULL_DB_TIME,
                  uptimeSeconds=NULL_NUM, cpuUsage=NULL_NUM, memoryUsage=NULL_NUM,
                  customMetrics=ANY, lastUpdated=DB_TIME),
    "Dashboard": obj(
        "totalAgents", "agentList", totalAgents=INT, healthy=INT, degraded=INT,
        unhealthy=INT, offline=INT, unknown=INT, criticalEvents=INT,
        lastCatastrophe={"oneOf": [ref("CatastropheEvent"), {"type": "null"}]},
        agentList=array(obj(agentId=STR, name=STR, endpoint=NULL_STR, status=STR,
                            uptimeSeconds=NULL_NUM, cpuUsage=NULL_NUM,
                            memoryUsage=NULL_NUM, lastSeen=DB_TIME,
                            lastUpdated=NULL_DB_TIME))),
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "meshd Agent Mesh API",
        "version": __version__,
        "description": "Wire-compatible with the Node.js Agent Mesh server. Every /api route "
                       "takes the API key (X-API-Key, `?apiKey=` or `Authorization: Bearer`), "
                       "except /api/admin/*, which takes X-Admin-Key. An agent token (`mat_...`) "
                       "in the same places acts only as its agent. Errors are JSON "
                       "`{\"error\": ...}`.",
    },
    "tags": [{"name": t} for t in ("agents", "messages", "skills", "groups", "memory",
                                   "files", "updates", "catastrophe", "health", "system",
                                   "admin", "observability", "console")],
    "security": [{"apiKeyHeader": []}, {"apiKeyQuery": []}, {"bearer": []},
                 {"agentToken": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "apiKey"},
            "bearer": {"type": "http", "scheme": "bearer"},
            "agentToken": {"type": "http", "scheme": "bearer",
                           "description": "an agent token (`mat_...`): the request acts "
                                          "only as that agent; it wins over a shared key "
                                          "sent beside it"},
            "adminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key",
                         "description": "the admin_key setting; /api/admin/* only"},
            "consoleSession": {"type": "apiKey", "in": "cookie", "name": "meshd_session",
                               "description": "the web console's session (POST /login)"},
        },
        "schemas": SCHEMAS,
    },
}


# Routed only with `mcp = true`; the MCP protocol itself is described by its own spec.
MCP_PATHS: dict[str, Any] = {"/mcp": {
    method: op("mcp", summary, {"description": "JSON-RPC answer or an event stream "
                                               "(text/event-stream)"}, "400", "404",
               description="MCP streamable HTTP transport (docs: README, MCP section).")
    for method, summary in (("post", "MCP JSON-RPC messages"),
                            ("get", "MCP server-to-client event stream"),
                            ("delete", "End an MCP session"))}}


def document_for(settings_mcp: bool) -> dict[str, Any]:
    """The document of an app, with /mcp when it is mounted."""
    if not settings_mcp:
        return DOCUMENT
    return {**DOCUMENT, "tags": [*DOCUMENT["tags"], {"name": "mcp"}],
            "paths": {**DOCUMENT["paths"], **MCP_PATHS}}


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(document_for(request.app[SETTINGS].mcp))
