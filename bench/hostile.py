"""Resources hostile clients can hold in a real `meshd run` (issue 9), three scenarios:

1. stalled uploads: N connections each declare a 30 MB upload and send 6 bytes; RSS growth of
   meshd's process tree while they are held (target < 20 MB), and how long until each is
   answered 408 (body_timeout);
2. slowloris: N connections send a partial request head and trickle a header line every
   second; how long until meshd closes them (target: within header_timeout + 1 s) while a
   normal client keeps getting answers (failures and worst latency reported);
3. stalled WebSocket clients: N clients that never read while broadcasts of 64 KiB fill their
   buffers; how long until each is dropped and its TCP connection closed, and the RSS before,
   at the peak and after (`--rounds`, 3 by default: later ones reuse what earlier ones
   released); the worker's own RSS and its [heap] (glibc's main arena, where the queued
   64 KiB frames live) are printed besides the process tree's.

Run: .venv/bin/python bench/hostile.py [--uploads 20] [--slowloris 100] [--websockets 20]
                                       [--rounds 3]
(0 uploads, slowloris connections or WebSocket clients skips that scenario.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import socket
import sys
import time
from pathlib import Path

import psutil
from _common import meshd_daemon, tree_rss, wait_settled

API_KEY = "bench-hostile-key"
MB = 1_000_000
MIB = 1 << 20
HEADER_TIMEOUT = 5.0
BODY_TIMEOUT = 10.0
AFTER_CLOSE = 3.0


def worker_of(root: psutil.Process) -> psutil.Process:
    children = root.children(recursive=True)
    return children[0] if children else root


def heap_kib(proc: psutil.Process) -> int:
    """Resident KiB of the process's [heap] mapping (0 when unreadable)."""
    with contextlib.suppress(OSError, psutil.Error):
        lines = Path(f"/proc/{proc.pid}/smaps").read_text().splitlines()
        for k, line in enumerate(lines):
            if line.endswith("[heap]"):
                for entry in lines[k + 1:]:
                    if entry.startswith("Rss:"):
                        return int(entry.split()[1])
    return 0


async def http(port: int, method: str, path: str, body: dict | None = None,
               timeout: float = 10) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write((f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                  f"Connection: close\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    try:
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


async def stalled_uploads(port: int, root: psutil.Process, count: int) -> None:
    baseline = tree_rss(root)
    started = time.monotonic()
    conns = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST /api/files/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {30 * MB}\r\n\r\n"
                      '{"age').encode() + b"n")  # 6 bytes of body
        conns.append((reader, writer))
    await asyncio.sleep(2)
    peak = baseline
    for _ in range(20):
        peak = max(peak, tree_rss(root))
        await asyncio.sleep(0.05)
    answers = await asyncio.gather(*(asyncio.wait_for(r.read(), BODY_TIMEOUT + 10)
                                     for r, _ in conns), return_exceptions=True)
    answered = time.monotonic() - started
    for _, writer in conns:
        writer.close()
    statuses = sorted({a.split()[1].decode() if isinstance(a, bytes) and a else repr(a)[:40]
                       for a in answers})
    growth = (peak - baseline) / MB
    print(f"stalled uploads: {count} x 30 MB declared, 6 bytes sent")
    print(f"  RSS before {baseline / MIB:.1f} MiB, while held {peak / MIB:.1f} MiB, "
          f"growth {growth:.1f} MB  [{'ok' if growth < 20 else 'MISS'}: target < 20 MB]")
    print(f"  all answered {statuses} after {answered:.1f} s (body_timeout {BODY_TIMEOUT:g} s)")


async def slowloris(port: int, count: int) -> None:
    closed_after: list[float] = []
    started = time.monotonic()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/agents HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        read = asyncio.ensure_future(reader.read())
        while not read.done() and time.monotonic() - t0 < HEADER_TIMEOUT * 4:
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: 1\r\n")
            await asyncio.wait([read], timeout=1)
        closed_after.append(time.monotonic() - t0 if read.done() else float("inf"))
        read.cancel()
        writer.close()

    normal_ok = normal_failed = 0
    worst = 0.0
    attackers = asyncio.gather(*(one() for _ in range(count)))
    while not attackers.done():
        t0 = time.monotonic()
        try:
            status, _ = await http(port, "GET", "/health", timeout=5)
            normal_ok += status == 200
            normal_failed += status != 200
        except (OSError, TimeoutError, ValueError, IndexError):
            normal_failed += 1
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.1)
    await attackers
    latest = max(closed_after)
    print(f"slowloris: {count} connections trickling header lines every 1 s")
    print(f"  closed by meshd after {min(closed_after):.1f} to {latest:.1f} s "
          f"(header_timeout {HEADER_TIMEOUT:g} s)  "
          f"[{'ok' if latest <= HEADER_TIMEOUT + 1 else 'MISS'}: within header_timeout + 1 s]")
    print(f"  meanwhile GET /health: {normal_ok} answered 200, {normal_failed} failed, "
          f"worst latency {worst * 1000:.0f} ms, over {time.monotonic() - started:.1f} s")


def ws_handshake(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


async def stalled_websockets(port: int, root: psutil.Process, count: int, log: Path,
                             round_: int) -> None:
    worker = worker_of(root)
    baseline = tree_rss(root)
    worker_before, heap_before = worker.memory_info().rss, heap_kib(worker)
    dropped_before = log.read_text(errors="replace").count("ws.client_dropped")
    socks = [ws_handshake(port) for _ in range(count)]
    ours = {s.getsockname()[1] for s in socks}

    def open_ours() -> int:
        with contextlib.suppress(psutil.Error):
            return sum(1 for c in worker.net_connections("tcp")
                       if c.raddr and c.raddr.port in ours and c.status == "ESTABLISHED")
        return count

    def dropped() -> int:
        return log.read_text(errors="replace").count("ws.client_dropped") - dropped_before

    _, body = await http(port, "POST", "/api/agents/register", {"name": "hostile-bench"})
    sender = json.loads(body)["agentId"]
    content = "x" * 65536
    started = time.monotonic()
    peak = baseline
    worker_peak = worker_before
    sent = 0
    all_dropped_at = None
    while open_ours() and time.monotonic() - started < 60:
        if all_dropped_at is None:
            await http(port, "POST", "/api/broadcast", {"from": sender, "content": content})
            sent += 1
            if dropped() >= count:
                all_dropped_at = time.monotonic()
        else:
            await asyncio.sleep(0.05)
        peak = max(peak, tree_rss(root))
        worker_peak = max(worker_peak, worker.memory_info().rss)
    closed_at = time.monotonic()
    await asyncio.sleep(AFTER_CLOSE)
    after = tree_rss(root)
    worker_after, heap_after = worker.memory_info().rss, heap_kib(worker)
    for s in socks:
        s.close()
    bound = (f"{closed_at - all_dropped_at:.1f} s after the last drop"
             if all_dropped_at else "before all drops were logged")
    print(f"stalled WebSocket clients, round {round_}: {count} that never read, "
          f"{sent} broadcasts of 64 KiB")
    print(f"  all TCP connections closed by meshd {bound} "
          f"[{'ok' if open_ours() == 0 else 'MISS'}]")
    print(f"  RSS before {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, "
          f"{AFTER_CLOSE:g} s after closing {after / MIB:.1f} MiB")
    print(f"  worker RSS before {worker_before / MIB:.1f} MiB, peak {worker_peak / MIB:.1f} MiB, "
          f"after {worker_after / MIB:.1f} MiB; its [heap] {heap_before / 1024:.1f} -> "
          f"{heap_after / 1024:.1f} MiB")


async def run(args: argparse.Namespace) -> None:
    with meshd_daemon(["--api-key", API_KEY, "--header-timeout", f"{HEADER_TIMEOUT}s",
                       "--body-timeout", f"{BODY_TIMEOUT}s"]) as mesh:
        port = mesh.port
        # The standby's start is not the uploads' memory: measure from a settled tree.
        wait_settled(mesh.data_dir, mesh.process)
        root = psutil.Process(mesh.process.pid)
        if args.uploads:
            await stalled_uploads(port, root, args.uploads)
        if args.slowloris:
            await slowloris(port, args.slowloris)
        # Several rounds: later rounds that stay at an earlier round's peak show the memory of
        # the dropped clients was released for reuse, not leaked.
        for round_ in range(1, args.rounds + 1) if args.websockets else ():
            await stalled_websockets(port, root, args.websockets, mesh.log_path, round_)
        tracebacks = mesh.log_path.read_text(errors="replace").count("Traceback")
        print(f"tracebacks in meshd's log: {tracebacks}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--slowloris", type=int, default=100)
    parser.add_argument("--websockets", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="stalled WebSocket rounds")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
