"""The MCP session's pure rules: which hub events change which resource, how a credential is
found, which meshd `meshd mcp` calls, the one-agent binding, and session ownership."""

from __future__ import annotations

import pytest
from mcp.server.fastmcp.exceptions import ToolError

from meshd.config import DEFAULT_API_KEY
from meshd.mcp.backend import MeshApi
from meshd.mcp.credentials import presented_credential
from meshd.mcp.http import SessionOwners
from meshd.mcp.session import CATASTROPHES, INBOX, MeshSession, affected_resources
from meshd.mcp.stdio import DEFAULT_URL, target_from

ME = "agent-a"


@pytest.mark.parametrize(("event", "expected"), [
    ({"type": "catastrophe_alert", "catastrophe": {}}, {CATASTROPHES}),
    ({"type": "new_message", "message": {"to": ME}}, {INBOX}),
    ({"type": "new_message", "message": {"to": "agent-b"}}, set()),
    ({"type": "broadcast", "from": "agent-b"}, {INBOX}),
    ({"type": "broadcast", "from": ME}, set()),
    ({"type": "group_broadcast", "from": "agent-b"}, {INBOX}),
    ({"type": "skill_invoked", "to": ME}, {INBOX}),
    ({"type": "message_retry", "toAgent": ME}, {INBOX}),
    ({"type": "agent_joined", "agent": {}}, set()),
    ({"type": "connected"}, set()),
])
def test_affected_resources(event, expected):
    assert affected_resources(event, ME) == expected


def test_an_unbound_session_hears_only_catastrophes():
    assert affected_resources({"type": "new_message", "message": {"to": ME}}, None) == set()
    assert affected_resources({"type": "catastrophe_alert"}, None) == {CATASTROPHES}


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"x-api-key": " k "}, "k"),
    ({"x-api-key": "k", "authorization": "Bearer mat_t"}, "mat_t"),
    ({"x-api-key": "k", "authorization": "bearer mat_t"}, "k"),
    ({"authorization": "Basic abc"}, None),
    ({"x-api-key": ""}, None),
])
def test_presented_credential(headers, expected):
    assert presented_credential(headers) == expected


def test_target_prefers_the_agent_token_and_defaults_like_the_daemon():
    assert target_from({}) == (type(target_from({}))(DEFAULT_URL, DEFAULT_API_KEY))
    env = {"MESHD_URL": "http://mesh:4000/", "MESHD_API_KEY": "k", "MESHD_AGENT_TOKEN": "mat_x"}
    target = target_from(env)
    assert (target.url, target.credential) == ("http://mesh:4000", "mat_x")
    assert target_from({"AGENT_MESH_API_KEY": "node"}).credential == "node"


async def test_binding_is_to_one_agent():
    session = MeshSession()
    with pytest.raises(ToolError, match="register or resume first"):
        session.act_as()
    session.bind(ME, "a")
    assert session.act_as() == ME and session.act_as(ME) == ME
    with pytest.raises(ToolError, match=f"acts as agent {ME}; it may not act as agent-b"):
        session.act_as("agent-b")
    session.bind(ME, "a")  # resuming the same agent is fine
    with pytest.raises(ToolError, match="already acts as agent"):
        session.bind("agent-b", "b")


async def test_a_registration_token_becomes_the_session_credential():
    session = MeshSession(api=MeshApi("http://127.0.0.1:1", "shared"))
    await session.adopt_token(None)
    assert session.api.credential == "shared"
    await session.adopt_token("mat_abc")
    assert session.api.credential == "mat_abc"
    await session.close()


def test_session_owners_refuse_another_credential_and_stay_bounded():
    owners = SessionOwners(limit=2)
    owners.record("s1", "key")
    assert not owners.refuses("s1", "key")
    assert owners.refuses("s1", "mat_other")
    assert not owners.refuses("unknown", "anything"), "unknown ids are the SDK's 404"
    owners.record("s2", "key")
    owners.record("s3", "key")
    assert not owners.refuses("s1", "mat_other"), "the oldest entry was dropped"
