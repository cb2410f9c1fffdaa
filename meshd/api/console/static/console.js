// meshd console: live over /ws (the session cookie authenticates it), panels re-rendered by the
// server on each event, operator actions posted with the session's CSRF token.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const live = document.getElementById("live");
  const outage = document.getElementById("outage");
  let refreshTimer = null;
  let backoff = 500;

  function setLive(state) {
    live.dataset.state = state;
    live.textContent = state;
  }

  async function refresh() {
    refreshTimer = null;
    const resp = await fetch("/console/panels", { credentials: "same-origin" });
    if (resp.status === 401) { window.location.assign("/login"); return; }
    if (!resp.ok) {
      // No worker (crash loop, restore): the supervisor answers 503 with the reason.
      let reason = "meshd answered " + resp.status;
      try { reason = (await resp.json()).error || reason; } catch (e) { /* not JSON */ }
      outage.textContent = reason;
      outage.hidden = false;
      return;
    }
    outage.hidden = true;
    const panels = await resp.json();
    for (const [name, html] of Object.entries(panels)) {
      const node = document.getElementById("panel-" + name);
      if (node) node.innerHTML = html;  // rendered and escaped by the server's templates
    }
    document.body.dataset.refreshed = String(Date.now());
  }

  function scheduleRefresh(delay) {
    if (refreshTimer === null) refreshTimer = setTimeout(refresh, delay);
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + window.location.host + "/ws");
    ws.onopen = function () { backoff = 500; setLive("live"); scheduleRefresh(0); };
    ws.onmessage = function (msg) {
      let event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (event.type !== "connected") scheduleRefresh(150);
    };
    ws.onclose = function () {
      setLive("down");
      scheduleRefresh(0);  // shows why, when meshd answers 503
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  async function act(action, body) {
    const out = document.getElementById("action-result");
    if (out) out.textContent = action + "…";
    const resp = await fetch("/console/actions/" + action, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let answer = {};
    try { answer = await resp.json(); } catch (e) { /* not JSON */ }
    if (out) out.textContent = resp.ok ? action + ": done" : action + ": " + (answer.error || resp.status);
    scheduleRefresh(0);
  }

  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!form.dataset || !form.dataset.action) return;
    ev.preventDefault();
    act(form.dataset.action, Object.fromEntries(new FormData(form).entries()));
  });
  document.addEventListener("click", function (ev) {
    const runId = ev.target.dataset && ev.target.dataset.abort;
    if (runId) act("abort", { runId: runId });
  });

  connect();
  setInterval(function () { scheduleRefresh(0); }, 15000);
})();
