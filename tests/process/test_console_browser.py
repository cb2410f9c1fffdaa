"""The web console in a real browser (Debian's chromium driven by Playwright) against a real
`meshd run`: log in, see the agents, a catastrophe posted through the API appears without a
reload, a drill's transitions appear in its timeline as they happen, screenshots at desktop
and phone sizes, and a forged CSRF token or a foreign Origin is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess, poll
from tests.process.nodes import pg_cluster, start_nodes  # noqa: F401 - the fixture

pytestmark = pytest.mark.process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN_KEY = "console-op-secret"
ARTIFACTS = Path(os.environ.get("MESHD_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000

playwright_api = pytest.importorskip("playwright.sync_api")


def api(proc: MeshdProcess, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        proc.url + path, method=method, headers=proc.headers,
        data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (make test installs Debian's chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        yield browser
        browser.close()


def test_console_live_in_a_browser(meshd_proc, browser):
    proc = meshd_proc().start(("--access-log", "false", "--admin-key", ADMIN_KEY,
                               "--offline-check-interval", "500ms", "--crash-loop-limit", "1",
                               "--crash-loop-window", "10m"))
    proc.wait_serving()
    agent = api(proc, "POST", "/api/agents/register",
                {"name": "DuckBot", "capabilities": ["search", "<b>bold</b>"]})["agentId"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(proc.url + "/")
    assert page.url.endswith("/login"), "no session: the login page"
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(proc.url + "/")
    row = page.locator(f'#panel-agents tr[data-agent="{agent}"]')
    row.wait_for()
    assert "DuckBot" in row.inner_text()
    assert "<b>bold</b>" in row.inner_text(), "shown as text, not markup"
    page.locator('#live[data-state="live"]').wait_for()
    page.evaluate("window.sameDocument = true")

    # A catastrophe posted through the API appears without a reload.
    event_id = api(proc, "POST", "/api/catastrophe", {
        "eventType": "server_down", "severity": "critical",
        "title": "Browser-visible outage"})["eventId"]
    page.locator(f'#panel-events [data-event-id="{event_id}"]').wait_for()
    assert page.evaluate("window.sameDocument") is True, "the page was not reloaded"

    # A partition drill naming the agent waits for it to come back: its run shows in the
    # timeline, then the agent's heartbeat moves it on to resolved, live.
    page.fill('form[data-action="drill"] input[name="agents"]', agent)
    page.click('form[data-action="drill"] button')
    drill = page.locator('#panel-events .run:has-text("network_partition")')
    drill.locator('li[data-state="recorded"]').wait_for()
    page.screenshot(path=str(ARTIFACTS / "console-desktop.png"), full_page=True)
    # The agent heartbeats as agents do, every half second: the protocol compares second-
    # resolution times, so a heartbeat within the drill's first second does not count yet.
    resolved = drill.locator('li[data-state="resolved"]')
    deadline = time.monotonic() + WAIT_MS / 1000
    while not resolved.count():
        assert time.monotonic() < deadline, "the drill did not resolve after heartbeats"
        api(proc, "POST", f"/api/agents/{agent}/heartbeat", {})
        with contextlib.suppress(playwright_api.TimeoutError):
            resolved.wait_for(timeout=500)
    states = drill.locator("li[data-state]").evaluate_all(
        "nodes => nodes.map(n => n.dataset.state)")
    assert states == ["recorded", "agents_back", "synced", "resolved"], states
    assert drill.get_attribute("data-outcome") == "completed"
    assert page.evaluate("window.sameDocument") is True

    # An operator action through the page's own button (CSRF token and Origin right).
    page.click('form[data-action="backup"] button')
    page.locator("#action-result", has_text="backup: done").wait_for()

    # A drill waiting for an agent that stays away is aborted from its Abort button; the
    # mode buttons switch meshd read-only and back.
    page.fill('form[data-action="drill"] input[name="agents"]', agent)
    page.click('form[data-action="drill"] button')
    waiting = page.locator('#panel-events .run[data-outcome="running"]')
    waiting.locator("button[data-abort]").click()
    page.locator('#panel-events .run[data-outcome="aborted"]').wait_for()
    page.click('form[data-action="mode"]:has(input[value="read-only"]) button')
    page.locator('#panel-service [data-mode="read-only"]').wait_for()
    page.click('form[data-action="mode"]:has(input[value="read-write"]) button')
    page.locator('#panel-service [data-mode="read-write"]').wait_for()

    # A forged CSRF token and a foreign Origin are refused, session cookie or not.
    forged = page.evaluate("""async () => {
        const r = await fetch('/console/actions/backup', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'forged'},
            body: '{}'});
        return [r.status, (await r.json()).error];
    }""")
    assert forged == [403, "CSRF check failed"], forged
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    foreign = context.request.post(proc.url + "/console/actions/backup", data="{}", headers={
        "Content-Type": "application/json", "X-CSRF-Token": token,
        "Origin": "https://evil.example"})
    assert foreign.status == 403 and "cross-origin" in foreign.json()["error"]

    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                has_touch=True, device_scale_factor=2,
                                storage_state=context.storage_state())
    small = phone.new_page()
    small.set_default_timeout(WAIT_MS)
    small.goto(proc.url + "/")
    small.locator(f'#panel-agents tr[data-agent="{agent}"]').wait_for()
    width = small.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    small.screenshot(path=str(ARTIFACTS / "console-phone.png"), full_page=True)
    phone.close()

    # A kill -9 of the worker: the page reconnects, still logged in (sessions are saved), and
    # shows the restart. A second crash is a crash loop: the page says why.
    worker = proc.worker_pid()
    os.kill(worker, signal.SIGKILL)
    page.locator('[data-fact="restarts"]', has_text="1").wait_for()
    page.locator('#live[data-state="live"]').wait_for()
    assert page.url == proc.url + "/"
    os.kill(proc.worker_pid(), signal.SIGKILL)
    page.locator("#outage", has_text="crash loop").wait_for()
    page.screenshot(path=str(ARTIFACTS / "console-crash-loop.png"))
    context.close()
    assert (ARTIFACTS / "console-desktop.png").stat().st_size > 10_000
    assert (ARTIFACTS / "console-phone.png").stat().st_size > 10_000


def test_console_shows_the_nodes_and_which_one_leads(meshd_proc, browser, pg_cluster):  # noqa: F811
    """Two nodes on one PostgreSQL: the follower's console lists both, the leader marked."""
    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        nodes = pool.submit(asyncio.run, start_nodes(meshd_proc, pg_cluster.url("mesh"), 2,
                                                     ["--access-log", "false"])).result()

    def leader_id() -> str | None:
        named = set()
        for node in nodes:
            leaders = [n["node_id"] for n in node.status()["nodes"] if n["leader"]]
            if len(leaders) != 1:
                return None
            named.add(leaders[0])
        return named.pop() if len(named) == 1 else None

    leader = poll(leader_id, 30, "both nodes naming one leader")
    follower = next(n for n in nodes if n.status()["node"]["node_id"] != leader)
    this = follower.status()["node"]["node_id"]

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(follower.url + "/")
    page.fill("#key", follower.key)
    page.click("button[type=submit]")
    page.wait_for_url(follower.url + "/")
    row = page.locator(f'#panel-service tr[data-node="{leader}"][data-state="leader"]')
    row.wait_for()
    assert "leader" in row.inner_text()
    mine = page.locator(f'#panel-service tr[data-node="{this}"]')
    assert "(this node)" in mine.inner_text() and "follower" in mine.inner_text()
    assert f"{this}: follower" in page.locator('[data-fact="node"]').inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-nodes.png"), full_page=True)
    context.close()
