"""The HTTP side of the SDK: one aiohttp session, the API key on every request (and the
agent's token once it has one), and every failure sorted into `Unavailable` (try again later)
or `Rejected` (do not)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from meshd.client.errors import Rejected, Unavailable

# 4xx statuses that say "not now" rather than "never".
RETRYABLE_4XX = frozenset({408, 425, 429})


class MeshHttp:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0,
                 connect_timeout: float = 3.0, agent_version: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": api_key}
        if agent_version:
            # The server checks it against a breaking update's requiredVersion.
            self.headers["X-Agent-Version"] = agent_version
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        # The agent token, when the server gave one: sent as `Authorization: Bearer`, where
        # the server lets it win over the shared key, so every request acts as this agent.
        self.token: str | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No total timeout on the session: it would also end the long-lived WebSocket.
            # Plain requests pass their own.
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None,
                                              sock_connect=self._timeout.sock_connect))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        return self.base_url + path

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, str] | None = None) -> Any:
        """The parsed JSON of a 2xx answer; `Unavailable` or `Rejected` otherwise."""
        try:
            async with self.session.request(method, self.url(path), json=json, params=params,
                                            headers=self.auth_headers(),
                                            timeout=self._timeout) as resp:
                body = await _body(resp)
                _raise_for(resp.status, body, method, path)
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def download(self, path: str) -> bytes:
        """The raw bytes of a 2xx answer."""
        try:
            async with self.session.get(self.url(path), headers=self.auth_headers(),
                                        timeout=self._timeout) as resp:
                if resp.status >= 300:
                    _raise_for(resp.status, await _body(resp), "GET", path)
                return await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    async def healthy(self) -> bool:
        """True when GET /health answers 200 (it needs no key and touches no database)."""
        try:
            await self.request("GET", "/health")
        except (Unavailable, Rejected):
            return False
        return True


async def _body(resp: aiohttp.ClientResponse) -> Any:
    """The JSON body, or its text when it is not JSON (a proxy's error page, say)."""
    text = await resp.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _raise_for(status: int, body: Any, method: str, path: str) -> None:
    if status < 300:
        return
    detail = (body.get("error") or body.get("detail")) if isinstance(body, dict) else body
    message = f"{method} {path}: {status} {detail}"
    if status >= 500 or status in RETRYABLE_4XX:
        raise Unavailable(message, status, body)
    raise Rejected(message, status, body)
