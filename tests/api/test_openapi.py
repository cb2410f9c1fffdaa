"""GET /api/openapi.json: describes exactly the router's routes (a route added without being
documented fails here), is well-formed OpenAPI 3 and needs the API key."""

from __future__ import annotations

import re

from meshd import __version__
from meshd.api import auth
from meshd.api.openapi import DOCUMENT
from tests.conftest import call

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PATH_PARAM = re.compile(r"\{([^}]+)\}")


def router_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        ops.add((route.method, route.resource.canonical))
    return ops


def document_operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in HTTP_METHODS}


async def fetch(client) -> dict:
    status, doc = await call(client, "GET", "/api/openapi.json")
    assert status == 200, doc
    return doc


async def test_document_describes_exactly_the_routers_routes(client, app):
    doc = await fetch(client)
    documented = document_operations(doc)
    routed = router_operations(app)
    assert routed, "the router has routes"
    assert documented - routed == set(), "documented but not routed"
    assert routed - documented == set(), "routed but not documented"
    assert ("GET", "/api/openapi.json") in documented
    assert ("GET", "/ws") in documented


async def test_served_document_is_the_module_document(client):
    assert await fetch(client) == DOCUMENT


async def test_document_is_openapi_3(client):
    doc = await fetch(client)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "meshd Agent Mesh API"
    assert doc["info"]["version"] == __version__
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["apiKeyQuery"] == {"type": "apiKey", "in": "query", "name": "apiKey"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["adminKey"]["name"] == "X-Admin-Key"
    assert {next(iter(s)) for s in doc["security"]} == {"apiKeyHeader", "apiKeyQuery",
                                                         "bearer", "agentToken"}
    schemas = doc["components"]["schemas"]
    text = str(doc)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in schemas, f"dangling $ref to {name}"
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        names = PATH_PARAM.findall(path)
        for method, operation in item.items():
            assert method in HTTP_METHODS, (path, method)
            where = f"{method.upper()} {path}"
            assert operation["summary"], where
            assert operation["responses"], where
            assert "200" in operation["responses"], where
            for code, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", code), (where, code)
                assert response["description"], (where, code)
            params = operation.get("parameters", [])
            assert sorted(p["name"] for p in params if p["in"] == "path") == sorted(names), \
                where
            assert all(p["required"] for p in params if p["in"] == "path"), where
            keys = [(p["name"], p["in"]) for p in params]
            assert len(keys) == len(set(keys)), where
            if "requestBody" in operation:
                content = operation["requestBody"]["content"]  # JSON, or a login form
                schema = next(iter(content.values()))["schema"]
                assert schema["type"] == "object", where
                assert set(schema.get("required", [])) <= set(schema["properties"]), where


async def test_auth_and_bodies_are_described_per_route(client):
    doc = await fetch(client)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            codes = set(operation["responses"])
            scope = auth.rule_for(method.upper(), path).scope
            if path.startswith("/api/admin/"):
                assert scope is auth.Scope.ADMIN, where
                assert operation["security"] == [{"adminKey": []}], where
                assert "403" in codes, where
            elif scope is auth.Scope.OWNER:
                assert operation["security"] == [{"agentToken": []}, {"adminKey": []}], where
                assert {"401", "403"} <= codes, where
            elif path.startswith("/api/"):
                assert "security" not in operation, where  # the document's default
                assert "401" in codes, where
            if method in ("post", "patch") and path.startswith("/api/") and "{id}/read" not in \
                    path and not path.endswith(("/retry", "/runs", "/token")):
                assert "requestBody" in operation, where
            if method in ("post", "patch", "delete") and path.startswith("/api/") and \
                    not path.startswith("/api/admin/"):
                assert "503" in codes, where  # read-only mode refuses writes
    for path in ("/health", "/readyz"):
        assert doc["paths"][path]["get"]["security"] == [], path


async def test_request_bodies_name_the_handlers_fields(client):
    doc = await fetch(client)

    def body(method: str, path: str) -> dict:
        return doc["paths"][path][method]["requestBody"]["content"]["application/json"][
            "schema"]

    register = body("post", "/api/agents/register")
    assert register["required"] == ["name"]
    assert register["properties"]["capabilities"]["type"] == "array"
    send = body("post", "/api/messages")
    assert set(send["required"]) == {"from", "to", "content"}
    assert {"messageType", "timeoutMs", "clientId"} <= set(send["properties"])
    upload = body("post", "/api/files/upload")
    assert set(upload["required"]) == {"agentId", "filename", "fileData"}
    catastrophe = body("post", "/api/catastrophe")
    assert "breaking_update" in catastrophe["properties"]["eventType"]["enum"]
    assert catastrophe["properties"]["severity"]["enum"] == ["critical", "major", "minor"]
    ack = body("post", "/api/updates/{id}/acknowledge")
    assert ack["properties"]["status"]["enum"] == ["pending", "accepted", "rejected",
                                                   "completed"]
    status = body("patch", "/api/messages/{id}/status")
    assert "timeout" in status["properties"]["status"]["enum"]
    raw = [p for p in doc["paths"]["/api/files/{id}"]["get"]["parameters"]
           if p["name"] == "raw"]
    assert raw and raw[0]["in"] == "query"
    responses = doc["paths"]["/api/files/upload"]["post"]["responses"]
    assert {"400", "401", "404", "413", "426"} <= set(responses)
    assert {"404", "409"} <= set(doc["paths"]["/api/catastrophe/{id}/resolve"]["post"][
        "responses"])


async def test_document_needs_the_api_key(anon):
    status, body = await call(anon, "GET", "/api/openapi.json")
    assert status == 401
    assert body == {"error": "Invalid or missing API key"}
    status, _ = await call(anon, "GET", "/api/openapi.json?apiKey=test-key")
    assert status == 200
    status, _ = await call(anon, "GET", "/api/openapi.json",
                           headers={"Authorization": "Bearer test-key"})
    assert status == 200
