"""The JavaScript outbox (clients/js/mesh-outbox.mjs) run by node against a real meshd: messages
queued while meshd is unreachable are replayed in order once it is back, exactly once, also
when the client crashed after meshd acknowledged but before it recorded the acknowledgment."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess

pytestmark = pytest.mark.process

MODULE = Path(__file__).resolve().parents[2] / "clients" / "js" / "mesh-outbox.mjs"

# Reads one JSON command from argv, prints one JSON result.
DRIVER = """
import { openOutbox } from %(module)s;
const [cmd, url, key, dir, arg] = process.argv.slice(2);
const outbox = openOutbox({ url, apiKey: key, dir, timeoutMs: 2000 });
let result;
if (cmd === 'send') {
  const { from, to, content } = JSON.parse(arg);
  try { result = await outbox.send(from, to, content); }
  catch (error) { result = { error: error.message, status: error.status }; }
} else if (cmd === 'flush') {
  result = await outbox.flush();
} else if (cmd === 'compact') {
  result = { kept: outbox.compact() };
}
result.pending = outbox.pending().length;
console.log(JSON.stringify(result));
"""


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed (make test installs it)")
    return found


def run(node: str, tmp: Path, cmd: str, proc: MeshdProcess, arg: dict | None = None) -> dict:
    driver = tmp / "driver.mjs"
    driver.write_text(DRIVER % {"module": json.dumps(str(MODULE))})
    done = subprocess.run([node, str(driver), cmd, proc.url, proc.key, str(tmp / "outbox"),
                           json.dumps(arg or {})], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def inbox(proc: MeshdProcess, agent: str) -> list[dict]:
    import urllib.request

    request = urllib.request.Request(f"{proc.url}/api/messages/{agent}", headers=proc.headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        rows = json.loads(response.read())
    return sorted(rows, key=lambda row: row["created_at"])


def test_outbox_replays_in_order_exactly_once(node, meshd_proc, tmp_path):
    proc = meshd_proc()  # not started yet: the mesh is unreachable
    for n in range(3):
        sent = run(node, tmp_path, "send", proc,
                   {"from": "js-agent", "to": "peer", "content": f"offline {n}"})
        assert sent["queued"] is True
    assert sent["pending"] == 3

    proc.start()
    proc.wait_healthy()
    flushed = run(node, tmp_path, "flush", proc)
    assert flushed["remaining"] == 0 and flushed["pending"] == 0
    assert [row["content"] for row in inbox(proc, "peer")] == [f"offline {n}" for n in range(3)]

    # A crash after meshd acknowledged but before the client wrote it down: replaying the same
    # clientIds delivers nothing twice.
    outbox_file = tmp_path / "outbox" / "outbox.jsonl"
    lines = outbox_file.read_text().splitlines()
    outbox_file.write_text("".join(line + "\n" for line in lines
                                   if json.loads(line)["op"] == "queued"))
    again = run(node, tmp_path, "flush", proc)
    assert len(again["delivered"]) == 3 and again["pending"] == 0
    assert len(inbox(proc, "peer")) == 3

    # A torn last line is ignored; a message meshd refuses (4xx) is reported and does not
    # block the ones after it.
    with outbox_file.open("a") as out:
        out.write('{"op":"queued","clientId":"torn')
    refused = run(node, tmp_path, "send", proc, {"from": "js-agent", "to": "peer", "content": ""})
    assert refused["status"] == 400 and "required" in refused["error"]
    ok = run(node, tmp_path, "send", proc, {"from": "js-agent", "to": "peer", "content": "after"})
    assert ok["queued"] is False and ok["messageId"]
    assert [row["content"] for row in inbox(proc, "peer")][-1] == "after"
    assert len(inbox(proc, "peer")) == 4
    assert run(node, tmp_path, "compact", proc)["kept"] == 0
