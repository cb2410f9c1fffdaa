"""Hostile input (issue 9): every case of the report, against the real worker stack.

The app runs behind `GuardedAppRunner` on a loopback port (as `meshd worker` serves it), logs
go to a file through meshd's own log configuration, and raw requests are written to a socket
where aiohttp's client would refuse to send them. Each case asserts a JSON 4xx, that nothing
was written, and that no key appears in the response or the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging as stdlib_logging
import socket
import sqlite3
import weakref
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from meshd import http_server
from meshd import log as logging
from meshd.api import http as api_http
from meshd.api.app import make_app
from meshd.api.keys import HUB
from meshd.http_server import GuardedAppRunner
from meshd.store import pg_schema, postgres

API_KEY = "hostile-api-key-0c1d9e"
ADMIN_KEY = "hostile-admin-key-77b2f4"
TOKEN = "mat_s3cr3tAgentToken0123456789"
SECRETS = (API_KEY, ADMIN_KEY, TOKEN)
AUTH = {"X-API-Key": API_KEY}
TIMEOUT = 1.0  # header and body timeouts of the server under test


@dataclass
class Live:
    port: int
    app: web.Application
    database: Path
    log_path: Path
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def call(self, method: str, path: str, body=None, **kw):
        if body is not None:
            kw["json"] = body
        headers = {**AUTH, **kw.pop("headers", {})}
        async with self.session.request(method, self.url(path), headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    def rows(self) -> dict[str, int]:
        """Row count of every table: `nothing written` is this unchanged."""
        if postgres.is_url(self.database):
            return {t: postgres.read_sql(str(self.database), f"SELECT COUNT(*) AS n FROM {t}")[0]
                    ["n"] for t in pg_schema.TABLES}
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
        finally:
            db.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_secret(self, *texts: str | bytes) -> None:
        log_text = self.log_text()
        for secret in SECRETS:
            assert secret not in log_text, f"{secret} in the log"
            for text in texts:
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
                assert secret not in text, f"{secret} in a response"


@pytest.fixture
async def live(tmp_path, settings, storage):
    log_path = tmp_path / "meshd.log"
    stream = log_path.open("w", buffering=1)
    logging.configure("json", "debug", process="worker", stream=stream, cache=False)
    logging.add_secrets(API_KEY, ADMIN_KEY)
    settings = settings.replace(api_key=API_KEY, admin_key=ADMIN_KEY, access_log=True,
                                header_timeout=TIMEOUT, body_timeout=TIMEOUT)
    app = make_app(settings, storage)
    runner = GuardedAppRunner(app, header_timeout=TIMEOUT, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield Live(port, app, settings.database, log_path, session)
    await runner.cleanup()
    structlog.reset_defaults()
    root = stdlib_logging.getLogger()
    for handler in [h for h in root.handlers
                    if isinstance(h.formatter, logging.RedactingFormatter)]:
        root.removeHandler(handler)
    stream.close()


async def raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Write bytes, read the answer until the server closes (errors close the connection;
    other requests here say `Connection: close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def request(method: str, target: str, headers: dict[str, bytes | str] | None = None,
            body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1",
             b"Connection: close", f"X-API-Key: {API_KEY}".encode()]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                              else value.encode()))
    if body:
        lines.append(f"Content-Length: {len(body)}".encode())
        lines.append(b"Content-Type: application/json")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_error(status: int, headers: dict, body: bytes) -> dict:
    assert 400 <= status < 500, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    data = orjson.loads(body)
    assert isinstance(data.get("error"), str), data
    return data


def nested(levels: int):
    """A JSON value of `levels` nested containers."""
    value: object = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


async def register(live: Live, name: str) -> str:
    status, body = await live.call("POST", "/api/agents/register", {"name": name})
    assert status == 200, body
    return body["agentId"]


async def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


# -- what was accepted can be served ------------------------------------------------------

async def test_a_whole_float_beyond_64_bits_is_stored_and_served_back(live):
    agent = await register(live, "Big")
    for value in (1e20, 2**64 - 1, -(2**70)):
        status, body = await live.call("POST", f"/api/agents/{agent}/health",
                                       {"memoryUsage": value, "customMetrics": {"n": value}})
        assert status == 200, body
        status, health = await live.call("GET", f"/api/agents/{agent}/health")
        assert status == 200, health
        assert health["memoryUsage"] == float(value)
        assert health["customMetrics"] == {"n": float(value)}
        status, dashboard = await live.call("GET", "/api/health/dashboard")
        assert status == 200, dashboard
        assert dashboard["agentList"][0]["memoryUsage"] == float(value)


async def test_free_form_json_at_the_depth_limit_is_stored_served_and_broadcast(live):
    sender, receiver = await register(live, "S"), await register(live, "R")
    ws = await live.session.ws_connect(live.url("/ws"))
    content = nested(api_http.MAX_BODY_DEPTH - 1)  # the body object is one more level
    status, body = await live.call("POST", "/api/messages",
                                   {"from": sender, "to": receiver, "content": content})
    assert status == 200, body
    while (frame := orjson.loads((await ws.receive(timeout=5)).data))["type"] != "new_message":
        pass
    assert frame["message"]["content"] == content
    status, inbox = await live.call("GET", f"/api/messages/{receiver}")
    assert status == 200 and len(inbox) == 1
    await ws.close()


# -- nothing can fail after a commit ------------------------------------------------------

@pytest.mark.parametrize("depth", [300, api_http.MAX_BODY_DEPTH + 1])
async def test_too_deep_free_form_json_is_a_400_before_any_write(live, depth):
    agent = await register(live, "Deep")
    status, group = await live.call("POST", "/api/groups", {"name": "g", "createdBy": agent})
    group_id = group["groupId"]
    status, skill = await live.call("POST", "/api/skills", {"agentId": agent, "name": "s"})
    ws = await live.session.ws_connect(live.url("/ws"))  # a listener makes events encoded
    before = live.rows()
    deep = nested(depth)
    cases = [
        ("/api/messages", {"from": agent, "to": agent, "content": deep}),
        ("/api/broadcast", {"from": agent, "content": deep}),
        (f"/api/groups/{group_id}/memory", {"agentId": agent, "key": "k", "value": deep}),
        ("/api/groups", {"name": "g2", "createdBy": agent, "metadata": deep}),
        (f"/api/skills/{skill['skillId']}/invoke", {"from": agent, "payload": deep}),
        (f"/api/agents/{agent}/health", {"customMetrics": deep}),
        (f"/api/agents/{agent}/heartbeat", {"customMetrics": deep}),
        ("/api/updates", {"version": "9.0.0", "updateType": "minor", "title": "t",
                          "breakingChange": deep}),
    ]
    for path, payload in cases:
        status, body = await live.call("POST", path, payload)
        assert status == 400 and "nested deeper" in body["error"], (path, status, body)
    assert live.rows() == before
    await ws.close()


async def test_a_non_utf8_agent_id_header_is_a_400_before_the_write(live):
    before = live.rows()
    body = orjson.dumps({"version": "1.0.0", "updateType": "minor", "title": "t"})
    status, headers, answer = await raw(live.port, request(
        "POST", "/api/updates", {"X-Agent-Id": b"agent-\xff"}, body))
    assert "X-Agent-Id" in json_error(status, headers, answer)["error"]
    assert live.rows() == before
    live.assert_no_secret(answer)


async def test_an_unencodable_event_is_logged_once_and_the_write_stands(live):
    """Hub.publish runs after COMMIT: whatever it is handed, it must not raise."""
    ws = await live.session.ws_connect(live.url("/ws"))
    await wait_for(lambda: live.app[HUB].clients, what="client joined")
    live.app[HUB].publish({"type": "x", "value": nested(400)})
    assert live.log_text().count("ws.event_not_encodable") == 1
    await ws.close()


# -- 400 where a 400 belongs --------------------------------------------------------------

async def test_limit_and_offset_beyond_int64_are_400_on_every_list_route(live):
    agent = await register(live, "Lister")
    _, group = await live.call("POST", "/api/groups", {"name": "g", "createdBy": agent})
    gid = group["groupId"]
    routes = ["/api/agents", f"/api/agents/{agent}/groups", f"/api/messages/{agent}",
              f"/api/messages/{agent}/failed", "/api/skills", "/api/groups",
              f"/api/groups/{gid}/agents", f"/api/groups/{gid}/memory", "/api/files",
              "/api/updates", "/api/catastrophe", "/api/health/dashboard"]
    for route in routes:
        for param in ("limit", "offset"):
            for value in (2**63, 10**30):
                status, body = await live.call("GET", f"{route}?{param}={value}")
                assert status == 400 and param in body["error"], (route, param, status, body)
        status, _ = await live.call("GET", f"{route}?limit={2**63 - 1}&offset={2**63 - 1}")
        assert status == 200, route


@pytest.mark.parametrize("name", ["X-API-Key", "Authorization", "X-Admin-Key",
                                  "Idempotency-Key", "X-Agent-Version"])
async def test_a_non_utf8_header_is_a_json_400(live, name):
    agent = await register(live, "H")
    before = live.rows()
    body = orjson.dumps({"from": agent, "to": agent, "content": "hi"})
    value = b"Bearer \xfe\xff" if name == "Authorization" else b"\xfe\xff" + API_KEY.encode()
    for method, path, payload in (("POST", "/api/messages", body),
                                  ("GET", "/api/admin/protocols", b"")):
        status, headers, answer = await raw(live.port, request(method, path, {name: value},
                                                               payload))
        assert name in json_error(status, headers, answer)["error"]
        live.assert_no_secret(answer)
    assert live.rows() == before


async def test_a_body_its_content_encoding_does_not_decode_is_a_400(live):
    agent = await register(live, "Gz")
    before = live.rows()
    body = orjson.dumps({"from": agent, "to": agent, "content": "plain"})
    status, headers, answer = await raw(live.port, request(
        "POST", "/api/messages", {"Content-Encoding": "gzip"}, body))
    assert "decoded" in json_error(status, headers, answer)["error"]
    assert live.rows() == before
    assert "Traceback" not in live.log_text()


async def test_dates_out_of_range_after_their_offset_are_400(live):
    agent = await register(live, "Dates")
    before = live.rows()
    far = "9999-12-31T23:59:59-23:59"
    for path in (f"/api/messages/{agent}?since={far}", f"/api/updates?since={far}"):
        status, body = await live.call("GET", path.replace("+", "%2B"))
        assert status == 400 and "since" in body["error"], (path, body)
    status, body = await live.call("POST", "/api/updates", {
        "version": "1.0.0", "updateType": "minor", "title": "t",
        "expiresAt": "0001-01-01T00:00:00+23:59"})
    assert status == 400 and "expiresAt" in body["error"], body
    assert live.rows() == before


@pytest.mark.parametrize("run_id", ["%3F", "..%2F..%2Fstatus", "a%20b", "x" * 65])
async def test_an_admin_run_id_is_validated_before_the_control_socket(live, run_id):
    for method, path in (("GET", f"/api/admin/protocols/runs/{run_id}"),
                         ("POST", f"/api/admin/protocols/runs/{run_id}/abort")):
        async with live.session.request(method, live.url(path),
                                        headers={"X-Admin-Key": ADMIN_KEY}) as resp:
            body = await resp.json()
            assert resp.status == 400 and "runId" in body["error"], (path, body)


# -- errors below the router: JSON, nothing quoted ----------------------------------------

LOW_LEVEL = {
    "0xFF byte in the path": (
        f"GET /api/agents/\xff?apiKey={API_KEY} HTTP/1.1\r\nHost: x\r\n"
        f"X-Admin-Key: {ADMIN_KEY}\r\n\r\n").encode("latin-1"),
    "header line over 8190 bytes": (
        f"GET /api/agents?apiKey={API_KEY} HTTP/1.1\r\nHost: x\r\nX-Admin-Key: {ADMIN_KEY}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nX-Pad: {'a' * 9000}\r\n\r\n").encode(),
    "Content-Length and Transfer-Encoding": (
        f"POST /api/messages?apiKey={API_KEY} HTTP/1.1\r\nHost: x\r\n"
        f"X-API-Key: {API_KEY}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n").encode(),
    "bad request line": f"GET\x00 /?apiKey={API_KEY} HTTP/1.1\r\n\r\n".encode(),
    "bad chunk size": (
        f"POST /api/messages HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n").encode(),
}


@pytest.mark.parametrize("case", list(LOW_LEVEL))
async def test_parser_errors_are_json_and_quote_no_secret(live, case):
    before = live.rows()
    status, headers, answer = await raw(live.port, LOW_LEVEL[case])
    json_error(status, headers, answer)
    live.assert_no_secret(answer)
    assert "Traceback" not in live.log_text()
    assert live.rows() == before


def test_the_hooks_of_the_request_handler_subclass_are_still_there():
    """pyproject.toml pins aiohttp's minor version because http_server.py relies on these;
    an upgrade that renames or drops one fails here before it fails in production."""
    import aiohttp as package

    assert package.__version__.startswith("3.14."), package.__version__
    for name in ("handle_error", "log_exception", "data_received", "connection_made",
                 "connection_lost", "force_close"):
        assert callable(getattr(RequestHandler, name, None)), name
    for name in ("_request_count", "_request_in_progress", "_messages"):
        assert name in RequestHandler.__slots__, name
    assert hasattr(web.AppRunner, "_make_server")
    server = web.Server(lambda r: None, loop=asyncio.new_event_loop(), keepalive_timeout=5)
    assert server._kwargs == {"keepalive_timeout": 5} and server._loop is not None
    assert isinstance(http_server.GuardedServer.__call__, type(web.Server.__call__))


# -- bounded resources --------------------------------------------------------------------

async def test_a_stalled_upload_reserves_nothing_and_times_out(live):
    agent = await register(live, "Up")
    before = live.rows()
    head = (f"POST /api/files/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {30 << 20}\r\n\r\n"
            f'{{"agentId": "{agent}"').encode()
    status, headers, answer = await raw(live.port, head, timeout=TIMEOUT * 5)
    assert status == 408
    json_error(status, headers, answer)
    assert live.rows() == before


async def test_a_slowloris_connection_is_closed_while_others_are_served(live):
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(b"GET /api/agents HTTP/1.1\r\nHost: x\r\n")
    started = asyncio.get_running_loop().time()
    closed = asyncio.ensure_future(reader.read())
    for _ in range(3):  # the trickle of header bytes does not extend the deadline
        await asyncio.sleep(TIMEOUT / 3)
        with contextlib.suppress(ConnectionError):
            writer.write(b"X-Slow: 1\r\n")
        assert (await live.call("GET", "/api/agents"))[0] == 200
    assert await asyncio.wait_for(closed, TIMEOUT * 5) == b""
    assert asyncio.get_running_loop().time() - started < TIMEOUT * 5
    writer.close()
    assert "http.header_timeout" in live.log_text()


async def test_a_kept_alive_connection_serves_several_requests(live):
    """The head deadline runs per request, not per connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    for _ in range(3):
        writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"HTTP/1.1 200"), line
        length = 0
        while (header := await reader.readline()) != b"\r\n":
            if header.lower().startswith(b"content-length:"):
                length = int(header.split(b":")[1])
        await reader.readexactly(length)
        await asyncio.sleep(TIMEOUT * 0.6)  # idle between requests is not a slow head
    writer.close()


async def test_a_slow_websocket_client_is_dropped_and_its_tcp_closed(live):
    hub = live.app[HUB]
    sock = socket.create_connection(("127.0.0.1", live.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await wait_for(lambda: hub.clients, what="client joined")
    client = next(iter(hub.clients))
    transport, queue = client.transport, weakref.ref(client.queue)
    del client
    # The client reads nothing: its queue fills, it is dropped, and the close frame cannot
    # be delivered either; the TCP connection must still be cut within the bound.
    big = {"type": "blob", "data": "x" * 65536}
    while hub.dropped == 0:
        hub.publish(big)
        await asyncio.sleep(0)
    await wait_for(transport.is_closing, timeout=10, what="transport closed")
    await wait_for(lambda: live.app[HUB].clients == set(), what="hub empty")
    # Its send queue (up to SEND_BUFFER_BYTES of frames) is freed once the handler has ended.
    await wait_for(lambda: gc.collect() is not None and queue() is None, what="queue freed")
    sock.close()
    assert "Traceback" not in live.log_text()


def _outside_address() -> str | None:
    """A local address that is not loopback, to connect from (the cap skips loopback)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        address = s.getsockname()[0]
        if not address.startswith("127."):
            return address
    return None


async def test_websocket_connections_per_address_are_capped_but_never_loopback(
        tmp_path, settings, storage):
    app = make_app(settings.replace(ws_max_per_address=1), storage)
    runner = GuardedAppRunner(app, header_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            local = [await session.ws_connect(f"http://127.0.0.1:{port}/ws") for _ in range(3)]
            outside = _outside_address()
            if outside is not None:
                first = await session.ws_connect(f"http://{outside}:{port}/ws")
                await wait_for(lambda: len(app[HUB].clients) == 4, what="four clients")
                async with session.get(f"http://{outside}:{port}/ws", headers={
                        "Upgrade": "websocket", "Connection": "Upgrade",
                        "Sec-WebSocket-Key": "MDEyMzQ1Njc4OWFiY2RlZg==",
                        "Sec-WebSocket-Version": "13"}) as refused:
                    assert refused.status == 429
                    assert "limit 1" in (await refused.json())["error"]
                await first.close()
            for ws in local:
                await ws.close()
    finally:
        await runner.cleanup()
    if outside is None:
        pytest.skip("no non-loopback address to connect from; loopback exemption checked")


async def test_a_client_that_disconnects_mid_upload_costs_one_line(live):
    agent = await register(live, "Gone")
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write((f"POST /api/files/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                      f"Content-Length: {1 << 20}\r\n\r\n"
                      f'{{"agentId": "{agent}", "fileData": "AAAA').encode())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
    await wait_for(lambda: live.log_text().count("http.client_disconnected") == 5,
                   what="five disconnect lines")
    text = live.log_text()
    assert "Traceback" not in text and '"exception"' not in text
    assert text.count("/api/files/upload") == 5  # the disconnect line replaces the access line


async def test_websocket_clients_that_vanish_cost_one_line_each(live):
    hub = live.app[HUB]
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", live.port))
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
        await wait_for(lambda: hub.clients, what="client joined")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        for _ in range(20):
            hub.publish({"type": "blob", "data": "x" * 4096})
        await wait_for(lambda: not hub.clients, what="client gone")
    await wait_for(lambda: live.log_text().count("ws.disconnected") == 5, what="five lines")
    text = live.log_text()
    assert "Traceback" not in text and '"exception"' not in text


# -- uploads served safely; logs redacted -------------------------------------------------

@pytest.mark.parametrize("file_type", ["text/html", "image/svg+xml", "application/xml",
                                       "text/javascript"])
async def test_active_content_is_an_attachment_in_a_sandbox(live, file_type):
    agent = await register(live, "Web")
    data = b"<script>alert(1)</script>"
    status, up = await live.call("POST", "/api/files/upload", {
        "agentId": agent, "filename": "x.html", "fileType": file_type,
        "fileData": base64.b64encode(data).decode()})
    assert status == 200, up
    for path in (f"/api/files/{up['fileId']}/download", f"/api/files/{up['fileId']}?raw=1"):
        async with live.session.get(live.url(path), headers=AUTH) as resp:
            assert await resp.read() == data
            assert resp.headers["Content-Disposition"].startswith("attachment")
            assert resp.headers["Content-Security-Policy"] == "sandbox"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_keys_and_tokens_never_reach_the_log(live):
    log = logging.get("meshd.test")
    log.info("test.line", url=f"/api/agents?apiKey={API_KEY}&x=1", apiKey=API_KEY,
             headers={"X-Admin-Key": ADMIN_KEY, "Authorization": f"Bearer {TOKEN}"},
             note=f"token {TOKEN} and key {API_KEY}")
    stdlib_logging.getLogger("aiohttp.server").error(
        "Error handling request: X-Admin-Key: %s apiKey=%s", ADMIN_KEY, "abc")
    # An unknown key in a query string is redacted by its name.
    async with live.session.get(live.url("/api/agents?apiKey=unknown-key-123")) as resp:
        assert resp.status == 401
    live.assert_no_secret()
    text = live.log_text()
    assert "unknown-key-123" not in text and "apiKey=abc" not in text
    assert text.count(logging.REDACTED) >= 5


def test_redaction_of_text():
    assert logging.redact_text("GET /x?apiKey=abc&y=1") == "GET /x?apiKey=[redacted]&y=1"
    assert logging.redact_text("Authorization: Bearer xyz") == "Authorization: [redacted]"
    assert logging.redact_text("'x-admin-key': 'k1'") == "'x-admin-key': '[redacted]'"
    assert logging.redact_text(f"t={TOKEN[:-1]}!") == "t=mat_[redacted]!"
    assert logging.redact_text("plain text stays") == "plain text stays"
