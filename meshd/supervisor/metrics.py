"""The supervisor's Prometheus figures: restarts, crash-loop state, backups, integrity checks,
protocol runs and alert-hook failures, read from the Supervisor at scrape time.

The worker fetches this text over the control socket and appends it to its own /metrics;
while no worker runs, the supervisor's fallback app serves it on the API port itself.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshd.credentials import key_matches, presented_key
from meshd.recovery.protocols import PROTOCOLS
from meshd.supervisor import alerts
from meshd.supervisor.maintenance import last_backup

if TYPE_CHECKING:
    from meshd.supervisor.loop import Supervisor

CHECK_KINDS = ("quick_check", "integrity_check")
OUTCOMES = ("running", "completed", "failed", "aborted")


class SupervisorCollector:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self):
        yield from self._process()
        yield from self._backups()
        yield from self._checks()
        yield from self._protocols()
        failures = CounterMetricFamily("meshd_alert_hook_failures",
                                       "Alert hook calls that failed or timed out",
                                       labels=["hook"])
        for hook, n in alerts.FAILURES.by_hook.items():
            failures.add_metric([hook], n)
        yield failures

    def _process(self):
        sup = self.sup
        from meshd.supervisor.loop import State  # the loop imports this module's users

        yield GaugeMetricFamily("meshd_supervisor_uptime_seconds",
                                "Seconds since the supervisor started",
                                value=time.monotonic() - sup.started_at)
        state = GaugeMetricFamily("meshd_supervisor_state",
                                  "1 for the supervisor's current state", labels=["state"])
        for s in State:
            state.add_metric([str(s)], 1 if sup.state == s else 0)
        yield state
        yield CounterMetricFamily("meshd_worker_restarts",
                                  "Worker restarts after a crash or a hang",
                                  value=sup.restarts.restarts)
        yield GaugeMetricFamily("meshd_crash_loop",
                                "1 while restarting is stopped by a crash loop",
                                value=1 if sup.state == State.CRASH_LOOP else 0)
        worker = sup.worker
        yield GaugeMetricFamily("meshd_worker_up", "1 while a worker answers its probes",
                                value=1 if worker and worker.healthy_at else 0)
        yield GaugeMetricFamily("meshd_leader",
                                "1 while this node leads the mesh and runs its once-per-mesh "
                                "duties (always 1 on SQLite)", value=1 if sup.leads else 0)
        yield GaugeMetricFamily("meshd_supervisor_pending_records",
                                "Events and run records waiting for a worker to store them",
                                value=len(sup.outbox))

    def _backups(self):
        """Every family is declared even before the first backup (no sample then), so
        dashboards and rules find their metadata from the start."""
        m = self.sup.maintenance
        newest = last_backup(self.sup.settings.backup_dir)
        age = GaugeMetricFamily("meshd_backup_age_seconds", "Age of the newest backup")
        size = GaugeMetricFamily("meshd_backup_size_bytes", "Size of the newest backup")
        verified = GaugeMetricFamily("meshd_backup_verified",
                                     "1 when the newest backup passed verification")
        if newest:
            age.add_metric([], newest["age_s"])
            size.add_metric([], newest["size"])
            verified.add_metric([], 1 if newest["verified"] else 0)
        duration = GaugeMetricFamily("meshd_backup_duration_seconds",
                                     "Duration of the latest backup attempt")
        success = GaugeMetricFamily("meshd_backup_last_success",
                                    "1 when the latest backup attempt succeeded")
        attempted = GaugeMetricFamily("meshd_backup_last_attempt_timestamp_seconds",
                                      "Unix time of the latest backup attempt")
        run = m.last_backup_run
        if run:
            duration.add_metric([], run["seconds"])
            success.add_metric([], 1 if run["ok"] else 0)
            attempted.add_metric([], run["at"])
        yield from (age, size, verified, duration, success, attempted)
        total = CounterMetricFamily("meshd_backups", "Backup attempts by result",
                                    labels=["result"])
        for result in ("success", "failure"):
            total.add_metric([result], m.backup_runs[result])
        yield total

    def _checks(self):
        m = self.sup.maintenance
        ok = GaugeMetricFamily("meshd_integrity_check_ok",
                               "1 when the latest check of the kind found no problem",
                               labels=["kind"])
        when = GaugeMetricFamily("meshd_integrity_check_timestamp_seconds",
                                 "Unix time of the latest check of the kind", labels=["kind"])
        for kind, check in m.last_checks.items():
            ok.add_metric([kind], 1 if check["ok"] else 0)
            when.add_metric([kind], check["at_epoch"])
        yield ok
        yield when
        total = CounterMetricFamily("meshd_integrity_checks", "Checks by kind and result",
                                    labels=["kind", "result"])
        for kind in CHECK_KINDS:
            for passed in (True, False):
                total.add_metric([kind, "ok" if passed else "failed"],
                                 m.check_runs[(kind, passed)])
        yield total

    def _protocols(self):
        runs = list(self.sup.engine.runs.values())
        counts = Counter((r.protocol, r.outcome) for r in runs)
        by_outcome = GaugeMetricFamily("meshd_protocol_runs",
                                       "Protocol runs known to the supervisor, by outcome",
                                       labels=["protocol", "outcome"])
        for name in PROTOCOLS:
            for outcome in OUTCOMES:
                by_outcome.add_metric([name, outcome], counts[(name, outcome)])
        yield by_outcome
        active = GaugeMetricFamily("meshd_protocol_run_state",
                                   "1 for each running protocol run's current state",
                                   labels=["protocol", "state"])
        for run in runs:
            if run.outcome == "running":
                active.add_metric([run.protocol, run.state], 1)
        yield active


def exposition(sup: Supervisor) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(sup))
    return generate_latest(registry)


def metrics_response(sup: Supervisor) -> web.Response:
    response = web.Response(body=exposition(sup))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def fallback_handler(sup: Supervisor):
    """GET /metrics on the API port while no worker runs (crash loop, restore): the
    supervisor's own figures, behind the API key when metrics_auth is set."""

    async def handler(request: web.Request) -> web.Response:
        settings = sup.settings
        if settings.metrics_auth and not key_matches(presented_key(request), settings.api_key):
            return web.json_response({"error": "Invalid or missing API key"}, status=401)
        return metrics_response(sup)

    return handler
