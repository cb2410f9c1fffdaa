"""A router that matches like Express: case-insensitive literals and an optional trailing slash,
never redirecting. Parameter values keep their case and `%2F` stays inside one segment.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError
from yarl import URL


class TolerantRouter(web.UrlDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._literals: frozenset[str] | None = None

    def literals(self) -> frozenset[str]:
        if self._literals is None:
            words = set()
            for resource in self.resources():
                path = resource.canonical
                words.update(seg for seg in path.split("/") if seg and "{" not in seg)
            self._literals = frozenset(words)
        return self._literals

    def normalize(self, raw_path: str) -> str:
        literals = self.literals()
        segments = raw_path.split("/")
        if len(segments) > 2 and segments[-1] == "":
            segments.pop()
        return "/".join(seg.lower() if seg.lower() in literals else seg for seg in segments)

    async def resolve(self, request: web.Request):
        match = await super().resolve(request)
        if not isinstance(match, MatchInfoError):
            return match
        raw = request.rel_url.raw_path
        normalized = self.normalize(raw)
        if normalized == raw:
            return match
        url = URL.build(path=normalized, query_string=request.rel_url.raw_query_string,
                        encoded=True)
        retry = await super().resolve(request.clone(rel_url=url))
        return match if isinstance(retry, MatchInfoError) else retry
