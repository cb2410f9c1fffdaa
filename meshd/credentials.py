"""How a request presents the shared API key, and the constant-time check of it.

Shared by the API's pipeline and the supervisor's own answers on the API port (its fallback
`/metrics`), which must not import the API.
"""

from __future__ import annotations

import hmac

from aiohttp import web


def presented_key(request: web.Request) -> str | None:
    """The key as the Node server finds it: X-API-Key, else `?apiKey=`, and a `Bearer `
    Authorization header replaces either."""
    candidate = request.headers.get("X-API-Key")
    if candidate is None:
        candidate = request.query.get("apiKey")
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        candidate = auth[7:]
    return candidate


def key_matches(candidate: str | None, expected: str) -> bool:
    """Constant-time comparison of the trimmed candidate (the Node server trims too)."""
    if not candidate:
        return False
    return hmac.compare_digest(candidate.strip().encode(), expected.encode())
