"""The HTTP API as the MCP tools see it: one call, its JSON answer, or a `ToolError` carrying
the API's own message (never a traceback, never a key)."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from mcp.server.fastmcp.exceptions import ToolError

from meshd.client.errors import MeshError
from meshd.client.http import MeshHttp


def api_message(exc: MeshError) -> str:
    """`error` of the API's JSON answer, as the HTTP client would show it."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = body["error"]
    elif exc.status is None:
        detail = "meshd is unreachable"
    else:
        detail = f"meshd answered {exc.status}"
    return f"{detail} (HTTP {exc.status})" if exc.status is not None else detail


@dataclass(frozen=True, slots=True)
class Download:
    size: int | None
    media_type: str | None
    filename: str | None
    data: bytes | None  # None when larger than the caller's limit: not read


class MeshApi:
    """meshd's HTTP API at `base_url`, called with one credential (the shared key or an agent
    token: X-API-Key carries either, and the API decides what each may do)."""

    def __init__(self, base_url: str, credential: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.http = MeshHttp(self.base_url, credential, timeout=timeout)
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def close(self) -> None:
        await self.http.close()

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: Mapping[str, str] | None = None) -> Any:
        try:
            return await self.http.request(method, path, json=json,
                                           params=dict(params) if params else None)
        except MeshError as exc:
            raise ToolError(api_message(exc)) from None

    async def download(self, path: str) -> bytes:
        try:
            return await self.http.download(path)
        except MeshError as exc:
            raise ToolError(api_message(exc)) from None

    async def fetch(self, path: str, limit: int) -> Download:
        """A raw download read only when it is at most `limit` bytes; its headers either way."""
        try:
            async with self.http.session.get(self.http.url(path), timeout=self.timeout) as resp:
                if resp.status >= 300:
                    text = await resp.text()
                    try:
                        body: Any = jsonlib.loads(text)
                    except ValueError:
                        body = text
                    raise ToolError(api_message(MeshError("", resp.status, body)))
                disposition = resp.content_disposition
                meta = (resp.content_length, resp.content_type,
                        disposition.filename if disposition else None)
                if meta[0] is not None and meta[0] > limit:
                    return Download(*meta, None)
                data = await resp.content.read(limit + 1)
                if len(data) > limit:
                    return Download(*meta, None)
                return Download(len(data), meta[1], meta[2], data)
        except (TimeoutError, aiohttp.ClientError, OSError):
            raise ToolError("meshd is unreachable") from None

    def ws_url(self, agent_id: str | None) -> str:
        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return url + "/ws" + (f"?agentId={quote(agent_id, safe='')}&onlyMine=true" if agent_id else "")

    def ws_connect(self, agent_id: str | None) -> Any:
        """The hub's WebSocket with the same credential (the hub filters by it)."""
        return self.http.session.ws_connect(self.ws_url(agent_id), heartbeat=20.0,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
