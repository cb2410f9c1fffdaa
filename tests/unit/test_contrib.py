"""contrib/: promtool accepts the alert rules and their unit tests (each alert fires on the
series meant to fire it), and the Grafana dashboard and the rules name only metric families
that meshd exposes (the worker's, from a real app, and the supervisor's, from a real
Supervisor object)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.supervisor.loop import Supervisor
from meshd.supervisor.metrics import exposition

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "meshd-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "meshd-alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "meshd-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:meshd|process)_[a-z_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (make test installs Debian's prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=RULES.parent)


def test_promtool_accepts_the_rules():
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 rules found" in done.stdout


def test_each_alert_fires_in_promtools_rule_tests():
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def exposed_families(client, settings) -> set[str]:
    worker = await (await client.get("/metrics")).text()
    supervisor = exposition(Supervisor(settings, {})).decode()
    names = set()
    for text in (worker, supervisor):
        for fam in text_string_to_metric_families(text):
            names.add(fam.name)
    return names


async def test_dashboard_and_rules_use_only_exposed_metrics(client, settings):
    exposed = await exposed_families(client, settings)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = {family(n) for e in exprs for n in METRIC_NAME.findall(e)}
    used |= {family(n) for n in METRIC_NAME.findall(RULES.read_text())}
    missing = sorted(used - exposed)
    assert not missing, f"named in contrib/ but never exposed: {missing}"
    assert {"meshd_http_requests", "meshd_backup_age_seconds", "meshd_crash_loop",
            "meshd_protocol_runs", "meshd_agents"} <= used


def test_dashboard_panels_are_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
