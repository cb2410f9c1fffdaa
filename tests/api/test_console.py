"""The web console on the real app: login with a key (HttpOnly, SameSite=Strict session cookie
holding no key), redirects without a session, escaping, CSRF and Origin checks on actions and
logout, and /ws accepting the session cookie from meshd's own pages only."""

from __future__ import annotations

import re

import aiohttp
import pytest

from meshd import config
from meshd.api.console.sessions import COOKIE
from tests.conftest import API_KEY, call, register

ADMIN_KEY = "op-secret"


@pytest.fixture
def settings(tmp_path):
    return config.load({"data_dir": str(tmp_path / "data"),
                        "backup_dir": str(tmp_path / "backups"), "api_key": API_KEY,
                        "admin_key": ADMIN_KEY, "access_log": "false", "ws_auth": "true",
                        "update_grace": "0s"},
                       environ={})


@pytest.fixture
async def browser(aiohttp_client, app):
    """A client without any key: it acts as a browser would, with a cookie jar."""
    return await aiohttp_client(app)


def origin(client) -> dict[str, str]:
    return {"Origin": str(client.make_url("")).rstrip("/")}


async def login(client, key: str) -> aiohttp.ClientResponse:
    return await client.post("/login", data={"key": key}, headers=origin(client),
                             allow_redirects=False)


async def csrf_of(client) -> str:
    resp = await client.get("/")
    assert resp.status == 200
    html = await resp.text()
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


async def test_pages_redirect_to_login_and_api_stays_401_json(browser):
    resp = await browser.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp = await browser.get("/docs", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    status, body = await call(browser, "GET", "/api/agents")
    assert status == 401 and body == {"error": "Invalid or missing API key"}
    status, body = await call(browser, "GET", "/console/panels")
    assert status == 401 and "log in" in body["error"]
    resp = await browser.get("/login")
    assert resp.status == 200 and 'name="key"' in await resp.text()


async def test_login_sets_a_strict_httponly_cookie_that_is_not_the_key(browser):
    resp = await login(browser, API_KEY)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert API_KEY not in cookie and ADMIN_KEY not in cookie
    page = await browser.get("/")
    assert page.status == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert API_KEY not in await page.text()


async def test_a_wrong_key_or_a_foreign_origin_opens_no_session(browser):
    resp = await login(browser, "wrong")
    assert resp.status == 401 and "not valid" in await resp.text()
    resp = await browser.post("/login", data={"key": API_KEY}, allow_redirects=False,
                              headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    resp = await browser.post("/login", data={"key": API_KEY}, allow_redirects=False)
    assert resp.status == 403, "no Origin nor Referer: refused"
    resp = await browser.get("/", allow_redirects=False)
    assert resp.status == 303


async def test_failed_logins_are_throttled_per_address(browser):
    for _ in range(10):
        assert (await login(browser, "guess")).status == 401
    resp = await login(browser, API_KEY)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert "Too many failed logins" in await resp.text()
    assert (await browser.get("/", allow_redirects=False)).status == 303


async def test_everything_shown_is_escaped(client, browser):
    await register(client, "<script>alert(1)</script>",
                   capabilities=["<img src=x onerror=alert(2)>"])
    await login(browser, API_KEY)
    html = await (await browser.get("/")).text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    status, panels = await call(browser, "GET", "/console/panels")
    assert status == 200
    assert "&lt;script&gt;" in panels["agents"] and "<script>" not in panels["agents"]


async def test_panels_show_agents_events_and_the_service(client, browser):
    agent = await register(client, "DuckBot", capabilities=["search", "summarize"])
    status, _ = await call(client, "POST", "/api/catastrophe", {
        "eventType": "server_down", "severity": "critical", "title": "Rack on fire"})
    assert status == 200
    await login(browser, API_KEY)
    status, panels = await call(browser, "GET", "/console/panels")
    assert status == 200
    assert f'data-agent="{agent}"' in panels["agents"] and "summarize" in panels["agents"]
    assert "Rack on fire" in panels["events"]
    assert 'data-mode="read-write"' in panels["service"]
    assert 'data-health="unknown">1<' in panels["health"]


async def test_updates_with_adoption_and_the_minimum_version_in_force(client, browser):
    agent = await register(client, "old-timer")
    status, body = await call(client, "POST", "/api/updates", {
        "version": "2.0.0", "updateType": "protocol", "title": "Frames v2",
        "breakingChange": True, "requiredVersion": "2.0.0"})
    assert status == 200, body
    update = body["updateId"]
    status, _ = await call(client, "POST", f"/api/updates/{update}/acknowledge",
                           {"agentId": agent, "status": "accepted", "agentVersion": "2.0.0"})
    assert status == 200
    await login(browser, API_KEY)
    status, panels = await call(browser, "GET", "/console/panels")
    assert status == 200
    assert f'data-update="{update}"' in panels["updates"]
    assert "1 / 1 active" in panels["updates"]
    assert "2.0.0 (update " + update in panels["service"]


async def test_viewer_sessions_cannot_act_and_admin_actions_need_csrf_and_origin(browser):
    await login(browser, API_KEY)
    token = await csrf_of(browser)
    status, body = await call(browser, "POST", "/console/actions/backup", {},
                              headers={"X-CSRF-Token": token, **origin(browser)})
    assert status == 403 and "admin key" in body["error"]

    browser.session.cookie_jar.clear()
    await login(browser, ADMIN_KEY)
    token = await csrf_of(browser)
    status, body = await call(browser, "POST", "/console/actions/backup", {},
                              headers={"X-CSRF-Token": "forged", **origin(browser)})
    assert status == 403 and body["error"] == "CSRF check failed"
    status, body = await call(browser, "POST", "/console/actions/backup", {},
                              headers={"X-CSRF-Token": token})
    assert status == 403 and "cross-origin" in body["error"]
    status, body = await call(browser, "POST", "/console/actions/backup", {},
                              headers={"X-CSRF-Token": token,
                                       "Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]
    status, body = await call(browser, "POST", "/console/actions/mode", {"mode": "sideways"},
                              headers={"X-CSRF-Token": token, **origin(browser)})
    assert status == 400 and "mode must be" in body["error"]
    status, body = await call(browser, "POST", "/console/actions/explode", {},
                              headers={"X-CSRF-Token": token, **origin(browser)})
    assert status == 404
    # Checks passed: unsupervised, the supervisor cannot be reached (a JSON 503, no 500).
    status, body = await call(browser, "POST", "/console/actions/backup", {},
                              headers={"X-CSRF-Token": token, **origin(browser)})
    assert status == 503 and "supervisor" in body["error"]


async def test_logout_needs_the_csrf_token_and_ends_the_session(browser):
    await login(browser, API_KEY)
    token = await csrf_of(browser)
    resp = await browser.post("/logout", data={"csrf": "forged"}, headers=origin(browser),
                              allow_redirects=False)
    assert resp.status == 403
    assert (await browser.get("/", allow_redirects=False)).status == 200
    resp = await browser.post("/logout", data={"csrf": token}, headers=origin(browser),
                              allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert (await browser.get("/", allow_redirects=False)).status == 303


async def test_a_stolen_session_id_dies_with_logout(browser, aiohttp_client, app):
    await login(browser, API_KEY)
    sid = next(c.value for c in browser.session.cookie_jar if c.key == COOKIE)
    token = await csrf_of(browser)
    await browser.post("/logout", data={"csrf": token}, headers=origin(browser))
    other = await aiohttp_client(app, cookies={COOKIE: sid})
    assert (await other.get("/", allow_redirects=False)).status == 303


async def test_ws_takes_the_session_cookie_from_its_own_origin_only(browser):
    # ws_auth is on: no key and no session is refused.
    resp = await browser.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                             "Sec-WebSocket-Version": "13"})
    assert resp.status == 401
    await login(browser, API_KEY)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await browser.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    ws = await browser.ws_connect("/ws", headers=origin(browser))
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "connected"
    await ws.close()


async def test_docs_serve_swagger_ui_and_the_document_to_a_session(browser):
    assert (await browser.get("/docs/openapi.json")).status == 401
    await login(browser, API_KEY)
    page = await browser.get("/docs")
    assert page.status == 200 and "/docs/static/swagger-ui-bundle.js" in await page.text()
    script = await browser.get("/docs/static/swagger-ui-bundle.js")
    assert script.status == 200 and len(await script.read()) > 100_000
    status, doc = await call(browser, "GET", "/docs/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for bad in ("..%2F..%2Fpyproject.toml", ".hidden", "missing.js"):
        status, body = await call(browser, "GET", f"/docs/static/{bad}")
        assert status == 404 and "error" in body
    css = await browser.get("/console/static/console.css")
    assert css.status == 200 and "prefers-color-scheme: dark" in await css.text()
