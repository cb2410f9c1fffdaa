"""Shared fixtures: a real database (a SQLite file in a temp dir, or a fresh database on a
throwaway PostgreSQL cluster), the real app on a loopback test server.

Tests under tests/api run once per backend (`[sqlite]`, `[postgresql]`) unless marked
`sqlite_only`; elsewhere `backend` is SQLite. One cluster serves the whole session; each test
gets its own database, copied from a migrated template (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from meshd import config
from meshd.api.app import make_app
from meshd.api.keys import HUB
from meshd.worker.serve import open_storage
from tests import pgcluster

API_KEY = "test-key"
AUTH = {"X-API-Key": API_KEY}


BACKENDS = ("sqlite", "postgresql")
BOTH_BACKENDS_UNDER = Path(__file__).parent / "api"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "sqlite_only: the test is about SQLite itself")


def pytest_collection_modifyitems(config, items) -> None:
    """Process tests first (a stable sort): under pytest-xdist (`make test` runs three
    workers, handing each worker one test at a time with `--maxschedchunk 1`) the long ones
    start at once, spread over the workers, and the many short in-process tests fill the gaps,
    instead of one slow daemon test running alone at the end."""
    items.sort(key=lambda item: 0 if "process" in item.path.parts else 1)


def pytest_generate_tests(metafunc) -> None:
    if ("backend" in metafunc.fixturenames
            and Path(metafunc.definition.path).is_relative_to(BOTH_BACKENDS_UNDER)
            and metafunc.definition.get_closest_marker("sqlite_only") is None):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session, with a migrated template database."""
    if pgcluster.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    with pgcluster.throwaway_cluster() as cluster:
        cluster.create_database(pgcluster.TEMPLATE)
        pgcluster.migrate(cluster.url(pgcluster.TEMPLATE))
        yield cluster


@pytest.fixture
def own_pg_cluster():
    """A throwaway PostgreSQL cluster of this test's own, with an empty database `mesh`: one
    the test may stop and start (a crash of the database) without touching the session's."""
    if pgcluster.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    with pgcluster.throwaway_cluster() as cluster:
        cluster.create_database("mesh")
        yield cluster


_database_names = itertools.count(1)


@pytest.fixture
def pg_database(request, backend):
    """A fresh migrated database for one test (None on SQLite)."""
    if backend != "postgresql":
        yield None
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"t{next(_database_names)}"
    url = cluster.clone_template(name)
    yield url
    cluster.drop_database(name)


def make_settings(tmp_path: Path, data: str = "data", **overrides: str) -> config.Settings:
    """Test settings through the real loader (as flags, never the environment), in files
    under `tmp_path`; `overrides` are settings by name, as a flag would give them (a
    `database` override of a postgresql:// URL selects that backend)."""
    flags = {"data_dir": str(tmp_path / data), "backup_dir": str(tmp_path / "backups"),
             "api_key": API_KEY, "access_log": "false", "log_format": "json", **overrides}
    return config.load(flags, environ={})


@pytest.fixture
def settings(tmp_path: Path, pg_database) -> config.Settings:
    return make_settings(tmp_path, **({"database": pg_database} if pg_database else {}))


@pytest.fixture
async def make_client(aiohttp_client, tmp_path: Path, request, backend):
    """A factory of test clients, each on the real app with its own settings and database
    (on PostgreSQL, a fresh database of its own): `await make_client(update_grace="0s")`.
    Sends the API key unless `headers` says otherwise; every store it opened is closed (and
    every PostgreSQL database dropped) at teardown."""
    opened = []
    databases = []
    cluster = request.getfixturevalue("pg_cluster") if backend == "postgresql" else None

    async def make(*, headers: dict[str, str] | None = AUTH, **overrides: str):
        if cluster is not None and "database" not in overrides:
            name = f"t{next(_database_names)}"
            overrides["database"] = cluster.clone_template(name)
            databases.append(name)
        settings = make_settings(tmp_path, f"data-{len(opened) + 1}" if opened else "data",
                                 **overrides)
        store = open_storage(settings)
        await store.start()
        opened.append(store)
        return await aiohttp_client(make_app(settings, store), headers=headers)

    yield make
    for store in opened:
        await store.close()
    for name in databases:
        cluster.drop_database(name)


@pytest.fixture
async def storage(settings):
    store = open_storage(settings)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def app(settings, storage):
    return make_app(settings, storage)


@pytest.fixture
async def client(aiohttp_client, app):
    """A test client that sends the API key on every request."""
    return await aiohttp_client(app, headers=AUTH)


@pytest.fixture
async def anon(aiohttp_client, app):
    """A test client that sends no key."""
    return await aiohttp_client(app)


async def call(client, method: str, path: str, body=None, **kw):
    """(status, parsed JSON) of one request; body is sent as JSON when given."""
    if body is not None and "data" not in kw:
        kw["json"] = body
    resp = await client.request(method, path, **kw)
    text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except json.JSONDecodeError:
        return resp.status, text


async def register(client, name: str, **fields) -> str:
    status, body = await call(client, "POST", "/api/agents/register", {"name": name, **fields})
    assert status == 200, body
    return body["agentId"]


async def ws_connect(client, path: str = "/ws"):
    """A WebSocket client, past its `connected` frame and past the server's whole connect
    sequence (the open events it sends after `connected`, a replay): an event a test makes
    next arrives live, never first as one of the open events read at connect."""
    ws = await client.ws_connect(path)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "connected"
    hub = client.server.app[HUB]
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        mine = [c for c in hub.clients if c.client_id == first["clientId"]]
        if not mine or mine[0].sender is not None:  # refused and gone, or serving
            return ws
        assert asyncio.get_running_loop().time() < deadline, "the connect sequence never ended"
        await asyncio.sleep(0.005)


async def next_event(ws, event_type: str, timeout: float = 5.0) -> dict:
    """The next frame of `event_type`, skipping others; fails after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no {event_type} event within {timeout}s")
        frame = await ws.receive_json(timeout=remaining)
        if frame.get("type") == event_type:
            return frame


async def no_event(ws, event_type: str, wait: float = 0.3) -> None:
    """Assert no frame of `event_type` arrives within `wait` seconds."""
    try:
        while True:
            frame = await ws.receive_json(timeout=wait)
            assert frame.get("type") != event_type, frame
    except TimeoutError:
        return
