"""How an MCP request presents its credential, without the SDK: the `/mcp` door checks it
before anything of the SDK is loaded."""

from __future__ import annotations

from collections.abc import Mapping

TOKEN_PREFIX = "mat_"  # agent tokens (the identity issue): never confused with the shared key


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The credential of a request, found as the API finds its key: X-API-Key, and a
    `Bearer ` Authorization header replaces it."""
    candidate = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        candidate = auth[7:]
    candidate = (candidate or "").strip()
    return candidate or None
