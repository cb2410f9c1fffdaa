"""GET /metrics on the real app: request counts by canonical route (never the raw path), the
write path's histograms, figures read from the database, promtool's approval, metrics_auth."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd import config
from meshd.api.app import make_app
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, call, register, ws_connect


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(client) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return await resp.text()


async def test_metrics_after_traffic(client, anon, backend):
    a = await register(client, "alpha")
    b = await register(client, "beta")
    for i in range(3):
        status, _ = await call(client, "POST", "/api/messages",
                               {"from": a, "to": b, "content": f"m{i}"})
        assert status == 200
    await call(client, "GET", f"/api/agents/{a}")
    await call(client, "GET", "/api/agents/not-a-real-id")
    await call(anon, "GET", "/wp-admin/setup.php")
    await call(client, "POST", f"/api/agents/{a}/health", {"status": "degraded"})
    await call(client, "POST", "/api/catastrophe", {
        "eventType": "network_partition", "severity": "major", "title": "split"})
    ws = await ws_connect(anon)
    text = await scrape(anon)
    await ws.close()
    found = samples(text)
    assert value(found, "meshd_http_requests_total", route="/api/messages", method="POST",
                 status="200") == 3
    assert value(found, "meshd_http_requests_total", route="/api/agents/{id}", method="GET",
                 status="200") == 1
    assert value(found, "meshd_http_requests_total", route="/api/agents/{id}", method="GET",
                 status="404") == 1
    assert value(found, "meshd_http_requests_total", route="unmatched", method="GET",
                 status="404") == 1
    assert not any("wp-admin" in str(k) for k in found), "raw paths never become labels"
    assert value(found, "meshd_http_request_duration_seconds_count", route="/api/messages",
                 method="POST") == 3
    assert value(found, "meshd_messages_pending") == 3
    assert value(found, "meshd_agents", state="degraded") == 1
    assert value(found, "meshd_agents", state="unknown") == 1
    assert value(found, "meshd_catastrophe_events_open", event_type="network_partition") == 1
    assert value(found, "meshd_ws_clients") == 1
    assert value(found, "meshd_ws_clients_dropped_total") == 0
    assert value(found, "meshd_read_only") == 0
    # registers, messages, health and the event: at least 7 journaled writes in batches.
    assert value(found, "meshd_group_commit_batch_size_sum") >= 7
    assert value(found, "meshd_journal_fsync_seconds_count") >= 1
    if backend == "sqlite":
        assert value(found, "meshd_journal_seq") >= 7
        assert value(found, "meshd_journal_bytes") > 0
    else:  # no meshd journal: each COMMIT (the WAL flush) is a batch of one
        assert value(found, "meshd_journal_seq") == 0
        assert value(found, "meshd_journal_bytes") == 0
    assert value(found, "meshd_database_bytes") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert value(found, "meshd_supervisor_scrape_ok") == 0, "unsupervised"


async def test_read_only_flag(client, anon, storage):
    storage.set_read_only("test")
    found = samples(await scrape(anon))
    assert value(found, "meshd_read_only") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_accepts_the_exposition(client, anon):
    await register(client, "alpha")
    text = await scrape(anon)
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    # promtool exits 0 on valid text; lint remarks (if any) are printed, not failures.
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_metrics_auth_requires_the_key(aiohttp_client, tmp_path):
    settings = config.load({"data_dir": str(tmp_path / "data"), "api_key": API_KEY,
                            "metrics_auth": "true", "access_log": "false"}, environ={})
    storage = open_storage(settings)
    await storage.start()
    try:
        anon = await aiohttp_client(make_app(settings, storage))
        status, body = await call(anon, "GET", "/metrics")
        assert status == 401 and body == {"error": "Invalid or missing API key"}
        resp = await anon.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert resp.status == 200 and "meshd_http_requests_total" in await resp.text()
    finally:
        await storage.close()
