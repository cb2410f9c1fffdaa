"""The dashboard and the agent list come from snapshots encoded once per change: served as is
while nothing they read was written, rebuilt after any write (through any route or job) and,
for the dashboard, when an agent crosses the heartbeat timeout with no write at all."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from meshd import config
from meshd.api import snapshots as snapshot_module
from meshd.api.app import make_app
from meshd.api.keys import SETTINGS
from meshd.api.snapshots import SNAPSHOTS
from meshd.store import health as health_store
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, AUTH, call, register

DASHBOARD = "/api/health/dashboard"


def snapshots(client):
    return client.server.app[SNAPSHOTS]


async def test_dashboard_is_built_once_per_change(client, storage):
    agent = await register(client, "One")
    first = await call(client, "GET", DASHBOARD)
    builds = snapshots(client).dashboard.builds
    for _ in range(3):
        assert await call(client, "GET", DASHBOARD) == first
    assert snapshots(client).dashboard.builds == builds

    # A heartbeat with metrics: the next dashboard shows it.
    await call(client, "POST", f"/api/agents/{agent}/heartbeat", {"cpuUsage": 33})
    _, body = await call(client, "GET", DASHBOARD)
    assert body["agentList"][0]["cpuUsage"] == 33 and body["healthy"] == 1
    assert snapshots(client).dashboard.builds == builds + 1

    # A catastrophe (another table the dashboard reads).
    await call(client, "POST", "/api/catastrophe",
               {"eventType": "api_crash", "severity": "critical", "title": "boom"})
    _, body = await call(client, "GET", DASHBOARD)
    assert body["criticalEvents"] == 1 and body["lastCatastrophe"]["title"] == "boom"

    # A write the dashboard does not read leaves the snapshot alone.
    builds = snapshots(client).dashboard.builds
    other = await register(client, "Two")
    builds += 1  # (that was an agent: rebuilt once)
    await call(client, "GET", DASHBOARD)
    await call(client, "POST", "/api/messages", {"from": agent, "to": other, "content": "hi"})
    _, body = await call(client, "GET", DASHBOARD)
    assert body["totalAgents"] == 2
    assert snapshots(client).dashboard.builds == builds

    # Each page is its own snapshot.
    _, page = await call(client, "GET", DASHBOARD + "?limit=1&offset=1")
    assert [a["name"] for a in page["agentList"]] == [body["agentList"][1]["name"]]
    assert page["totalAgents"] == 2


async def test_a_job_write_reaches_the_dashboard(client, storage):
    """Writes that bypass the HTTP routes (the offline job) invalidate too."""
    agent = await register(client, "Quiet")
    await call(client, "POST", f"/api/agents/{agent}/health", {"status": "healthy"})
    assert (await call(client, "GET", DASHBOARD))[1]["healthy"] == 1
    future = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 3600))
    await storage.write(health_store.mark_offline, future, future)
    _, body = await call(client, "GET", DASHBOARD)
    assert body["agentList"][0]["status"] == "offline" and body["offline"] == 1


async def test_concurrent_requests_share_one_build(client):
    for i in range(5):
        await register(client, f"A{i}")
    before = snapshots(client).dashboard.builds
    results = await asyncio.gather(*(call(client, "GET", DASHBOARD) for _ in range(8)))
    assert all(r == results[0] for r in results) and results[0][1]["totalAgents"] == 5
    assert snapshots(client).dashboard.builds == before + 1


async def test_dashboard_follows_the_clock(aiohttp_client, tmp_path: Path):
    """An agent going silent past the timeout changes the dashboard with no write at all."""
    settings = config.load(
        {"data_dir": str(tmp_path / "data"), "backup_dir": str(tmp_path / "backups"),
         "api_key": API_KEY, "access_log": "false", "log_format": "json",
         "heartbeat_timeout": "1s"},
        environ={},
    )
    storage = open_storage(settings)
    await storage.start()
    try:
        client = await aiohttp_client(make_app(settings, storage), headers=AUTH)
        await register(client, "Fleeting")
        _, body = await call(client, "GET", DASHBOARD)
        assert body["unknown"] == 1 and body["offline"] == 0
        version = storage.versions.of(("agents", "agent_health_status", "catastrophe_events"))
        deadline = time.monotonic() + 10
        while body["offline"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            _, body = await call(client, "GET", DASHBOARD)
        assert body["offline"] == 1 and body["agentList"][0]["status"] == "offline"
        assert storage.versions.of(
            ("agents", "agent_health_status", "catastrophe_events")) == version
    finally:
        await storage.close()


async def test_agent_list_is_built_once_per_change(client):
    first = await register(client, "First")
    _, listed = await call(client, "GET", "/api/agents")
    builds = snapshots(client).agents.builds
    assert (await call(client, "GET", "/api/agents"))[1] == listed
    assert snapshots(client).agents.builds == builds
    second = await register(client, "Second")
    _, listed = await call(client, "GET", "/api/agents")
    assert {a["id"] for a in listed} == {first, second}
    # A heartbeat moves last_seen, so the order (newest first) may change: rebuilt.
    await call(client, "POST", f"/api/agents/{first}/heartbeat", {})
    await call(client, "GET", "/api/agents")
    assert snapshots(client).agents.builds == builds + 2
    _, page = await call(client, "GET", "/api/agents?limit=1")
    assert len(page) == 1


# -- large snapshots gzipped for the clients that ask --------------------------------------


async def raw_get(client, path: str, accept: str | None) -> tuple[dict, bytes]:
    """Headers and undecoded body bytes, with exactly the Accept-Encoding given (None: no
    such header at all; aiohttp would otherwise add its own)."""
    headers = {**AUTH, **({"Accept-Encoding": accept} if accept is not None else {})}
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.get(
            client.make_url(path), headers=headers,
            skip_auto_headers=() if accept is not None else ("Accept-Encoding",)) as resp:
        assert resp.status == 200
        return dict(resp.headers), await resp.read()


@pytest.mark.parametrize("path", [DASHBOARD, "/api/agents"])
async def test_a_large_snapshot_is_gzipped_once_for_clients_that_ask(make_client, path):
    client = await make_client(gzip_min_size="1")  # every body counts as large
    for i in range(3):
        await register(client, f"Z{i}")
    kind = snapshots(client).dashboard if path == DASHBOARD else snapshots(client).agents
    plain_headers, plain = await raw_get(client, path, None)
    assert "Content-Encoding" not in plain_headers
    assert plain_headers["Vary"] == "Accept-Encoding"
    assert int(plain_headers["Content-Length"]) == len(plain)
    compressions = kind.compressions
    for accept in ("gzip, deflate", "br;q=1, gzip;q=0.5", "*", "x-gzip"):
        headers, body = await raw_get(client, path, accept)
        assert headers["Content-Encoding"] == "gzip", accept
        assert headers["Vary"] == "Accept-Encoding"
        assert int(headers["Content-Length"]) == len(body) < len(plain)
        assert orjson.loads(gzip.decompress(body)) == orjson.loads(plain)
    assert kind.compressions == compressions + 1  # compressed once for all four
    for accept in ("identity", "gzip;q=0", "deflate", "*;q=0", "gzip;q=0, *"):
        headers, body = await raw_get(client, path, accept)
        assert "Content-Encoding" not in headers, accept
        assert body == plain
    # A write makes a new snapshot, compressed again when asked.
    await register(client, "Z3")
    headers, body = await raw_get(client, path, "gzip")
    fresh = orjson.loads(gzip.decompress(body))
    assert len(fresh["agentList"] if path == DASHBOARD else fresh) == 4
    assert kind.compressions == compressions + 2


async def test_a_snapshot_below_gzip_min_size_is_sent_as_it_is(make_client):
    default = await make_client()  # 0 by default: the Node server's identity bodies
    assert default.server.app[SETTINGS].gzip_min_size == 0
    above = await make_client(gzip_min_size="1MiB")  # a small body stays as it is
    off = await make_client(gzip_min_size="0")  # 0: never, however large
    for mesh in (default, above, off):
        await register(mesh, "Small")
        headers, body = await raw_get(mesh, DASHBOARD, "gzip")
        assert "Content-Encoding" not in headers and "Vary" not in headers
        assert orjson.loads(body)["totalAgents"] == 1
    assert snapshots(off).dashboard.compressions == 0


async def test_vary_names_both_encoding_and_origin(make_client):
    mesh = await make_client(cors_origins="https://ui.example", gzip_min_size="1")
    await register(mesh, "V")
    headers, _ = await raw_get(mesh, DASHBOARD, "gzip")
    assert headers["Vary"] == "Accept-Encoding, Origin"


@pytest.mark.parametrize(("header", "expected"), [
    (None, False), ("", False), ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.1", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*", True), ("*;q=0", False),
    ("identity", False), ("gzip;q=0, *;q=1", False), ("br, *;q=0.2", True),
    ("gzip;q=bogus", False),
])
def test_accept_encoding(header, expected):
    assert snapshot_module.accepts_gzip(header) is expected
