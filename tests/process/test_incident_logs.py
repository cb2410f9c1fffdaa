"""Logs for an incident: a corruption is found by the filter docs/operations.md documents, the
log stays one JSON object per line through a client's malformed HTTP (aiohttp's parser
error), stdlib lines (aiohttp's tracebacks) are JSON with the exception as a field,
successful health probes stay out of the access log, and journald priority prefixes appear
when stderr is the journal."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshd import logroute
from tests.process.harness import clean_env, meshd_cli, poll

pytestmark = pytest.mark.process

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_filters() -> list[str]:
    """The jq programs of the `journalctl ... | jq '...'` lines in docs/operations.md."""
    return re.findall(r"journalctl -u meshd -o cat \| jq '([^']+)'", DOCS.read_text())


def test_the_documented_error_filter_finds_a_corruption_and_logs_stay_json(meshd_proc):
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (apt-get install jq)")
    error_filter = next(f for f in documented_filters() if '"error"' in f)
    proc = meshd_proc()
    proc.start(("--backup-interval", "1h", "--quick-check-interval", "1h",
                "--log-level", "debug"))
    proc.wait_healthy(20)
    proc.wait_serving()

    # A client speaking broken HTTP: aiohttp's parser error, answered and logged as one line.
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\x00\x01\r\n\r\n")
        raw.recv(1024)
    poll(lambda: next((e for e in proc.log_events() if e["event"] == "http.bad_request"), None),
         10, "the line about the bad request")

    # Damage every page after the first, in the database and in its WAL (which holds newer
    # copies of pages); the operator's check finds it.
    for path in (proc.database, Path(f"{proc.database}-wal")):
        size = path.stat().st_size if path.exists() else 0
        if size > 4096:
            with path.open("r+b") as fh:
                fh.seek(4096)
                fh.write(os.urandom(size - 4096))
    done = meshd_cli(proc, "check", "--full", timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr

    lines = proc.log_text().splitlines()
    for line in lines:  # every line, the stdlib ones included, is one JSON object
        assert isinstance(json.loads(line), dict), line
    found = subprocess.run([jq, "-c", error_filter], input="\n".join(lines),
                           capture_output=True, text=True, timeout=30, check=True)
    events = [json.loads(x) for x in found.stdout.splitlines()]
    assert any(e["event"] == "check.failed" for e in events), found.stdout[-2000:]
    assert not any(e["event"] == "check.completed" for e in events)
    # Successful /health probes (one a second from the supervisor) are not access-logged.
    assert not any(e.get("event") == "http.request" and e.get("path") == "/health"
                   and e.get("status") == 200 for e in proc.log_events())


def test_every_documented_filter_parses():
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (apt-get install jq)")
    filters = documented_filters()
    assert len(filters) >= 3
    sample = json.dumps({"event": "http.request", "level": "error", "status": 500})
    for program in filters:
        subprocess.run([jq, "-c", program], input=sample, text=True, capture_output=True,
                       timeout=10, check=True)


def test_journald_prefixes_follow_the_level(tmp_path):
    out = tmp_path / "stderr"
    script = (
        "import os, sys, logging\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from meshd import log\n"
        "log.configure('json', 'info', process='t')\n"
        "log.get('t').error('x.failed')\n"
        "log.get('t').critical('x.catastrophe')\n"
        "log.get('t').info('x.ok')\n"
        "logging.getLogger('aiohttp.server').warning('lib %s', 'line')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    logging.getLogger('aiohttp.web').exception('Error handling request')\n")
    with out.open("w") as err:
        subprocess.run([sys.executable, "-c", script], stderr=err, check=True, timeout=30,
                       env=clean_env())
    lines = out.read_text().splitlines()
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<3>", "<2>", "<6>", "<4>", "<3>"], lines
    assert json.loads(lines[3][3:])["event"] == "lib line"
    # A stdlib traceback is one JSON line with the exception as a field.
    failed = json.loads(lines[4][3:])
    assert failed["logger"] == "aiohttp.web" and "ZeroDivisionError" in failed["exception"]
    assert logroute.PRIORITIES["error"] == 3
