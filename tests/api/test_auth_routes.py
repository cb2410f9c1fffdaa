"""With agent_auth=required, every route of the router behaves as its rule in api/auth.py
says: agent-scoped routes refuse another agent's token and the shared key and accept the
agent's own token; mesh-wide routes take the shared key or any token; operator routes only
the admin key. A route added without a rule, or an agent-scoped one without a case here,
fails this module."""

from __future__ import annotations

import base64

import pytest

from meshd import config
from meshd.api import auth
from meshd.api.app import make_app
from meshd.api.openapi import DOCUMENT
from tests.api.authkit import (
    ADMIN,
    SHARED,
    Mesh,
    each_backend,  # noqa: F401 - runs this module on both backends
    open_mesh,
    populate,
)

# Every (method, path) of the router, from the router itself.
ROUTES = sorted({(r.method, r.resource.canonical)
                 for r in make_app(config.Settings(), None).router.routes()
                 if r.method != "HEAD"})

# Written independently of auth.RULES: the routes that act as one agent (the list).
AGENT_SCOPED = {
    ("POST", "/api/agents/{id}/heartbeat"), ("POST", "/api/agents/{id}/health"),
    ("POST", "/api/messages"), ("GET", "/api/messages/{agentId}"),
    ("GET", "/api/messages/{agentId}/failed"), ("POST", "/api/messages/{id}/read"),
    ("PATCH", "/api/messages/{id}/status"), ("POST", "/api/messages/{id}/retry"),
    ("POST", "/api/skills"), ("POST", "/api/skills/{id}/invoke"),
    ("POST", "/api/groups/{groupId}/broadcast"), ("POST", "/api/groups/{groupId}/memory"),
    ("DELETE", "/api/groups/{groupId}/memory/{key}"), ("POST", "/api/files/upload"),
    ("DELETE", "/api/files/{id}"), ("POST", "/api/updates/{id}/acknowledge"),
}
TOKEN_ROUTES = {("POST", "/api/agents/{id}/token"), ("DELETE", "/api/agents/{id}/token")}
REGISTER = ("POST", "/api/agents/register")
# Mesh-wide, but a token that names an agent in them must name its own.
MESH_AS = {("POST", "/api/broadcast"), ("POST", "/api/groups"), ("POST", "/api/updates"),
           ("POST", "/api/agents/register")}


def file_body(agent: str) -> dict:
    return {"agentId": agent, "filename": "x.txt",
            "fileData": base64.b64encode(b"x").decode()}


# (method, path) -> builder(mesh) -> (path, body, owner): the request made on behalf of
# `owner` ("A" or "B"); agent C owns nothing, so its token must be refused.

CASES = {
    ("POST", "/api/agents/register"): lambda m: ("/api/agents/register",
                                                 {"name": "agent-A"}, "A"),
    ("POST", "/api/agents/{id}/heartbeat"): lambda m: (
        f"/api/agents/{m.ids['A']}/heartbeat", {}, "A"),
    ("POST", "/api/agents/{id}/health"): lambda m: (
        f"/api/agents/{m.ids['A']}/health", {"status": "healthy"}, "A"),
    ("POST", "/api/agents/{id}/token"): lambda m: (f"/api/agents/{m.ids['A']}/token", None,
                                                   "A"),
    ("DELETE", "/api/agents/{id}/token"): lambda m: (f"/api/agents/{m.ids['A']}/token", None,
                                                     "A"),
    ("POST", "/api/messages"): lambda m: (
        "/api/messages", {"from": m.ids["A"], "to": m.ids["B"], "content": "x"}, "A"),
    ("GET", "/api/messages/{agentId}"): lambda m: (f"/api/messages/{m.ids['B']}", None, "B"),
    ("GET", "/api/messages/{agentId}/failed"): lambda m: (
        f"/api/messages/{m.ids['B']}/failed", None, "B"),
    ("POST", "/api/messages/{id}/read"): lambda m: (
        f"/api/messages/{m.ctx['message']}/read", None, "B"),
    ("PATCH", "/api/messages/{id}/status"): lambda m: (
        f"/api/messages/{m.ctx['message']}/status", {"status": "completed"}, "B"),
    ("POST", "/api/messages/{id}/retry"): lambda m: (
        f"/api/messages/{m.ctx['failed']}/retry", None, "A"),
    ("POST", "/api/broadcast"): lambda m: ("/api/broadcast",
                                           {"from": m.ids["A"], "content": "x"}, "A"),
    ("POST", "/api/skills"): lambda m: ("/api/skills", {"agentId": m.ids["A"], "name": "n"},
                                        "A"),
    ("POST", "/api/skills/{id}/invoke"): lambda m: (
        f"/api/skills/{m.ctx['skill']}/invoke", {"from": m.ids["A"]}, "A"),
    ("POST", "/api/groups"): lambda m: ("/api/groups",
                                        {"name": "g2", "createdBy": m.ids["A"]}, "A"),
    ("POST", "/api/groups/{groupId}/broadcast"): lambda m: (
        f"/api/groups/{m.ctx['group']}/broadcast", {"from": m.ids["A"], "content": "x"}, "A"),
    ("POST", "/api/groups/{groupId}/memory"): lambda m: (
        f"/api/groups/{m.ctx['group']}/memory",
        {"agentId": m.ids["A"], "key": "k2", "value": 2}, "A"),
    ("DELETE", "/api/groups/{groupId}/memory/{key}"): lambda m: (
        f"/api/groups/{m.ctx['group']}/memory/k", {"agentId": m.ids["A"]}, "A"),
    ("POST", "/api/files/upload"): lambda m: ("/api/files/upload", file_body(m.ids["A"]),
                                              "A"),
    ("DELETE", "/api/files/{id}"): lambda m: (f"/api/files/{m.ctx['file']}",
                                              {"agentId": m.ids["A"]}, "A"),
    ("POST", "/api/updates"): lambda m: ("/api/updates", {
        "version": "1.0.1", "updateType": "minor", "title": "t", "createdBy": m.ids["A"]},
        "A"),
    ("POST", "/api/updates/{id}/acknowledge"): lambda m: (
        f"/api/updates/{m.ctx['update']}/acknowledge",
        {"agentId": m.ids["A"], "status": "accepted"}, "A"),
}

# Mesh-wide and operator routes: the request, whoever makes it.
PLAIN = {
    "{id}": lambda m: m.ids["A"], "{agentId}": lambda m: m.ids["B"],
    "{groupId}": lambda m: m.ctx["group"], "{key}": lambda m: "k",
    "{name}": lambda m: "network_partition", "{runId}": lambda m: "no-such-run",
}
PLAIN_ID = {"/api/files/": "file", "/api/updates/": "update", "/api/catastrophe/": "event"}
PLAIN_BODY = {
    ("POST", "/api/groups/{groupId}/members"): lambda m: {"agentId": m.ids["C"]},
    ("POST", "/api/catastrophe"): lambda m: {"eventType": "server_down", "severity": "minor",
                                             "title": "t"},
    ("POST", "/api/admin/protocols/{name}/run"): lambda m: {"dryRun": True},
}


def plain_request(m: Mesh, method: str, canonical: str) -> tuple[str, dict | None]:
    path = canonical
    for prefix, key in PLAIN_ID.items():
        if path.startswith(prefix) and "{id}" in path:
            path = path.replace("{id}", m.ctx[key])
    if canonical == "/api/groups/{groupId}/members/{agentId}":
        path = path.replace("{agentId}", m.ids["B"])
    for name, value in PLAIN.items():
        path = path.replace(name, value(m))
    builder = PLAIN_BODY.get((method, canonical))
    return path, builder(m) if builder else ({} if method in ("POST", "PATCH") else None)


def refused(status: int) -> bool:
    return status in (401, 403)


def test_every_route_has_a_rule_and_agent_routes_have_a_case():
    missing = [r for r in ROUTES if auth.rule_for(*r) is None]
    assert missing == [], f"routes without a rule in api/auth.py RULES: {missing}"
    scoped = {r for r in ROUTES if auth.rule_for(*r).scope is auth.Scope.AGENT}
    assert scoped == AGENT_SCOPED, "api/auth.py and the issue's list of agent routes differ"
    owner = {r for r in ROUTES if auth.rule_for(*r).scope is auth.Scope.OWNER}
    assert owner == TOKEN_ROUTES
    located = {r for r in ROUTES if auth.rule_for(*r).scope is auth.Scope.MESH
               and auth.rule_for(*r).locate is not None}
    assert located | {("POST", "/api/agents/register")} == MESH_AS
    assert set(CASES) == AGENT_SCOPED | TOKEN_ROUTES | MESH_AS


def test_the_openapi_document_says_agent_routes_answer_403():
    for method, path in AGENT_SCOPED | TOKEN_ROUTES | MESH_AS:
        assert "403" in DOCUMENT["paths"][path][method.lower()]["responses"], (method, path)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_route_with_agent_auth_required(aiohttp_client, tmp_path, route):
    method, canonical = route
    rule = auth.rule_for(method, canonical)
    async with open_mesh(aiohttp_client, tmp_path, agent_auth="required") as mesh:
        await populate(mesh)
        if route in CASES:
            path, body, owner = CASES[route](mesh)
            foreign = await mesh.call(method, path, body, mesh.as_("C"))
            assert foreign[0] == 403, ("another agent's token", foreign)
            shared = await mesh.call(method, path, body, SHARED)
            if route == REGISTER:
                # A name that has a token is re-registered only with it (test_tokens has
                # the shared key registering new names).
                assert shared[0] == 403, ("the shared key re-registering A", shared)
            elif route in MESH_AS:
                assert not refused(shared[0]), ("the shared key on a mesh-wide route", shared)
            else:
                assert shared[0] == 403, ("the shared key with agent_auth=required", shared)
            if route in TOKEN_ROUTES:
                admin = await mesh.call(method, path, body, ADMIN)
                assert admin[0] == 200, ("the admin key on a token route", admin)
                if method == "POST":  # the old token is gone: use the new one
                    mesh.tokens[owner] = admin[1]["agentToken"]
                else:
                    return  # revoked: the agent's own token no longer works (test_tokens)
            own = await mesh.call(method, path, body, mesh.as_(owner))
            assert own[0] == 200, ("the agent's own token", own)
            return
        path, body = plain_request(mesh, method, canonical)
        anonymous = await mesh.call(method, path, body)
        by_token = await mesh.call(method, path, body, mesh.as_("C"))
        by_shared = await mesh.call(method, path, body, SHARED)
        by_admin = await mesh.call(method, path, body, ADMIN)
        if rule.scope is auth.Scope.OPEN:
            assert not refused(anonymous[0]), anonymous
        elif rule.scope is auth.Scope.SELF:
            # The route's own check decides (test_console, test_metrics, test_mcp_mount);
            # whatever it answers, no credential makes it fail.
            for reply in (anonymous, by_token, by_shared, by_admin):
                assert reply[0] < 500, reply
        elif rule.scope is auth.Scope.ADMIN:
            assert (anonymous[0], by_token[0], by_shared[0]) == (403, 403, 403)
            assert not refused(by_admin[0]), by_admin
        else:
            assert rule.scope is auth.Scope.MESH
            assert anonymous[0] == 401, anonymous
            for reply in (by_token, by_shared, by_admin):
                assert not refused(reply[0]), reply
                assert reply[0] < 500, reply
