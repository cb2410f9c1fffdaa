"""Failed alert hooks are counted for /metrics (meshd_alert_hook_failures_total), with a real
failing command and a webhook nobody listens on."""

from __future__ import annotations

from meshd import config
from meshd.supervisor import alerts
from tests.process.harness import free_port


async def test_failed_hooks_are_counted(tmp_path):
    before = dict(alerts.FAILURES.by_hook)
    settings = config.load({"data_dir": str(tmp_path), "alert_command": "exit 3",
                            "alert_webhook": f"http://127.0.0.1:{free_port()}/hook",
                            "alert_timeout": "5s"}, environ={})
    await alerts.send(settings, {"type": "test"})
    assert alerts.FAILURES.by_hook["command"] == before["command"] + 1
    assert alerts.FAILURES.by_hook["webhook"] == before["webhook"] + 1
    ok = config.load({"data_dir": str(tmp_path), "alert_command": "cat >/dev/null"},
                     environ={})
    await alerts.send(ok, {"type": "test"})
    assert alerts.FAILURES.by_hook["command"] == before["command"] + 1
