"""Operator routes need the admin key, never the agents' key."""

from __future__ import annotations

import pytest

from meshd.recovery.protocols import PROTOCOLS
from tests.conftest import API_KEY, call

ADMIN = {"X-Admin-Key": "op-secret"}


@pytest.fixture
async def admin_client(make_client):
    return await make_client(headers=None, admin_key="op-secret")


async def test_admin_routes_are_disabled_without_admin_key(client):
    status, body = await call(client, "GET", "/api/admin/protocols")
    assert status == 403 and "admin_key" in body["error"]


async def test_agent_key_is_not_an_admin_key(admin_client):
    status, _ = await call(admin_client, "GET", "/api/admin/protocols",
                           headers={"X-API-Key": API_KEY})
    assert status == 403
    status, _ = await call(admin_client, "GET", "/api/admin/protocols",
                           headers={"X-Admin-Key": "wrong"})
    assert status == 403


async def test_list_and_dry_run(admin_client):
    status, body = await call(admin_client, "GET", "/api/admin/protocols", headers=ADMIN)
    assert status == 200 and list(body["protocols"]) == list(PROTOCOLS)
    status, body = await call(admin_client, "POST",
                              "/api/admin/protocols/database_corruption/run",
                              {"dryRun": True}, headers=ADMIN)
    assert status == 200 and body["dryRun"] is True
    assert [s["state"] for s in body["steps"]] == list(PROTOCOLS["database_corruption"].states[:-1])


async def test_run_needs_a_supervisor_and_a_known_protocol(admin_client):
    status, body = await call(admin_client, "POST", "/api/admin/protocols/nope/run", {},
                              headers=ADMIN)
    assert status == 404
    status, body = await call(admin_client, "POST",
                              "/api/admin/protocols/network_partition/run", {}, headers=ADMIN)
    assert status == 503 and "supervisor" in body["error"]
    status, body = await call(admin_client, "POST",
                              "/api/admin/protocols/network_partition/run",
                              {"context": "x"}, headers=ADMIN)
    assert status == 400
