"""The web console: server-rendered pages (aiohttp-jinja2), plain CSS and a little JavaScript
shipped in this package, sessions and CSRF tokens, and /docs (Swagger UI from a PyPI package)."""

from __future__ import annotations

import jinja2
from aiohttp import web

from meshd.api.console.sessions import SESSIONS, THROTTLE, LoginThrottle, Sessions
from meshd.api.keys import SETTINGS

SESSIONS_FILE = "console-sessions.json"


def _bytes(value) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _duration(value) -> str:
    if value is None:
        return "?"
    seconds = int(value)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def setup(app: web.Application) -> None:
    import aiohttp_jinja2

    from meshd.api.console import views

    aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("meshd.api.console", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        filters={"bytes": _bytes, "duration": _duration})
    app[SESSIONS] = Sessions(app[SETTINGS].data_dir / SESSIONS_FILE)
    app[THROTTLE] = LoginThrottle()
    app.router.add_routes(views.routes)
