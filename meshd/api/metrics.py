"""GET /metrics: the worker's Prometheus figures (requests by canonical route, WebSocket
clients, agents by health, pending messages, group commit, journal, read-only flag, process)
followed by the supervisor's, fetched over the control socket.

One registry per application (not prometheus-client's global one), so each app built in a test
counts only its own traffic. Figures read from the database are read at scrape time.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshd import log as logging
from meshd.api.console.sessions import current_session
from meshd.api.keys import HUB, SETTINGS, STORAGE, SUPERVISOR
from meshd.api.middleware import AUTH_FAILED, key_matches, presented_key
from meshd.clock import db_time_ago
from meshd.errors import MeshError
from meshd.store import console as console_store
from meshd.store import journal as jr

log = logging.get("meshd.metrics")

HEALTH_STATES = ("healthy", "degraded", "unhealthy", "offline", "unknown")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
UNMATCHED = "unmatched"  # one label for every unknown path: no label per scanned URL


class WorkerMetrics:
    """The worker's registry: request and write-path instruments, and a collector for what is
    read at scrape time (`figures`, refreshed by the handler before each exposition)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("meshd_http_requests", "HTTP requests by canonical route",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("meshd_http_request_duration_seconds",
                                 "HTTP request latency by canonical route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("meshd_group_commit_batch_size",
                                    "Journaled writes per group-commit batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.fsync = Histogram("meshd_journal_fsync_seconds", "Journal fsync latency",
                               buckets=FSYNC_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        # The labelled children by (route, method, status): `labels()` takes a lock and
        # builds a key on every call, once per request; these are looked up in one dict.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.figures: dict[str, Any] = {}
        self.registry.register(_ScrapeCollector(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency (on the event loop)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, writes: int, fsync_seconds: float) -> None:
        """Called on the writer thread (prometheus-client instruments are thread-safe)."""
        self.batch_size.observe(writes)
        self.fsync.observe(fsync_seconds)


class _ScrapeCollector:
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []  # figures appear only once read: nothing to check for clashes up front

    def collect(self):
        app = self.metrics.app
        hub = app[HUB]
        storage = app[STORAGE]
        yield GaugeMetricFamily("meshd_ws_clients", "WebSocket clients connected",
                                value=len(hub.clients))
        yield CounterMetricFamily("meshd_ws_clients_dropped",
                                  "WebSocket clients dropped for a full send buffer",
                                  value=hub.dropped)
        yield GaugeMetricFamily("meshd_read_only", "1 while meshd refuses writes",
                                value=1 if storage.read_only_reason else 0)
        yield GaugeMetricFamily("meshd_journal_seq", "Last journal sequence committed",
                                value=storage.journal_seq)
        yield GaugeMetricFamily("meshd_journal_bytes", "Size of the journal's segment files",
                                value=journal_bytes(storage.journal_dir))
        yield GaugeMetricFamily("meshd_database_bytes", "Size of the database file",
                                value=storage.file_size())
        figures = self.metrics.figures
        if not figures:
            return
        agents = GaugeMetricFamily("meshd_agents", "Agents by health state", labels=["state"])
        for state in HEALTH_STATES:
            agents.add_metric([state], figures["health"].get(state, 0))
        yield agents
        yield GaugeMetricFamily("meshd_messages_pending", "Messages not yet delivered",
                                value=figures["messages_pending"])
        events = GaugeMetricFamily("meshd_catastrophe_events_open",
                                   "Catastrophe events not resolved, by type",
                                   labels=["event_type"])
        for event_type, n in sorted(figures["open_events"].items()):
            events.add_metric([event_type], n)
        yield events


def journal_bytes(directory) -> int:
    """Size of the journal's segments; 0 for a backend without a meshd journal (PostgreSQL:
    `journal_dir` is None)."""
    if directory is None:
        return 0
    total = 0
    for segment in jr.list_segments(directory):
        try:
            total += segment.path.stat().st_size
        except OSError:
            continue  # pruned between listing and stat
    return total


METRICS: web.AppKey[WorkerMetrics] = web.AppKey("metrics", WorkerMetrics)


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def observe(request: web.Request, handler):
    """Count and time every request by its matched route (never the raw path). The WebSocket
    route is left out: its duration is a session's, not a request's."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_label(request)
        if route != "/ws":
            request.app[METRICS].observe_request(route, request.method, status,
                                                 time.perf_counter() - started)


def setup(app: web.Application) -> None:
    metrics = WorkerMetrics(app)
    app[METRICS] = metrics
    if app[STORAGE] is not None:  # an app built only to list its routes has no storage
        app[STORAGE].on_batch = metrics.observe_batch
    app.router.add_routes(routes)


routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics_handler(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.metrics_auth and not (
            key_matches(presented_key(request), settings.api_key)
            or _console_session(request)):
        return web.json_response({"error": AUTH_FAILED}, status=401)
    metrics = request.app[METRICS]
    storage = request.app[STORAGE]
    try:
        metrics.figures = await storage.read(console_store.metric_figures,
                                             db_time_ago(settings.heartbeat_timeout))
    except MeshError as exc:
        metrics.figures = {}
        log.warning("metrics.figures_unreadable", error=exc.message)
    body = generate_latest(metrics.registry)
    supervisor = request.app[SUPERVISOR]
    up = 0
    if supervisor.supervised:
        try:
            body += (await supervisor.text("/control/metrics")).encode()
            up = 1
        except MeshError as exc:
            log.warning("metrics.supervisor_unreachable", error=exc.message)
    body += (b"# HELP meshd_supervisor_scrape_ok 1 when the supervisor's figures are included\n"
             b"# TYPE meshd_supervisor_scrape_ok gauge\n"
             + f"meshd_supervisor_scrape_ok {up}\n".encode())
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _console_session(request: web.Request) -> bool:
    return current_session(request) is not None
