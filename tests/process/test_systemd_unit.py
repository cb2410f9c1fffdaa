"""systemd/meshd.service: `systemd-analyze verify` accepts it, and it declares what the
supervisor relies on (notify + watchdog, restart on failure, SIGTERM to the supervisor only,
StateDirectory as the data dir) and the sandboxing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "meshd.service"


def systemd_analyze() -> str | None:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    for candidate in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze",
                      "/usr/local/bin/systemd-analyze"):
        if Path(candidate).exists():
            return candidate
    return None


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat), comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_analyze_verify_passes():
    tool = systemd_analyze()
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    done = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_declares_the_supervision_and_sandboxing_settings():
    service = unit_settings(UNIT)["Service"]

    def value(key: str) -> str:
        assert key in service, f"{key}= missing from [Service]"
        return service[key][-1]

    assert value("Type") == "notify"
    assert value("WatchdogSec") not in ("", "0", "infinity")
    assert value("Restart") == "on-failure"
    assert value("KillMode") == "mixed"
    assert value("StateDirectory")
    assert value("ProtectSystem") == "strict"
    assert value("NoNewPrivileges") == "yes"
    assert value("PrivateTmp") == "yes"
    assert "meshd run" in value("ExecStart")
    assert unit_settings(UNIT)["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_passes_the_system_config_file_which_loads():
    """The unit and the operator commands read the same file; the shipped one is valid."""
    from meshd import config

    start = unit_settings(UNIT)["Service"]["ExecStart"][-1]
    assert "--config /etc/meshd/meshd.toml" in start, start
    shipped = UNIT.parent / "meshd.toml"
    settings = config.load({"config": str(shipped)}, environ={})
    assert str(settings.data_dir) == "/var/lib/meshd"
    assert str(settings.backup_dir) == "/var/lib/meshd/backups"
    assert config.system_config({}) == config.SYSTEM_CONFIG


def test_the_installation_dry_run_lists_user_directories_venv_config_and_unit():
    import os

    root = UNIT.parents[1]
    existed = Path("/opt/meshd").exists()
    done = subprocess.run(["make", "-s", "install", "DRY_RUN=1"], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PREFIX": "/opt/meshd"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for expected in ("install -d -m 0750 -o meshd -g meshd /var/lib/meshd /var/lib/meshd/backups",
                     "python3 -m venv /opt/meshd",
                     f"/opt/meshd/bin/pip install --quiet {root}",
                     f"install -m 0644 {root}/systemd/meshd.service "
                     "/etc/systemd/system/meshd.service",
                     "systemctl daemon-reload"):
        assert expected in out, out
    if not Path("/etc/meshd/meshd.toml").exists():
        assert f"{root}/systemd/meshd.toml /etc/meshd/meshd.toml" in out, out
    assert Path("/opt/meshd").exists() == existed  # a dry run creates nothing
