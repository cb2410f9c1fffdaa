"""The seed's curl examples (register, message, heartbeat, the update announcement of phase 5,
the file upload and download of phase 6), run by bash, curl and jq as written against a real
meshd with the default key; only the port and the placeholder ids change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.process.harness import MeshdProcess

pytestmark = pytest.mark.process

# A copy kept in the repository, so a clean clone runs every example; when the project's
# shared/ folder is beside the checkout, a test keeps the copy equal to the original.
SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed" / "enhancement-plan.md"
SHARED_SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "enhancement-plan.md"

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


# Phase 5, "Admin creates update" (indented in the seed's list), verbatim.
CREATE_UPDATE = r"""curl -X POST http://localhost:4000/api/updates \
  -H "X-API-Key: openclaw-mesh-default-key" \
  -d '{
    "version": "2.0.0",
    "updateType": "api",
    "title": "New File Transfer Features",
    "description": "Agents can now share files across the mesh",
    "breakingChange": false,
    "announcement": "# File Transfer Support\n\nAgents can now upload and download files..."
  }'
"""
# Phase 6, "Upload File" and "Download File", verbatim.
UPLOAD = r"""FILE_DATA=$(base64 -w 0 my-document.pdf)

curl -X POST http://localhost:4000/api/files/upload \
  -H "X-API-Key: openclaw-mesh-default-key" \
  -H "Content-Type: application/json" \
  -d "{
    \"agentId\": \"cc5afd10-ca32-4514-85f9-2558c70f2164\",
    \"filename\": \"my-document.pdf\",
    \"fileType\": \"application/pdf\",
    \"fileData\": \"$FILE_DATA\",
    \"description\": \"Research document for agent collaboration\"
  }"
"""
DOWNLOAD = r"""curl http://localhost:4000/api/files/xxx \
  -H "X-API-Key: openclaw-mesh-default-key" | \
  jq -r '.fileData' | base64 -d > downloaded-file.pdf
"""


def seed_block(heading: str) -> str:
    """The body of the first ```bash block after `heading` in the seed, comments dropped."""
    text = SEED.read_text()
    after = text[text.index(heading):]
    block = after[after.index("```bash\n") + len("```bash\n"):]
    block = textwrap.dedent(block[:block.index("```")])  # a block inside a list is indented
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


def test_fixture_copy_is_the_seed():
    if not SHARED_SEED.exists():
        pytest.skip(f"no shared/ beside this checkout ({SHARED_SEED}) to compare the copy with")
    assert SEED.read_text() == SHARED_SEED.read_text()


def test_embedded_examples_are_the_seeds():
    assert seed_block("### Share File with Agent") == SEND_MESSAGE
    assert seed_block("**Admin creates update:**") == CREATE_UPDATE
    assert seed_block("### Upload File").strip() == UPLOAD.strip()
    assert seed_block("### Download File") == DOWNLOAD


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


def test_seed_update_and_file_workflows_work_as_written(default_key_meshd, tmp_path):
    """Phase 5: announce an update (curl -d with no Content-Type). Phase 6: upload a file as
    base64 and download it with jq and base64 -d, byte-identical."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    proc = default_key_meshd
    created = curl(proc, CREATE_UPDATE)
    assert created == {"success": True, "updateId": created["updateId"], "broadcast": True,
                       "message": "System update created and broadcasted"}
    updates = curl(proc, "curl http://localhost:4000/api/updates "
                         "-H 'X-API-Key: openclaw-mesh-default-key'")
    assert updates[0]["title"] == "New File Transfer Features"

    owner = curl(proc, REGISTER, NAME="seed-owner")["agentId"]
    document = os.urandom(50_000)
    (tmp_path / "my-document.pdf").write_bytes(document)
    env = {**os.environ, "PORT": str(proc.port)}

    def run(script: str) -> str:
        script = script.replace("localhost:4000", f"localhost:{proc.port}")
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-500:]
        return done.stdout

    uploaded = json.loads(run(UPLOAD.replace("cc5afd10-ca32-4514-85f9-2558c70f2164", owner)))
    assert uploaded["success"] is True and uploaded["fileSize"] == len(document), uploaded
    run(DOWNLOAD.replace("/api/files/xxx", f"/api/files/{uploaded['fileId']}"))
    assert (tmp_path / "downloaded-file.pdf").read_bytes() == document
