"""The supervisor's fallback (it answers 503 on the public port while no worker runs) treats
hostile requests as the worker does: parser errors are JSON that quotes nothing, and a request
head that never completes is cut."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from tests.process.harness import poll

pytestmark = pytest.mark.process

SECRET = "fallback-secret-key-5e1a"


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_fallback_answers_parser_errors_as_json_and_cuts_slow_heads(meshd_proc):
    proc = meshd_proc(key=SECRET)
    proc.start(["--crash-loop-limit", "0", "--header-timeout", "1s"])
    proc.wait_healthy()
    worker = proc.descendants()[0]
    worker.send_signal(signal.SIGKILL)  # one crash is a crash loop here: the fallback stays

    def fallback_up() -> bool:
        answer = raw(proc.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return b" 503 " in answer.split(b"\r\n", 1)[0] and b'"unavailable"' in answer

    poll(fallback_up, 20, "the supervisor's fallback to answer 503")
    answer = raw(proc.port, f"GET /api/agents/\xff?apiKey={SECRET} HTTP/1.1\r\nHost: x\r\n"
                            f"X-API-Key: {SECRET}\r\n\r\n".encode("latin-1"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400", answer
    assert b"application/json" in head
    assert isinstance(json.loads(body)["error"], str)
    assert SECRET.encode() not in answer

    started = time.monotonic()
    assert raw(proc.port, b"GET /health HTTP/1.1\r\nHost: x\r\n") == b""  # never completed
    assert time.monotonic() - started < 8
    log = proc.log_path.read_text(errors="replace")
    assert SECRET not in log
    assert "Traceback" not in log.split("supervisor.crash_loop")[-1]
