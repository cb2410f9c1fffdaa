"""A mesh with three agents A, B and C, their tokens and something of each (a group, messages,
a file, a skill, an update, a memory key), for the identity tests; built per test with the
auth settings the test names."""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshd import config
from meshd.api.app import make_app
from meshd.worker.serve import open_storage
from tests.conftest import API_KEY, call

ADMIN_KEY = "op-secret"
# The database `open_mesh` uses when no override names one: set per test by `each_backend`.
_backend_database: str | None = None


@pytest.fixture(autouse=True)
def each_backend(pg_database):
    """Imported into a test module, runs its tests on both backends: `open_mesh` then opens
    the test's fresh PostgreSQL database on the `[postgresql]` run."""
    global _backend_database
    _backend_database = pg_database
    yield
    _backend_database = None
SHARED = {"X-API-Key": API_KEY}
ADMIN = {"X-Admin-Key": ADMIN_KEY}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Mesh:
    client: object
    tokens: dict[str, str] = field(default_factory=dict)   # "A"/"B" -> token
    ids: dict[str, str] = field(default_factory=dict)      # "A"/"B" -> agent id
    ctx: dict[str, str] = field(default_factory=dict)      # resource ids

    async def call(self, method: str, path: str, body=None, headers=None):
        return await call(self.client, method, path, body, headers=headers or {})

    def as_(self, who: str) -> dict[str, str]:
        return bearer(self.tokens[who])

    async def register(self, name: str, headers=SHARED) -> dict:
        status, body = await self.call("POST", "/api/agents/register", {"name": name},
                                       headers)
        assert status == 200, body
        return body

    async def ok(self, method: str, path: str, body=None, headers=None) -> dict:
        status, reply = await self.call(method, path, body, headers or SHARED)
        assert status == 200, (method, path, reply)
        return reply


@contextlib.asynccontextmanager
async def open_mesh(aiohttp_client, tmp_path: Path, **overrides):
    """The app on a real database (a SQLite file, or the test's PostgreSQL database under
    `each_backend`) with `overrides` applied to the settings."""
    if _backend_database and "database" not in overrides:
        overrides["database"] = _backend_database
    flags = {"data_dir": str(tmp_path / "data"), "backup_dir": str(tmp_path / "backups"),
             "api_key": API_KEY, "admin_key": ADMIN_KEY, "access_log": "false",
             **{k: str(v) for k, v in overrides.items()}}
    settings = config.load(flags, environ={})
    storage = open_storage(settings)
    await storage.start()
    try:
        yield Mesh(await aiohttp_client(make_app(settings, storage)))
    finally:
        await storage.close()


async def populate(mesh: Mesh) -> Mesh:
    """Agents A, B and C (registered with the shared key, so each gets a token), a group of
    A with A and B, a message from A to B (and a failed one), a file and a memory key of A, a skill of B, an
    update and a catastrophe event. C owns nothing."""
    for who in ("A", "B", "C"):
        reply = await mesh.register(f"agent-{who}")
        mesh.ids[who], mesh.tokens[who] = reply["agentId"], reply["agentToken"]
    a, b = mesh.ids["A"], mesh.ids["B"]
    ctx = mesh.ctx
    ctx["group"] = (await mesh.ok("POST", "/api/groups", {"name": "g", "createdBy": a},
                                  mesh.as_("A")))["groupId"]
    for who in (a, b):
        await mesh.ok("POST", f"/api/groups/{ctx['group']}/members", {"agentId": who})
    ctx["message"] = (await mesh.ok("POST", "/api/messages",
                                    {"from": a, "to": b, "content": "hi"},
                                    mesh.as_("A")))["messageId"]
    ctx["failed"] = (await mesh.ok("POST", "/api/messages",
                                   {"from": a, "to": b, "content": "lost"},
                                   mesh.as_("A")))["messageId"]
    await mesh.ok("PATCH", f"/api/messages/{ctx['failed']}/status", {"status": "failed"},
                  mesh.as_("B"))
    ctx["file"] = (await mesh.ok("POST", "/api/files/upload", {
        "agentId": a, "filename": "f.txt",
        "fileData": base64.b64encode(b"data").decode()}, mesh.as_("A")))["fileId"]
    ctx["skill"] = (await mesh.ok("POST", "/api/skills", {"agentId": b, "name": "s"},
                                  mesh.as_("B")))["skillId"]
    ctx["update"] = (await mesh.ok("POST", "/api/updates", {
        "version": "1.0.0", "updateType": "minor", "title": "t"}))["updateId"]
    await mesh.ok("POST", f"/api/groups/{ctx['group']}/memory",
                  {"agentId": a, "key": "k", "value": 1}, mesh.as_("A"))
    ctx["event"] = (await mesh.ok("POST", "/api/catastrophe", {
        "eventType": "server_down", "severity": "minor", "title": "t"}))["eventId"]
    return mesh
