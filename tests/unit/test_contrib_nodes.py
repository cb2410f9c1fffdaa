"""contrib/nodes/: the nginx and HAProxy examples of a three-node mesh are accepted by the
real checkers (`nginx -t`, `haproxy -c`) where they are installed, and in any case say what
docs/nodes.md says they do: the same three nodes, the WebSocket upgrade, stickiness and
health checks on /health; the node settings file is valid TOML naming real settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from meshd import config

NODES = Path(__file__).resolve().parents[2] / "contrib" / "nodes"
BACKENDS = ["10.0.0.11:4000", "10.0.0.12:4000", "10.0.0.13:4000"]


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip(f"{name} not installed (apt-get install {name}); structure checked below")
    return found


def test_nginx_accepts_its_example(tmp_path):
    nginx = binary("nginx")
    # Logs go to the test's directory, so the check needs neither root nor /var/log/nginx.
    conf = tmp_path / "nginx.conf"
    conf.write_text((NODES / "nginx.conf").read_text().replace("/var/log/nginx/",
                                                               f"{tmp_path}/"))
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf),
                           "-g", f"pid {tmp_path}/nginx.pid;"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_haproxy_accepts_its_example():
    haproxy = binary("haproxy")
    done = subprocess.run([haproxy, "-c", "-f", str(NODES / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout


def test_nginx_example_upgrades_websockets_sticks_and_balances_three_nodes():
    text = (NODES / "nginx.conf").read_text()
    upstream = re.search(r"upstream meshd \{(.*?)\n    \}", text, re.S).group(1)
    assert re.findall(r"^\s*server (\S+) ", upstream, re.M) == BACKENDS
    assert "hash $remote_addr consistent;" in upstream
    ws = re.search(r"location /ws \{(.*?)\}", text, re.S).group(1)
    for line in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $connection_upgrade;"):
        assert line in ws
    assert "location = /health" in text
    # POSTs must never be re-sent to a second node.
    assert "non_idempotent" not in text


def test_haproxy_example_checks_health_sticks_and_balances_three_nodes():
    text = (NODES / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+) check cookie (\S+)$", text, re.M)
    assert [s[1] for s in servers] == BACKENDS
    assert [s[0] for s in servers] == [s[2] for s in servers]
    assert "http-check send meth GET uri /health" in text
    assert "cookie MESHD_NODE insert" in text
    assert re.search(r"^\s*timeout tunnel ", text, re.M)
    retry_on = re.search(r"^\s*retry-on (.*)$", text, re.M).group(1).split()
    assert retry_on == ["conn-failure"]


def test_the_node_settings_name_real_settings():
    settings = tomllib.loads((NODES / "meshd-node.toml").read_text())
    names = {opt.name for opt in config.OPTIONS}
    assert set(settings) <= names
    assert settings["database"].startswith("postgresql://")
    assert settings["node_address"] == f"http://{BACKENDS[0]}"
