"""Throughput and latency of a real meshd: fsync'd writes (POST /api/messages) and reads
(GET /api/agents/:id, GET /api/messages/:agentId) from concurrent keep-alive clients.

Run: .venv/bin/python bench/throughput.py [--seconds 10] [--clients 32]
The load generator is Python too and shares the 2 cores with meshd, so these figures are a
floor, not meshd's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import orjson
from _common import closed_loop, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


async def run_phase(url: str, name: str, make_request, seconds: float, clients: int) -> dict:
    def encoded(n: int, i: int):
        method, path, body = make_request(n, i)
        if body is None:
            return method, path, None, None
        return method, path, orjson.dumps(body), {"Content-Type": "application/json"}

    result = await closed_loop(url, encoded, seconds=seconds, clients=clients,
                               headers={"X-API-Key": KEY})
    return {"phase": name, **result}


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mbench"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "meshd.log").open("w")
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/meshd"), "run", "--port", str(port), "--data-dir",
         str(tmp / "data"), "--backup-dir", str(tmp / "backups"), "--api-key", KEY,
         "--log-format", "json", "--access-log", "false"],
        stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        await wait_healthy(url)
        async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as session:
            ids = []
            for i in range(20):
                async with session.post(url + "/api/agents/register",
                                        json={"name": f"bench-{i}"}) as resp:
                    ids.append((await resp.json())["agentId"])

        def write(n: int, i: int):
            return "POST", "/api/messages", {"from": ids[n % 20], "to": ids[(n + 1) % 20],
                                             "content": f"message {i} from client {n}"}

        def read_agent(n: int, i: int):
            return "GET", f"/api/agents/{ids[(n + i) % 20]}", None

        def read_inbox(n: int, i: int):
            return "GET", f"/api/messages/{ids[(n + i) % 20]}?limit=20", None

        results = []
        for name, fn in (("write POST /api/messages (fsync'd)", write),
                         ("read GET /api/agents/:id", read_agent),
                         ("read GET /api/messages/:agentId?limit=20", read_inbox)):
            results.append(await run_phase(url, name, fn, args.seconds, args.clients))
        print(f"meshd on 127.0.0.1, {args.clients} concurrent keep-alive clients, "
              f"{args.seconds:g} s per phase, {os.cpu_count()} cores shared with the client")
        print(f"{'phase':<44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
        for r in results:
            print(f"{r['phase']:<44}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['max_ms']:>9.1f}{r['errors']:>8}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
