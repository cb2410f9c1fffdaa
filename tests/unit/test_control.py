"""The one control channel: a server built with `control.server` and the one client, on a real
unix socket. Every error is a JSON body (bad JSON included); a dead daemon is found by a
connect, not by its socket file."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aiohttp import web

from meshd.control import client as control
from meshd.control.server import make_app, read_json, reply, serve_unix
from meshd.errors import Conflict


@pytest.fixture
async def served(tmp_path):
    routes = web.RouteTableDef()

    @routes.post("/echo")
    async def echo(request):
        return reply({"got": await read_json(request)})

    @routes.post("/conflict")
    async def conflict(request):
        raise Conflict("already under way")

    @routes.get("/boom")
    async def boom(request):
        raise RuntimeError("kaboom")

    path = tmp_path / "c.sock"
    runner = await serve_unix(make_app(routes), path)
    yield path
    await runner.cleanup()


async def raw(path, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One hand-written HTTP request, to send what the client never would."""
    import asyncio

    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_a_request_and_its_answer(served):
    assert await control.request(served, "POST", "/echo", {"a": [1, 2]}) == {"got": {"a": [1, 2]}}
    assert await control.request(served, "POST", "/echo") == {"got": {}}


async def test_bad_json_is_a_json_400_not_a_text_500(served):
    body = b"{not json"
    status, headers, text = await raw(served, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\nContent-Type: application/json\r\n"
                                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert b"not valid JSON" in text
    status, _, text = await raw(served, b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close"
                                b"\r\nContent-Length: 3\r\n\r\n[1]")
    assert status == 400 and b"must be a JSON object" in text


async def test_errors_follow_one_convention(served):
    with pytest.raises(control.ControlError) as conflict:
        await control.request(served, "POST", "/conflict", {})
    assert (conflict.value.status, conflict.value.message) == (409, "already under way")
    with pytest.raises(control.ControlError) as missing:
        await control.request(served, "GET", "/nowhere")
    assert missing.value.status == 404
    with pytest.raises(control.ControlError) as boom:
        await control.request(served, "GET", "/boom")
    assert boom.value.status == 500 and "kaboom" in boom.value.message
    assert await control.exchange(served, "GET", "/nowhere") == (404, {"error": "Not Found"})


async def test_a_live_socket_is_alive_and_a_stale_one_is_not(served, tmp_path):
    # The probe blocks: from a thread, so this loop can serve its /ping.
    assert await asyncio.to_thread(control.alive, served)
    assert await control.request(served, "GET", "/ping") == {"pid": os.getpid()}
    assert control.probe(tmp_path / "missing.sock") is control.Liveness.NOT_RUNNING
    assert not control.alive(tmp_path / "missing.sock")
    stale = tmp_path / "stale.sock"  # what a daemon killed by SIGKILL leaves behind
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    assert stale.exists() and not control.alive(stale)
    assert control.probe(stale) is control.Liveness.NOT_RUNNING
    with pytest.raises(control.Unreachable):
        await control.request(stale, "GET", "/status")
    with pytest.raises(control.Unreachable):
        await control.request(tmp_path / "missing.sock", "GET", "/status")


async def test_the_socket_is_for_its_owner_only(served):
    assert served.stat().st_mode & 0o777 == 0o600


def test_a_socket_that_takes_connections_but_never_answers_is_not_alive(tmp_path):
    """What a SIGSTOPped daemon looks like from outside: the kernel completes the connect from
    the listen backlog, and nothing ever reads the request. A connect alone called it alive."""
    path = tmp_path / "stopped.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as frozen:
        frozen.bind(str(path))
        frozen.listen(8)  # never accepted
        assert control.probe(path, timeout=0.5) is control.Liveness.NOT_ANSWERING
        assert not control.alive(path, timeout=0.5)


async def test_any_http_answer_counts_as_alive(tmp_path):
    """A daemon from before /ping answers it with a 404: still a daemon that answers."""
    path = tmp_path / "old.sock"
    runner = await serve_unix(web.Application(), path)
    try:
        assert await asyncio.to_thread(control.probe, path) is control.Liveness.ANSWERING
    finally:
        await runner.cleanup()
