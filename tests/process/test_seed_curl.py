"""The seed's curl examples (register, message, heartbeat), run by bash and curl as written
against a real meshd with the default key; only the port and the placeholder ids change."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess

pytestmark = pytest.mark.process

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "enhancement-plan.md"

# enhancement-plan.md, Phase 6, "Share File with Agent", verbatim.
SEND_MESSAGE = r"""curl -X POST http://localhost:4000/api/messages \
  -H "X-API-Key: openclaw-mesh-default-key" \
  -d "{
    \"from\": \"cc5afd10-ca32-4514-85f9-2558c70f2164\",
    \"to\": \"other-agent-id\",
    \"content\": \"Shared file: my-document.pdf (ID: xxx)\"
  }"
"""
# The seed has no register or heartbeat example; these are written the way the seed writes
# its own (JSON in -d, no Content-Type header, so curl sends x-www-form-urlencoded).
REGISTER = r"""curl -X POST http://localhost:4000/api/agents/register \
  -H "X-API-Key: openclaw-mesh-default-key" \
  -d '{"name": "NAME", "endpoint": "http://localhost:5000", "capabilities": ["search"]}'
"""
HEARTBEAT = r"""curl -X POST http://localhost:4000/api/agents/AGENT_ID/heartbeat \
  -H "X-API-Key: openclaw-mesh-default-key"
"""


def seed_block(heading: str) -> str:
    """The body of the first ```bash block after `heading` in the seed, comments dropped."""
    text = SEED.read_text()
    after = text[text.index(heading):]
    block = after[after.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    return "".join(line for line in block.splitlines(keepends=True)
                   if not line.startswith("#"))


def curl(proc: MeshdProcess, script: str, **placeholders: str) -> dict:
    """Run `script` with bash against `proc` and parse what curl printed."""
    script = script.replace("localhost:4000", f"localhost:{proc.port}")
    for placeholder, value in placeholders.items():
        script = script.replace(placeholder, value)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=15)
    assert done.returncode == 0, f"curl exited {done.returncode}: {done.stderr[-500:]}"
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON from {script!r}: {done.stdout[:500]!r}") from None


@pytest.fixture
def default_key_meshd(meshd_proc) -> MeshdProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    proc = meshd_proc(key=None).start(("--access-log", "false"))
    proc.wait_healthy()
    return proc


def test_embedded_message_example_is_the_seeds():
    if not SEED.exists():
        pytest.skip(f"the seed is not at {SEED}")
    assert seed_block("### Share File with Agent") == SEND_MESSAGE


def test_seed_register_message_and_heartbeat_work_as_written(default_key_meshd):
    proc = default_key_meshd

    sender = curl(proc, REGISTER, NAME="seed-sender")
    assert sender["success"] is True and sender["existed"] is False, sender
    receiver = curl(proc, REGISTER, NAME="seed-receiver")
    assert receiver["success"] is True, receiver
    again = curl(proc, REGISTER, NAME="seed-sender")
    assert again["agentId"] == sender["agentId"] and again["existed"] is True, again

    sent = curl(proc, SEND_MESSAGE, **{
        "cc5afd10-ca32-4514-85f9-2558c70f2164": sender["agentId"],
        "other-agent-id": receiver["agentId"],
    })
    assert sent.get("success") is True, sent
    assert sent["message"]["content"] == "Shared file: my-document.pdf (ID: xxx)"
    assert sent["message"]["from"] == sender["agentId"]
    assert sent["message"]["to"] == receiver["agentId"]

    inbox = curl(proc, "curl http://localhost:4000/api/messages/AGENT_ID "
                       "-H 'X-API-Key: openclaw-mesh-default-key'",
                 AGENT_ID=receiver["agentId"])
    assert [m["id"] for m in inbox] == [sent["messageId"]], inbox

    beat = curl(proc, HEARTBEAT, AGENT_ID=sender["agentId"])
    assert beat.get("success") is True, beat
