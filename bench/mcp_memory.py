"""Worker RSS with MCP off and on: idle after start, then after N streamable HTTP sessions
that each register an agent, send a message and read an inbox (sessions closed again).

Run: .venv/bin/python bench/mcp_memory.py [--sessions 20]
It starts `meshd run` twice on a free port in a temp dir; the worker is the supervisor's child.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clean_env, free_port, meshd_command  # noqa: E402

KEY = "bench-key"


def start(root: Path, port: int, mcp: bool) -> subprocess.Popen:
    args = [*meshd_command(), "run", "--port", str(port), "--data-dir", str(root / "data"),
            "--backup-dir", str(root / "backups"), "--api-key", KEY, "--access-log", "false",
            "--log-format", "json", "--mcp", "true" if mcp else "false"]
    log = open(root / "meshd.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                            start_new_session=True)


def wait_healthy(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("meshd did not become healthy")


def worker_rss(proc: subprocess.Popen) -> int:
    children = psutil.Process(proc.pid).children()
    return max(c.memory_info().rss for c in children)


async def sessions(port: int, count: int) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    for i in range(count):
        async with (create_mcp_http_client(headers={"X-API-Key": KEY}) as http,
                    streamable_http_client(f"http://127.0.0.1:{port}/mcp",
                                           http_client=http) as (read, write, _),
                    ClientSession(read, write) as session):
            await session.initialize()
            await session.call_tool("register", {"name": f"bench-{i}"})
            await session.call_tool("send_message", {"to": "bench-0", "content": "x"})
            await session.call_tool("read_inbox", {})


def measure(mcp: bool, count: int) -> tuple[int, int | None]:
    root = Path(tempfile.mkdtemp(prefix="meshd-mcp-bench-"))
    port = free_port()
    proc = start(root, port, mcp)
    try:
        wait_healthy(port)
        time.sleep(1.0)  # let start-up work (baseline backup) settle before reading RSS
        idle = worker_rss(proc)
        used = None
        if mcp:
            asyncio.run(sessions(port, count))
            used = worker_rss(proc)
        return idle, used
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    off, _ = measure(False, 0)
    on, used = measure(True, args.sessions)
    mib = 1 << 20
    print(f"worker RSS, mcp off, idle:            {off / mib:7.1f} MiB")
    print(f"worker RSS, mcp on, idle:             {on / mib:7.1f} MiB  (+{(on - off) / mib:.1f})")
    print(f"worker RSS, mcp on, {args.sessions} sessions later: {used / mib:7.1f} MiB")


if __name__ == "__main__":
    main()
