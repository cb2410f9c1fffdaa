"""meshd's MCP server driven by the `mcp` SDK's own client, against a real `meshd run --mcp`:
over stdio (`python -m meshd mcp`, a client of the daemon) and over streamable HTTP at /mcp.

Two agents exchange a message and a file through tools only; a catastrophe posted through the
HTTP API reaches a subscribed session as a notification; a tool naming another agent is
refused; bad arguments give MCP errors with the API's message."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import McpError

from tests.process.harness import API_KEY, MeshdProcess, api, clean_env, short_tmp_dir

pytestmark = pytest.mark.process

TRANSPORTS = ("stdio", "http")
WAIT = 15.0  # seconds a notification may take before the test fails


@pytest.fixture(scope="module")
def daemon() -> Iterator[MeshdProcess]:
    proc = MeshdProcess(root=short_tmp_dir())
    try:
        # A small file limit keeps the oversized-body test small (the /mcp body limit follows).
        proc.start(["--mcp", "true", "--max-file-size", "1MiB"])
        proc.wait_healthy(30)
        yield proc
    finally:
        proc.kill_tree()
        shutil.rmtree(proc.root, ignore_errors=True)


class Mcp:
    """One MCP client session, and the resource-updated notifications it received."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.updates: list[str] = []
        self.arrived = asyncio.Event()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(
                message.root, types.ResourceUpdatedNotification):
            self.updates.append(str(message.root.params.uri))
            self.arrived.set()

    async def call(self, tool: str, **arguments: Any) -> Any:
        """The tool's JSON answer; fails the test on an MCP error."""
        result = await self.session.call_tool(tool, arguments)
        assert not result.isError, f"{tool}: {error_text(result)}"
        if result.structuredContent is not None and set(result.structuredContent) == {"result"}:
            return result.structuredContent["result"]
        if result.structuredContent is not None:
            return result.structuredContent
        return json.loads(result.content[0].text)

    async def refused(self, tool: str, **arguments: Any) -> str:
        """The text of the MCP error a tool call must give."""
        result = await self.session.call_tool(tool, arguments)
        assert result.isError, f"{tool} should have failed, answered {result.content}"
        return error_text(result)

    async def wait_update(self, uri: str) -> None:
        async def seen() -> None:
            while uri not in self.updates:
                self.arrived.clear()
                await self.arrived.wait()
        try:
            await asyncio.wait_for(seen(), WAIT)
        except TimeoutError:
            raise AssertionError(f"no notification for {uri} within {WAIT}s; "
                                 f"got {self.updates}") from None


def error_text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def mcp_session(daemon: MeshdProcess, transport: str,
                      credential: str = API_KEY) -> AsyncIterator[Mcp]:
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            params = StdioServerParameters(
                command=sys.executable, args=["-m", "meshd", "mcp"],
                env=clean_env({"MESHD_URL": daemon.url, "MESHD_API_KEY": credential}))
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            http = await stack.enter_async_context(
                create_mcp_http_client(headers={"X-API-Key": credential}))
            read, write, _ = await stack.enter_async_context(
                streamable_http_client(daemon.url + "/mcp", http_client=http))
        holder: list[Mcp] = []

        async def handler(message: Any) -> None:
            await holder[0].on_message(message)

        session = await stack.enter_async_context(
            ClientSession(read, write, message_handler=handler))
        holder.append(Mcp(session))
        await session.initialize()
        yield holder[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_two_agents_exchange_a_message_and_a_file_through_tools(daemon, transport):
    async with mcp_session(daemon, transport) as alice, mcp_session(daemon, transport) as bob:
        tools = {t.name for t in (await alice.session.list_tools()).tools}
        assert {"register", "send_message", "read_inbox", "upload_file",
                "download_file"} <= tools
        a = (await alice.call("register", name=unique("alice"), capabilities=["write"]))
        b = (await bob.call("register", name=unique("bob"), capabilities=["read"]))
        a_id, b_id = a["agentId"], b["agentId"]

        sent = await alice.call("send_message", to=b_id, content="hello bob")
        assert sent["success"] is True
        inbox = await bob.call("read_inbox", mark_read=True)
        assert [(m["from_agent"], m["content"]) for m in inbox] == [(a_id, "hello bob")]
        assert await bob.call("read_inbox") == [], "marked read, so no longer unread"

        payload = "report\n\u00e9t\u00e9 2026\n"
        up = await alice.call("upload_file", filename="report.txt", text=payload,
                              file_type="text/plain")
        listed = await bob.call("list_files", owner=a_id)
        assert [f["id"] for f in listed] == [up["fileId"]]
        got = await bob.call("download_file", file_id=up["fileId"])
        assert got["inline"] is True and got["text"] == payload
        assert got["filename"] == "report.txt" and got["fileType"] == "text/plain"

        binary = bytes(range(256))
        up2 = await bob.call("upload_file", filename="blob.bin",
                             content_base64=base64.b64encode(binary).decode())
        got2 = await alice.call("download_file", file_id=up2["fileId"])
        assert base64.b64decode(got2["contentBase64"]) == binary

        agents = await alice.call("list_agents", capability="read")
        assert b_id in [x["id"] for x in agents] and a_id not in [x["id"] for x in agents]


async def test_stdio_files_by_reference_use_local_paths(daemon, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01" * 5000)
    async with mcp_session(daemon, "stdio") as alice:
        await alice.call("register", name=unique("alice"))
        up = await alice.call("upload_file", filename="in.bin", path=str(source))
        target = tmp_path / "out.bin"
        saved = await alice.call("download_file", file_id=up["fileId"], save_to=str(target))
        assert saved["fileSize"] == 10000
        assert target.read_bytes() == source.read_bytes()


async def test_a_large_file_comes_by_reference(daemon):
    big = bytes(range(256)) * 1200  # 300 KiB: above the inline limit
    async with mcp_session(daemon, "http") as alice:
        await alice.call("register", name=unique("alice"))
        up = await alice.call("upload_file", filename="big.bin",
                              content_base64=base64.b64encode(big).decode())
        got = await alice.call("download_file", file_id=up["fileId"])
        assert got["inline"] is False and got["fileSize"] == len(big)
        assert "contentBase64" not in got and "text" not in got
    async with aiohttp.ClientSession() as http, http.get(
            daemon.url + got["downloadPath"], headers=daemon.headers) as resp:
        assert resp.status == 200 and await resp.read() == big


async def test_http_refuses_local_paths(daemon, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("daemon-side file")
    async with mcp_session(daemon, "http") as alice:
        await alice.call("register", name=unique("alice"))
        text = await alice.refused("upload_file", filename="x", path=str(secret))
        assert "only over the stdio transport" in text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_catastrophe_posted_over_http_reaches_the_session_as_a_notification(
        daemon, transport):
    async with mcp_session(daemon, transport) as watcher:
        await watcher.session.subscribe_resource("meshd://catastrophes")
        title = unique("disk on fire")
        async with aiohttp.ClientSession() as http:
            status, body = await api(http, daemon, "POST", "/api/catastrophe", {
                "eventType": "server_down", "severity": "critical", "title": title})
        assert status == 200, body
        await watcher.wait_update("meshd://catastrophes")
        read = await watcher.session.read_resource("meshd://catastrophes")
        events = json.loads(read.contents[0].text)
        event = next(e for e in events if e["title"] == title)
        assert event["id"] == body["eventId"] and event["protocolRuns"] == []
        listed = await watcher.call("list_catastrophes")
        assert body["eventId"] in [e["id"] for e in listed]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_message_arriving_updates_the_subscribed_inbox(daemon, transport):
    async with mcp_session(daemon, transport) as alice, mcp_session(daemon, transport) as bob:
        a_id = (await alice.call("register", name=unique("alice")))["agentId"]
        b_id = (await bob.call("register", name=unique("bob")))["agentId"]
        await bob.session.subscribe_resource("meshd://inbox")
        await alice.call("send_message", to=b_id, content="ping")
        await bob.wait_update("meshd://inbox")
        read = await bob.session.read_resource("meshd://inbox")
        assert [(m["from_agent"], m["content"]) for m in json.loads(read.contents[0].text)] \
            == [(a_id, "ping")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_tool_naming_another_agent_is_refused(daemon, transport):
    async with mcp_session(daemon, transport) as alice, mcp_session(daemon, transport) as bob:
        text = await alice.refused("send_message", to="anyone", content="x")
        assert "call register or resume first" in text
        a_id = (await alice.call("register", name=unique("alice")))["agentId"]
        b_id = (await bob.call("register", name=unique("bob")))["agentId"]
        for tool, arguments in (
                ("send_message", {"to": a_id, "content": "as bob", "agent_id": b_id}),
                ("read_inbox", {"agent_id": b_id}),
                ("broadcast", {"content": "as bob", "agent_id": b_id}),
                ("post_health", {"agent_id": b_id}),
                ("acknowledge_update", {"update_id": "u", "agent_id": b_id})):
            text = await alice.refused(tool, **arguments)
            assert f"acts as agent {a_id}; it may not act as {b_id}" in text, tool
        text = await alice.refused("resume", agent_id=b_id)
        assert "already acts as agent" in text
        text = await alice.refused("register", name=unique("carol"))
        # The session acts with the agent token its registration returned: the API itself
        # refuses a token registering another agent.
        assert "already acts as agent" in text or "cannot register another agent" in text
        assert await bob.call("read_inbox") == [], "nothing was sent as bob"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_arguments_give_mcp_errors(daemon, transport):
    async with mcp_session(daemon, transport) as alice:
        await alice.call("register", name=unique("alice"))
        missing = await alice.refused("send_message", to="someone")
        assert "content" in missing and "Field required" in missing
        wrong_type = await alice.refused("read_inbox", limit="many")
        assert "limit" in wrong_type
        # The API's own validation and message, unchanged.
        api_said = await alice.refused("report_catastrophe", event_type="meteor",
                                       severity="critical", title="x")
        assert "eventType must be one of" in api_said and "(HTTP 400)" in api_said
        not_found = await alice.refused("download_file", file_id="no-such-file")
        assert "File not found" in not_found
        two = await alice.refused("upload_file", filename="x", text="a", content_base64="YQ==")
        assert "exactly one of" in two
        for text in (missing, wrong_type, api_said, not_found, two):
            assert "Traceback" not in text and API_KEY not in text
        with pytest.raises(McpError, match="no resource"):
            await alice.session.subscribe_resource("meshd://nothing")


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {},
    "clientInfo": {"name": "raw", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}


async def raw_rpc(http: aiohttp.ClientSession, daemon: MeshdProcess, body: dict,
                  headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """One JSON-RPC POST to /mcp: status, headers and the first JSON message (plain JSON or
    the first `data:` line of an event stream)."""
    async with http.post(daemon.url + "/mcp", json=body,
                         headers={**MCP_HEADERS, **headers}) as resp:
        text = await resp.text()
        data = None
        for line in text.splitlines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                break
        if data is None and text.strip().startswith("{"):
            data = json.loads(text)
        return resp.status, dict(resp.headers), data


async def test_http_door_needs_a_credential_and_a_session_keeps_its_own(daemon):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            status, _, body = await raw_rpc(http, daemon, INIT, headers)
            assert (status, body) == (401, {"error": "Invalid or missing API key"})
        status, headers, body = await raw_rpc(http, daemon, INIT, {"X-API-Key": API_KEY})
        assert status == 200 and body["result"]["serverInfo"]["name"] == "meshd"
        session = {"Mcp-Session-Id": headers["mcp-session-id"]}
        await raw_rpc(http, daemon, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                      {"X-API-Key": API_KEY, **session})
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "list_agents", "arguments": {}}}
        # A token's shape is not enough: the API is asked, and knows no such token.
        status, _, body = await raw_rpc(http, daemon, call,
                                        {"Authorization": "Bearer mat_not-a-token", **session})
        assert (status, body) == (401, {"error": "Invalid or missing API key"})
        status, _, body = await raw_rpc(http, daemon, call, {"X-API-Key": API_KEY, **session})
        assert status == 200 and body["result"]["isError"] is False


async def test_http_transport_refusals_are_json(daemon):
    async with aiohttp.ClientSession() as http:
        cases = (
            ({**MCP_HEADERS, "Host": "evil.example:80"}, json.dumps(INIT).encode(), 421,
             "Invalid Host header"),
            ({"Accept": "application/json, text/event-stream", "Content-Type": "text/plain"},
             json.dumps(INIT).encode(), 400, "Invalid Content-Type header"),
            ({"Accept": "text/html", "Content-Type": "application/json"},
             json.dumps(INIT).encode(), 406, None),
            (MCP_HEADERS, b"x" * (3 << 20), 413, None),
        )
        for headers, data, status, message in cases:
            async with http.post(daemon.url + "/mcp", data=data,
                                 headers={"X-API-Key": API_KEY, **headers}) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == status, (resp.status, body)
                # meshd's `{"error": text}`, or a JSON-RPC error where the SDK gives one.
                error = body["error"]
                text = error if isinstance(error, str) else error["message"]
                assert text, body
                if message:
                    assert text == message
        status, _, body = await raw_rpc(http, daemon, INIT, {
            "X-API-Key": API_KEY, "Mcp-Session-Id": "no-such-session"})
        assert status == 404 and body["error"]["message"] == "Session not found"
        async with http.post(daemon.url + "/mcp", data=b"{not json",
                             headers={"X-API-Key": API_KEY, **MCP_HEADERS}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == types.PARSE_ERROR


def test_stdio_server_reports_an_unreachable_meshd_as_a_tool_error():
    async def run() -> str:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "meshd", "mcp"],
            env=clean_env({"MESHD_URL": "http://127.0.0.1:9", "MESHD_API_KEY": API_KEY}))
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            result = await s.call_tool("register", {"name": "x"})
            assert result.isError
            return error_text(result)

    text = asyncio.run(run())
    assert "meshd is unreachable" in text



async def test_groups_memory_updates_and_health_through_tools(daemon):
    async with mcp_session(daemon, "http") as alice, mcp_session(daemon, "stdio") as bob:
        a_id = (await alice.call("register", name=unique("alice")))["agentId"]
        b_id = (await bob.call("register", name=unique("bob")))["agentId"]
        async with aiohttp.ClientSession() as http:
            _, group = await api(http, daemon, "POST", "/api/groups",
                                 {"name": unique("team"), "createdBy": a_id})
            group_id = group["groupId"]
            for member in (a_id, b_id):
                status, body = await api(http, daemon, "POST",
                                         f"/api/groups/{group_id}/members", {"agentId": member})
                assert status == 200, body
            _, update = await api(http, daemon, "POST", "/api/updates", {
                "version": "9.9.9", "updateType": "feature", "title": unique("update")})
        assert [g["id"] for g in await bob.call("list_groups")] == [group_id]

        first = await alice.call("memory_set", group_id=group_id, key="plan/a", value={"n": 1})
        second = await alice.call("memory_set", group_id=group_id, key="plan/a", value={"n": 2})
        assert (first["version"], second["version"]) == (1, 2)
        [got] = await bob.call("memory_get", group_id=group_id, key="plan/a")
        assert got["value"] == {"n": 2} and got["version"] == 2
        assert [m["key"] for m in await bob.call("memory_get", group_id=group_id)] == ["plan/a"]
        history = await bob.call("memory_history", group_id=group_id, key="plan/a")
        assert history["currentVersion"] == 2

        sent = await alice.call("group_message", group_id=group_id, content="standup")
        assert sent["recipientCount"] == 1
        assert [m["content"] for m in await bob.call("read_inbox")] == ["standup"]

        updates = await bob.call("list_updates")
        assert update["updateId"] in [u["id"] for u in updates]
        ack = await bob.call("acknowledge_update", update_id=update["updateId"],
                             agent_version="1.0.0")
        assert ack["success"] is True

        assert (await bob.call("post_health", status="degraded", cpu_usage=12.5))["success"]
        online = await alice.call("list_agents", online=True)
        assert {"id": b_id, "status": "degraded"}.items() <= next(
            a for a in online if a["id"] == b_id).items()
        bad = await bob.refused("post_health", status="on-fire")
        assert "status must be one of" in bad
