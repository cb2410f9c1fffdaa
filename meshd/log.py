"""structlog setup: JSON lines in production, pretty console output on a TTY.

One event per line with an `event` name; callers add ids and durations as keys.
"""

from __future__ import annotations

import logging
import sys

import structlog

from meshd import logroute


def configure(fmt: str = "auto", level: str = "info", process: str = "meshd") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    def add_process(_logger, _name, event: dict) -> dict:
        # A plain processor, not a context variable: threads (the SQLite writer, readers)
        # do not inherit context variables, and their lines must say which process they are.
        event.setdefault("process", process)
        return event

    processors: list = [
        structlog.contextvars.merge_contextvars,
        add_process,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
        shared = list(processors)
    else:
        processors.append(structlog.processors.dict_tracebacks)
        shared = list(processors)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    if logroute.under_journald():
        renderer = logroute.journald_renderer(renderer)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (aiohttp, apscheduler) go to the same stream, rendered
    # by the same processors: one line each, exceptions as a field.
    logroute.route_stdlib(shared, renderer, logroute.stdlib_level(level))


def _orjson_dumps(obj, **_kw) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()


def get(name: str | None = None):
    return structlog.get_logger(name) if name else structlog.get_logger()
