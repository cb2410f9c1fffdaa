"""What an agent token costs a request: latency of GET /api/agents/:id and of
GET /api/messages/:agentId (an agent-scoped route) with the shared key and with the agent's
token, which adds one indexed SQLite read per request (the token's hash).

Run: .venv/bin/python bench/auth_overhead.py [--requests 2000]
In process: the real app on a loopback port and a real SQLite file in a temp dir; one
keep-alive client sends the requests one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd import config  # noqa: E402
from meshd.api.app import make_app  # noqa: E402
from meshd.worker.serve import open_storage  # noqa: E402

KEY = "bench-key"


async def measure(session: aiohttp.ClientSession, url: str, headers: dict, n: int) -> list:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def summary(name: str, latencies: list[float]) -> float:
    ordered = sorted(latencies)
    median = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"  {name:<42} median {median:6.3f} ms   p99 {p99:6.3f} ms")
    return median


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="meshd-auth-bench-") as tmp:
        settings = config.load({"data_dir": f"{tmp}/data", "backup_dir": f"{tmp}/backups",
                                "api_key": KEY, "access_log": "false",
                                "log_level": "warning"}, environ={})
        storage = open_storage(settings)
        await storage.start()
        server = TestServer(make_app(settings, storage), host="127.0.0.1")
        await server.start_server()
        base = str(server.make_url("")).rstrip("/")
        shared = {"X-API-Key": KEY}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(base + "/api/agents/register", json={"name": "b"},
                                        headers=shared) as resp:
                    reply = await resp.json()
                token = {"Authorization": f"Bearer {reply['agentToken']}"}
                routes = {"GET /api/agents/:id": f"/api/agents/{reply['agentId']}",
                          "GET /api/messages/:agentId": f"/api/messages/{reply['agentId']}"}
                print(f"auth_overhead: {requests} sequential requests per case")
                for route, path in routes.items():
                    await measure(session, base + path, shared, 200)  # warm up
                    by_key = summary(f"{route}, shared key",
                                     await measure(session, base + path, shared, requests))
                    by_token = summary(f"{route}, agent token",
                                       await measure(session, base + path, token, requests))
                    print(f"  {route}: the token adds {by_token - by_key:+.3f} ms at the median")
        finally:
            await server.close()
            await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
