"""The MCP server: meshd's tools and resources on the `mcp` SDK's FastMCP, one `MeshSession`
per MCP session (its lifespan), each tool one or two calls to the HTTP API."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import McpError
from mcp.types import INVALID_PARAMS, ErrorData
from pydantic import Field

from meshd.mcp.backend import MeshApi
from meshd.mcp.credentials import presented_credential
from meshd.mcp.session import CATASTROPHES, INBOX, MeshSession

INLINE_LIMIT = 256 << 10  # bytes of a downloaded file returned inline; larger ones by reference
OPEN_STATUSES = ("active", "recovering")

INSTRUCTIONS = """\
Tools of an Agent Mesh (meshd). A session acts as exactly one agent: call `register` (or
`resume` with an agent id) first; every other tool then acts as that agent. Subscribe to
meshd://inbox and meshd://catastrophes to be told when a message arrives or an alert is raised.
"""

# Parameters several tools take, declared once (their descriptions are the tools' schemas).
AgentArg = Annotated[str | None, Field(
    description="The acting agent's id. Defaults to this session's agent; naming another "
                "agent is refused.")]
GroupId = Annotated[str, Field(description="Group id")]
MemoryKey = Annotated[str, Field(description="Key")]
MessageText = Annotated[str, Field(description="Message text")]
MessageType = Annotated[str | None, Field(
    description="Free-form kind of message (default \"direct\")")]


def _q(part: str) -> str:
    return quote(str(part), safe="")


def build_server(new_session: Callable[[], MeshSession],
                 security: TransportSecuritySettings | None = None,
                 max_body_size: int | None = None) -> FastMCP:
    """A FastMCP server whose sessions each start from `new_session()`; over HTTP a request
    body may be as large as the API's own largest (an upload of `max_file_size`)."""

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[MeshSession]:
        session = new_session()
        try:
            yield session
        finally:
            await session.close()

    limits = {"max_request_body_size": max_body_size} if max_body_size else {}
    mcp = FastMCP("meshd", instructions=INSTRUCTIONS, lifespan=lifespan,
                  transport_security=security or TransportSecuritySettings(
                      enable_dns_rebinding_protection=False), **limits)
    _add_tools(mcp)
    _add_resources(mcp)
    _add_subscriptions(mcp)
    return mcp


def session_of(ctx: Context) -> MeshSession:
    """The session's state, with the API client of its first HTTP request; every later
    request of an HTTP session must carry the same credential."""
    session: MeshSession = ctx.request_context.lifespan_context
    request = ctx.request_context.request
    if request is None:  # stdio
        return session
    credential = presented_credential(request.headers)
    if credential is None:
        raise ToolError("Invalid or missing API key")
    if session.opened_with is None:
        host, port = request.scope["server"]
        host = f"[{host}]" if ":" in host else host
        session.opened_with = credential
        session.api = MeshApi(f"http://{host}:{port}", credential)
    elif credential != session.opened_with:
        raise ToolError("this MCP session was opened with another credential")  # see http.py
    return session


def api_of(ctx: Context) -> tuple[MeshSession, MeshApi]:
    session = session_of(ctx)
    assert session.api is not None
    return session, session.api


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _add_tools(mcp: FastMCP) -> None:  # noqa: C901 - one short function per tool
    @mcp.tool()
    async def register(
        ctx: Context,
        name: Annotated[str, Field(description="The agent's name: its identity. Registering "
                                   "an existing name resumes that agent.")],
        capabilities: Annotated[list[str] | None, Field(
            description="What the agent can do, e.g. [\"translate\", \"ocr\"]")] = None,
        endpoint: Annotated[str | None, Field(description="URL where the agent listens, "
                                              "if any")] = None,
    ) -> dict:
        """Register this session's agent with the mesh (or resume it by name) and bind the
        session to it. Call this first."""
        session, api = api_of(ctx)
        answer = await api.call("POST", "/api/agents/register", json=_drop_none(
            name=name, capabilities=capabilities, endpoint=endpoint))
        session.bind(answer["agentId"], name)
        await session.adopt_token(answer.get("agentToken"))
        return answer

    @mcp.tool()
    async def resume(
        ctx: Context,
        agent_id: Annotated[str, Field(description="The id an earlier registration returned")],
    ) -> dict:
        """Bind this session to an already registered agent by its id."""
        session, api = api_of(ctx)
        agent = await api.call("GET", f"/api/agents/{_q(agent_id)}")
        session.bind(agent["id"], agent.get("name"))
        return agent

    @mcp.tool()
    async def list_agents(
        ctx: Context,
        capability: Annotated[str | None, Field(
            description="Only agents that declared this capability")] = None,
        online: Annotated[bool | None, Field(
            description="true: only agents seen within the heartbeat timeout; false: only "
                        "the others")] = None,
    ) -> list[dict]:
        """The mesh's agents with their capabilities, last contact and health status."""
        _, api = api_of(ctx)
        agents = await api.call("GET", "/api/agents")
        board = await api.call("GET", "/api/health/dashboard")
        status = {a["agentId"]: a["status"] for a in board.get("agentList", [])}
        found = []
        for agent in agents:
            caps = agent.get("capabilities")
            if capability is not None and not (isinstance(caps, list) and capability in caps):
                continue
            agent_status = status.get(agent["id"], "unknown")
            if online is not None and (agent_status != "offline") != online:
                continue
            found.append({**agent, "status": agent_status})
        return found

    @mcp.tool()
    async def send_message(
        ctx: Context,
        to: Annotated[str, Field(description="Recipient agent id")],
        content: MessageText,
        message_type: MessageType = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Send a direct message from this session's agent to another agent."""
        session, api = api_of(ctx)
        body = _drop_none(messageType=message_type)
        return await api.call("POST", "/api/messages", json={
            "from": session.act_as(agent_id), "to": to, "content": content, **body})

    @mcp.tool()
    async def read_inbox(
        ctx: Context,
        unread_only: Annotated[bool, Field(description="Only messages not marked read")] = True,
        since: Annotated[str | None, Field(
            description="Only messages created after this time (ISO-8601)")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many, newest "
                                    "first")] = 50,
        mark_read: Annotated[bool, Field(description="Mark the returned messages read")] = False,
        agent_id: AgentArg = None,
    ) -> list[dict]:
        """This agent's inbox, newest first."""
        session, api = api_of(ctx)
        me = session.act_as(agent_id)
        params = {"limit": str(limit)}
        if unread_only:
            params["unreadOnly"] = "true"
        if since:
            params["since"] = since
        messages = await api.call("GET", f"/api/messages/{_q(me)}", params=params)
        if mark_read:
            await _mark_read(api, [message["id"] for message in messages])
        return messages

    @mcp.tool()
    async def mark_read(
        ctx: Context,
        message_ids: Annotated[list[str], Field(min_length=1, description="Ids of messages "
                                                "in this agent's inbox")],
    ) -> dict:
        """Mark messages of this agent's inbox read."""
        session, api = api_of(ctx)
        session.act_as()
        await _mark_read(api, message_ids)
        return {"success": True, "marked": len(message_ids)}

    @mcp.tool()
    async def broadcast(
        ctx: Context,
        content: MessageText,
        agent_id: AgentArg = None,
    ) -> dict:
        """Send a message to every other agent of the mesh."""
        session, api = api_of(ctx)
        return await api.call("POST", "/api/broadcast",
                              json={"from": session.act_as(agent_id), "content": content})

    @mcp.tool()
    async def list_groups(ctx: Context, agent_id: AgentArg = None) -> list[dict]:
        """The groups this agent belongs to, with its role in each."""
        session, api = api_of(ctx)
        return await api.call("GET", f"/api/agents/{_q(session.act_as(agent_id))}/groups")

    @mcp.tool()
    async def group_message(
        ctx: Context,
        group_id: GroupId,
        content: MessageText,
        message_type: MessageType = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Send a message to every other member of a group."""
        session, api = api_of(ctx)
        return await api.call("POST", f"/api/groups/{_q(group_id)}/broadcast", json={
            "from": session.act_as(agent_id), "content": content,
            **_drop_none(messageType=message_type)})

    @mcp.tool()
    async def memory_get(
        ctx: Context,
        group_id: GroupId,
        key: Annotated[str | None, Field(description="One key; omit for every key")] = None,
    ) -> list[dict]:
        """A group's collective memory entries (value, version, last writer): the one key
        asked for, or every key."""
        _, api = api_of(ctx)
        if key is None:
            return await api.call("GET", f"/api/groups/{_q(group_id)}/memory")
        return [await api.call("GET", f"/api/groups/{_q(group_id)}/memory/{_q(key)}")]

    @mcp.tool()
    async def memory_set(
        ctx: Context,
        group_id: Annotated[str, Field(description="Group id (this agent must be a member)")],
        key: MemoryKey,
        value: Annotated[Any, Field(description="Any JSON value")],
        memory_type: Annotated[str | None, Field(
            description="Kind of entry (default \"shared\")")] = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Set a key of a group's collective memory; the answer carries its new version."""
        session, api = api_of(ctx)
        return await api.call("POST", f"/api/groups/{_q(group_id)}/memory", json={
            "agentId": session.act_as(agent_id), "key": key, "value": value,
            **_drop_none(memoryType=memory_type)})

    @mcp.tool()
    async def memory_history(
        ctx: Context,
        group_id: GroupId,
        key: MemoryKey,
    ) -> dict:
        """The versions of one key of a group's collective memory."""
        _, api = api_of(ctx)
        return await api.call("GET", f"/api/groups/{_q(group_id)}/memory/{_q(key)}/history")

    @mcp.tool()
    async def upload_file(
        ctx: Context,
        filename: Annotated[str, Field(description="Name the file is shared under")],
        text: Annotated[str | None, Field(description="The content as text (UTF-8)")] = None,
        content_base64: Annotated[str | None, Field(
            description="The content, base64-encoded")] = None,
        path: Annotated[str | None, Field(
            description="A local file to upload by reference (stdio transport only)")] = None,
        file_type: Annotated[str | None, Field(description="Media type, e.g. text/plain")] = None,
        description: Annotated[str | None, Field(description="What the file is")] = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Share a file with the mesh: give exactly one of text, content_base64 or path."""
        session, api = api_of(ctx)
        me = session.act_as(agent_id)
        data = _upload_data(session, text, content_base64, path)
        return await api.call("POST", "/api/files/upload", json={
            "agentId": me, "filename": filename, "fileData": data,
            **_drop_none(fileType=file_type, description=description)})

    @mcp.tool()
    async def list_files(
        ctx: Context,
        owner: Annotated[str | None, Field(description="Only files of this agent id")] = None,
    ) -> list[dict]:
        """Files shared on the mesh (without their content)."""
        _, api = api_of(ctx)
        return await api.call("GET", "/api/files", params=_drop_none(agentId=owner))

    @mcp.tool()
    async def download_file(
        ctx: Context,
        file_id: Annotated[str, Field(description="File id")],
        save_to: Annotated[str | None, Field(
            description="A local path to write the file to (stdio transport only)")] = None,
    ) -> dict:
        """A shared file: small ones inline (text when it is UTF-8, else base64), larger ones
        as a reference to download (or written to save_to)."""
        session, api = api_of(ctx)
        path = f"/api/files/{_q(file_id)}/download"
        if save_to is not None:
            target = _local_path(session, save_to)
            size = await _save(api, path, target)
            return {"fileId": file_id, "savedTo": str(target), "fileSize": size}
        return await _inline_or_reference(api, file_id, path)

    @mcp.tool()
    async def list_updates(
        ctx: Context,
        since: Annotated[str | None, Field(description="Only updates after this time "
                                           "(ISO-8601)")] = None,
        active_only: Annotated[bool, Field(description="Only updates not expired")] = False,
    ) -> list[dict]:
        """System updates announced to the mesh, newest first."""
        _, api = api_of(ctx)
        params = _drop_none(since=since)
        if active_only:
            params["activeOnly"] = "true"
        return await api.call("GET", "/api/updates", params=params)

    @mcp.tool()
    async def acknowledge_update(
        ctx: Context,
        update_id: Annotated[str, Field(description="Update id")],
        status: Annotated[str, Field(description="e.g. accepted, applied, rejected")] = "accepted",
        agent_version: Annotated[str | None, Field(description="This agent's version")] = None,
        notes: Annotated[str | None, Field(description="Free text")] = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Acknowledge a system update for this agent."""
        session, api = api_of(ctx)
        return await api.call("POST", f"/api/updates/{_q(update_id)}/acknowledge", json={
            "agentId": session.act_as(agent_id), "status": status,
            **_drop_none(agentVersion=agent_version, notes=notes)})

    @mcp.tool()
    async def report_catastrophe(
        ctx: Context,
        event_type: Annotated[str, Field(
            description="server_down, db_corruption, network_partition or breaking_update")],
        severity: Annotated[str, Field(description="critical, major or minor")],
        title: Annotated[str, Field(description="One line")],
        description: Annotated[str | None, Field(description="What happened")] = None,
        affected_agents: Annotated[list[str] | None, Field(
            description="Ids of the agents affected")] = None,
        recovery_protocol: Annotated[str | None, Field(
            description="Protocol to follow, if known")] = None,
    ) -> dict:
        """Report a catastrophe to the mesh; every agent is alerted."""
        _, api = api_of(ctx)
        return await api.call("POST", "/api/catastrophe", json={
            "eventType": event_type, "severity": severity, "title": title,
            **_drop_none(description=description, affectedAgents=affected_agents,
                         recoveryProtocol=recovery_protocol)})

    @mcp.tool()
    async def list_catastrophes(ctx: Context) -> list[dict]:
        """Open catastrophe events (active or recovering), each with its protocol runs."""
        _, api = api_of(ctx)
        return await open_catastrophes(api)

    @mcp.tool()
    async def post_health(
        ctx: Context,
        status: Annotated[str | None, Field(
            description="healthy, degraded or unhealthy (default healthy)")] = None,
        uptime_seconds: Annotated[float | None, Field(ge=0)] = None,
        cpu_usage: Annotated[float | None, Field(ge=0, description="percent")] = None,
        memory_usage: Annotated[float | None, Field(ge=0, description="percent")] = None,
        custom_metrics: Annotated[dict[str, Any] | None, Field(
            description="Any further figures")] = None,
        agent_id: AgentArg = None,
    ) -> dict:
        """Post this agent's health metrics (also counts as a sign of life)."""
        session, api = api_of(ctx)
        me = session.act_as(agent_id)
        return await api.call("POST", f"/api/agents/{_q(me)}/health", json=_drop_none(
            status=status, uptimeSeconds=uptime_seconds, cpuUsage=cpu_usage,
            memoryUsage=memory_usage, customMetrics=custom_metrics))


async def _mark_read(api: MeshApi, message_ids: list[str]) -> None:
    for message_id in message_ids:
        await api.call("POST", f"/api/messages/{_q(message_id)}/read")


def _upload_data(session: MeshSession, text: str | None, content_base64: str | None,
                 path: str | None) -> str:
    given = [v for v in (text, content_base64, path) if v is not None]
    if len(given) != 1:
        raise ToolError("give exactly one of text, content_base64 or path")
    if text is not None:
        return base64.b64encode(text.encode()).decode()
    if content_base64 is not None:
        return content_base64
    target = _local_path(session, path or "")
    try:
        return base64.b64encode(target.read_bytes()).decode()
    except OSError as exc:
        raise ToolError(f"cannot read {target}: {exc.strerror}") from None


def _local_path(session: MeshSession, path: str) -> Path:
    """Local files only where the server runs on the agent's own host (stdio); over HTTP a
    path would name the daemon's files."""
    if not session.local_files:
        raise ToolError("local paths work only over the stdio transport")
    return Path(path).expanduser()


async def _save(api: MeshApi, path: str, target: Path) -> int:
    data = await api.download(path)
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise ToolError(f"cannot write {target}: {exc.strerror}") from None
    return len(data)


async def _inline_or_reference(api: MeshApi, file_id: str, path: str) -> dict:
    got = await api.fetch(path, INLINE_LIMIT)
    answer: dict[str, Any] = {"fileId": file_id, "filename": got.filename,
                              "fileType": got.media_type, "fileSize": got.size}
    if got.data is None:
        return {**answer, "inline": False, "downloadPath": path,
                "note": f"larger than {INLINE_LIMIT} bytes: GET downloadPath on meshd with "
                        "the same credential, or call download_file with save_to over stdio"}
    answer["inline"] = True
    try:
        answer["text"] = got.data.decode("utf-8")
    except UnicodeDecodeError:
        answer["contentBase64"] = base64.b64encode(got.data).decode()
    return answer


async def open_catastrophes(api: MeshApi) -> list[dict]:
    events: list[dict] = []
    for status in OPEN_STATUSES:
        events += await api.call("GET", "/api/catastrophe", params={"status": status})
    for event in events:
        event["protocolRuns"] = await api.call(
            "GET", f"/api/catastrophe/{_q(event['id'])}/runs")
    return events


def _add_resources(mcp: FastMCP) -> None:
    @mcp.resource(INBOX, name="inbox", mime_type="application/json",
                  description="This session's agent's unread messages, newest first (at most "
                              "100). Subscribe to be told when a message arrives.")
    async def inbox() -> str:
        ctx = mcp.get_context()
        session, api = api_of(ctx)
        me = session.act_as()
        messages = await api.call("GET", f"/api/messages/{_q(me)}",
                                  params={"unreadOnly": "true", "limit": "100"})
        return orjson.dumps(messages).decode()

    @mcp.resource(CATASTROPHES, name="catastrophes", mime_type="application/json",
                  description="Open catastrophe events with their protocol runs. Subscribe to "
                              "be told when an alert is raised.")
    async def catastrophes() -> str:
        _, api = api_of(mcp.get_context())
        return orjson.dumps(await open_catastrophes(api)).decode()


def _add_subscriptions(mcp: FastMCP) -> None:
    """resources/subscribe and unsubscribe, which FastMCP leaves to the low-level server."""
    low = mcp._mcp_server  # FastMCP exposes no subscription hook of its own (mcp 1.x)

    @low.subscribe_resource()
    async def subscribe(uri: Any) -> None:
        ctx = mcp.get_context()
        try:
            await session_of(ctx).subscribe(str(uri), ctx.request_context.session)
        except (ValueError, ToolError) as exc:
            raise McpError(ErrorData(code=INVALID_PARAMS, message=str(exc))) from None

    @low.unsubscribe_resource()
    async def unsubscribe(uri: Any) -> None:
        session_of(mcp.get_context()).unsubscribe(str(uri))

    advertise = low.get_capabilities

    def capabilities(*args: Any, **kwargs: Any):
        caps = advertise(*args, **kwargs)
        if caps.resources is not None:
            caps.resources.subscribe = True
        return caps

    low.get_capabilities = capabilities  # type: ignore[method-assign]

