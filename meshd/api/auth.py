"""Who may do what: which identity a request acts with, and whether its route lets it.

`identify` finds the one identity a request carries (anonymous, the shared key, an agent
token, the admin key); `RULES` says for every route whom it acts as; `decide` is the single
place where the two meet. Handlers never parse credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from meshd.api.http import js_string, read_body
from meshd.api.keys import CREDENTIAL, SETTINGS, STORAGE
from meshd.api.middleware import AUTH_FAILED, key_matches, presented_key
from meshd.errors import Forbidden, MeshError
from meshd.store import files as files_store
from meshd.store import messages as messages_store
from meshd.store import tokens

TOKEN_FAILED = "Invalid or revoked agent token"
ADMIN_DISABLED = "the admin API is disabled: set admin_key to enable it"
ADMIN_FAILED = "Invalid or missing admin key"


class Unauthorized(MeshError):
    status = 401


class Kind(StrEnum):
    ANONYMOUS = "anonymous"
    SHARED = "shared"
    AGENT = "agent"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Kind
    agent_id: str | None = None


ANONYMOUS = Identity(Kind.ANONYMOUS)
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)


class Scope(StrEnum):
    OPEN = "open"      # no credential at all
    MESH = "mesh"      # mesh-wide: shared key, any agent token, admin key
    AGENT = "agent"    # acts as one agent: its token (the shared key too, unless required)
    OWNER = "owner"    # the agent's credentials themselves: its own token or the admin key
    ADMIN = "admin"    # operator routes: the admin key only
    SELF = "self"      # the route checks its own credential (console session, metrics_auth,
                       # the MCP door); tested with the route


# The agents a request acts as; the request may proceed for any one of them. Empty when the
# request names none (the handler's own 400 or 404 answers then).
Locator = Callable[[web.Request], Awaitable[frozenset[str]]]


@dataclass(frozen=True, slots=True)
class Rule:
    scope: Scope
    locate: Locator | None = None
    # The body cannot be read before the handler (a streamed upload): it calls `check_agent`.
    in_handler: bool = False


# -- finding the credential ----------------------------------------------------------------


def presented_token(request: web.Request) -> str | None:
    """An agent token wherever a key may stand (Bearer, X-API-Key, `?apiKey=`): the first
    with the token prefix. A request that carries one is held to it, whatever else it sends,
    so a shared key beside a token can never widen what the token may do."""
    auth = request.headers.get("Authorization", "")
    for value in (auth[7:] if auth.startswith("Bearer ") else None,
                  request.headers.get("X-API-Key"), request.query.get("apiKey")):
        if tokens.looks_like_token(value):
            return value.strip()
    return None


async def identify(request: web.Request) -> Identity:
    """The identity the request acts with, once per request. The admin key (X-Admin-Key)
    wins, then an agent token, then the shared key; a token that is unknown or revoked is
    a 401, never a fallback to the shared key sent beside it."""
    known = request.get(IDENTITY)
    if known is not None:
        return known
    settings = request.app[SETTINGS]
    identity = ANONYMOUS
    admin = request.headers.get("X-Admin-Key")
    token = presented_token(request)
    if settings.admin_key and key_matches(admin, settings.admin_key):
        identity = Identity(Kind.ADMIN)
    elif token is not None:
        agent_id = await request.app[STORAGE].read(tokens.agent_for, tokens.digest(token))
        if agent_id is None:
            raise Unauthorized(TOKEN_FAILED)
        identity = Identity(Kind.AGENT, agent_id)
    elif key_matches(presented_key(request), settings.api_key):
        identity = Identity(Kind.SHARED)
    request[IDENTITY] = identity
    request[CREDENTIAL] = identity.kind.value
    return identity


# -- the decision --------------------------------------------------------------------------


def decide(identity: Identity, scope: Scope, owners: frozenset[str], agent_auth: str,
           admin_enabled: bool = True) -> None:
    """Raise Unauthorized (no usable credential) or Forbidden (the wrong one); return when
    `identity` may act on a route of `scope` on behalf of one of `owners`."""
    if scope in (Scope.OPEN, Scope.SELF):
        return
    if scope is Scope.ADMIN:
        if not admin_enabled:
            raise Forbidden(ADMIN_DISABLED)
        if identity.kind is not Kind.ADMIN:
            raise Forbidden(ADMIN_FAILED)
        return
    if identity.kind is Kind.ANONYMOUS:
        raise Unauthorized(AUTH_FAILED)
    if identity.kind is Kind.AGENT:
        # With agent_auth off a token only authenticates; its own credentials stay its own.
        enforced = agent_auth != "off" or scope is Scope.OWNER
        if enforced and owners and identity.agent_id not in owners:
            raise Forbidden(f"this agent token acts as {identity.agent_id}; the request acts "
                            f"as {', '.join(sorted(owners))}")
        return
    if scope is Scope.OWNER and identity.kind is not Kind.ADMIN:
        raise Forbidden("this needs the agent's own token or the admin key")
    if scope is Scope.AGENT and agent_auth == "required":
        who = f" as {', '.join(sorted(owners))}" if owners else " as an agent"
        raise Forbidden(f"agent_auth is required: this request acts{who} and needs that "
                        "agent's token (Authorization: Bearer mat_...)")


def rule_for(method: str, canonical: str) -> Rule | None:
    return RULES.get(("GET" if method == "HEAD" else method, canonical))


@web.middleware
async def middleware(request: web.Request, handler):
    """Apply the matched route's rule before the handler runs."""
    resource = request.match_info.route.resource
    if resource is not None:
        await authorize(request, resource)
    return await handler(request)


async def authorize(request: web.Request, resource: web.AbstractResource) -> None:
    """Apply the route's rule to the request's identity."""
    rule = rule_for(request.method, resource.canonical)
    if rule is None:
        # A route nobody described: the old behaviour (key on /api/*), and a test fails.
        rule = Rule(Scope.MESH) if resource.canonical.startswith("/api/") else Rule(Scope.OPEN)
    if rule.scope in (Scope.OPEN, Scope.SELF):
        return
    settings = request.app[SETTINGS]
    identity = await identify(request)
    owners = frozenset()
    if rule.locate is not None and not rule.in_handler and identity.kind is Kind.AGENT:
        owners = await rule.locate(request)
    decide(identity, rule.scope, owners, settings.agent_auth, bool(settings.admin_key))


async def check_agent(request: web.Request, agent_id: str | None) -> None:
    """For handlers that learn whom they act as only from a streamed body."""
    identity = await identify(request)
    owners = frozenset({agent_id}) if agent_id else frozenset()
    decide(identity, Scope.AGENT, owners, request.app[SETTINGS].agent_auth)


def token_agent(request: web.Request) -> str | None:
    """The agent of the request's token, for handlers that default `agentId` to it."""
    identity = request.get(IDENTITY)
    return identity.agent_id if identity is not None else None


def require_admin(request: web.Request) -> None:
    expected = request.app[SETTINGS].admin_key
    if not expected:
        raise Forbidden(ADMIN_DISABLED)
    if not key_matches(request.headers.get("X-Admin-Key"), expected):
        raise Forbidden(ADMIN_FAILED)


def registration_grant(identity: Identity, existing: str | None, token_state: str | None,
                       agent_auth: str) -> str | None:
    """Whether a registration may go ahead and which token it gets (see store.tokens.register):
    a token is handed out for a name only once without proof; after that only to the admin
    key (and only when the agent holds no active token: rotation is its own route)."""
    if existing is None:
        if identity.kind is Kind.AGENT and agent_auth != "off":
            raise Forbidden(f"this agent token acts as {identity.agent_id}; it cannot "
                            "register another agent")
        return None if agent_auth == "off" else "new"
    if identity.kind is Kind.AGENT:
        if agent_auth != "off" and identity.agent_id != existing:
            raise Forbidden(f"this agent token acts as {identity.agent_id}; the name belongs "
                            f"to {existing}")
        return None
    if agent_auth == "off":
        return None
    if identity.kind is Kind.ADMIN:
        return "reissue" if token_state != tokens.ACTIVE else None
    # The shared key.
    if agent_auth == "required":
        if token_state == tokens.ACTIVE:
            raise Forbidden(f"agent_auth is required: re-registering {existing} needs its "
                            "agent token")
        raise Forbidden(f"agent_auth is required: agent {existing} has no token yet; the "
                        "admin key (X-Admin-Key) registers it and receives one")
    return "first" if token_state is None else None


# -- locators ------------------------------------------------------------------------------


def _as_text(value) -> str | None:
    """A body id as the handlers read it (numbers as their JS text); None for other types."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return js_string(value)
    return None


def path(name: str) -> Locator:
    async def locate(request: web.Request) -> frozenset[str]:
        return frozenset({request.match_info[name]})
    return locate


def body(name: str) -> Locator:
    async def locate(request: web.Request) -> frozenset[str]:
        value = _as_text((await read_body(request)).get(name))
        return frozenset({value}) if value else frozenset()
    return locate


def named_agent(request_body_field: str = "agentId") -> Locator:
    """The body field, else `?agentId=`, else X-Agent-Id: how DELETE routes name the agent."""
    async def locate(request: web.Request) -> frozenset[str]:
        value = (_as_text((await read_body(request)).get(request_body_field))
                 or request.query.get("agentId") or request.headers.get("X-Agent-Id"))
        return frozenset({value}) if value else frozenset()
    return locate


def message(*roles: str) -> Locator:
    """The message's recipient (`to_agent`) and/or sender (`from_agent`)."""
    async def locate(request: web.Request) -> frozenset[str]:
        row = await request.app[STORAGE].read(messages_store.get, request.match_info["id"])
        return frozenset(row[r] for r in roles) if row else frozenset()
    return locate


async def file_owner(request: web.Request) -> frozenset[str]:
    row = await request.app[STORAGE].read(files_store.get_meta, request.match_info["id"])
    return frozenset({row["agent_id"]}) if row else frozenset()


# -- every route, whom it acts as ----------------------------------------------------------

OPEN, MESH, ADMIN = Rule(Scope.OPEN), Rule(Scope.MESH), Rule(Scope.ADMIN)
SELF = Rule(Scope.SELF)


def agent(locate: Locator) -> Rule:
    return Rule(Scope.AGENT, locate)


def mesh_as(locate: Locator) -> Rule:
    """Mesh-wide (the shared key serves it in every mode), but a token acts only as itself."""
    return Rule(Scope.MESH, locate)


RULES: dict[tuple[str, str], Rule] = {
    ("POST", "/api/agents/register"): MESH,  # the handler decides about tokens
    ("GET", "/api/agents"): MESH,
    ("GET", "/api/agents/{id}"): MESH,
    ("POST", "/api/agents/{id}/heartbeat"): agent(path("id")),
    ("POST", "/api/agents/{id}/token"): Rule(Scope.OWNER, path("id")),
    ("DELETE", "/api/agents/{id}/token"): Rule(Scope.OWNER, path("id")),
    ("POST", "/api/messages"): agent(body("from")),
    ("GET", "/api/messages/{agentId}"): agent(path("agentId")),
    ("POST", "/api/messages/{id}/read"): agent(message("to_agent")),
    ("POST", "/api/broadcast"): mesh_as(body("from")),
    ("PATCH", "/api/messages/{id}/status"): agent(message("to_agent", "from_agent")),
    ("GET", "/api/messages/{agentId}/failed"): agent(path("agentId")),
    ("POST", "/api/messages/{id}/retry"): agent(message("to_agent", "from_agent")),
    ("POST", "/api/skills"): agent(body("agentId")),
    ("GET", "/api/skills"): MESH,
    ("POST", "/api/skills/{id}/invoke"): agent(body("from")),
    ("POST", "/api/groups"): mesh_as(body("createdBy")),
    ("GET", "/api/groups"): MESH,
    ("GET", "/api/groups/{groupId}"): MESH,
    ("POST", "/api/groups/{groupId}/members"): MESH,
    ("DELETE", "/api/groups/{groupId}/members/{agentId}"): MESH,
    ("GET", "/api/agents/{agentId}/groups"): MESH,
    ("GET", "/api/groups/{groupId}/agents"): MESH,
    ("POST", "/api/groups/{groupId}/broadcast"): agent(body("from")),
    ("POST", "/api/groups/{groupId}/memory"): agent(body("agentId")),
    ("GET", "/api/groups/{groupId}/memory"): MESH,
    ("GET", "/api/groups/{groupId}/memory/{key}"): MESH,
    ("DELETE", "/api/groups/{groupId}/memory/{key}"): agent(named_agent()),
    ("GET", "/api/groups/{groupId}/memory/{key}/history"): MESH,
    ("POST", "/api/files/upload"): Rule(Scope.AGENT, body("agentId"), in_handler=True),
    ("GET", "/api/files"): MESH,
    ("GET", "/api/files/{id}/download"): MESH,
    ("GET", "/api/files/{id}"): MESH,
    ("DELETE", "/api/files/{id}"): agent(file_owner),
    ("POST", "/api/updates"): mesh_as(body("createdBy")),
    ("GET", "/api/updates"): MESH,
    ("GET", "/api/updates/{id}"): MESH,
    ("POST", "/api/updates/{id}/acknowledge"): agent(body("agentId")),
    ("GET", "/api/updates/{id}/acknowledgments"): MESH,
    ("GET", "/api/updates/{id}/adoption"): MESH,
    ("POST", "/api/catastrophe"): MESH,
    ("GET", "/api/catastrophe/protocols"): MESH,
    ("GET", "/api/catastrophe/{id}"): MESH,
    ("GET", "/api/catastrophe"): MESH,
    ("POST", "/api/catastrophe/{id}/resolve"): MESH,
    ("GET", "/api/catastrophe/{id}/runs"): MESH,
    ("POST", "/api/agents/{id}/health"): agent(path("id")),
    ("GET", "/api/agents/{id}/health"): MESH,
    ("GET", "/api/health/dashboard"): MESH,
    ("GET", "/health"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/api/admin/protocols"): ADMIN,
    ("POST", "/api/admin/protocols/{name}/run"): ADMIN,
    ("GET", "/api/admin/protocols/runs"): ADMIN,
    ("GET", "/api/admin/protocols/runs/{runId}"): ADMIN,
    ("POST", "/api/admin/protocols/runs/{runId}/abort"): ADMIN,
    ("GET", "/api/openapi.json"): MESH,
    ("GET", "/ws"): OPEN,  # the hub applies ws_auth itself (api/ws.py)
    # Routed only with `mcp = true`; the MCP door admits credentials itself (mcp/http.py).
    ("GET", "/mcp"): SELF,
    ("POST", "/mcp"): SELF,
    ("DELETE", "/mcp"): SELF,
    # metrics_auth (api/metrics.py) and the console's session and CSRF checks (api/console/).
    ("GET", "/metrics"): SELF,
    ("GET", "/"): SELF,
    ("GET", "/login"): SELF,
    ("POST", "/login"): SELF,
    ("POST", "/logout"): SELF,
    ("GET", "/console/panels"): SELF,
    ("POST", "/console/actions/{action}"): SELF,
    ("GET", "/console/static/{name}"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/openapi.json"): SELF,
    ("GET", "/docs/static/{name}"): OPEN,
}
