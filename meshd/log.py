"""structlog setup: JSON lines in production, pretty console output on a TTY.

One event per line with an `event` name; callers add ids and durations as keys. Every line,
meshd's and the libraries' (aiohttp logs through stdlib logging), passes through `redact`:
a hostile request can put a key into a path or header that ends up in an error message.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog

from meshd import logroute

REDACTED = "[redacted]"
# Fields whose whole value is a secret, compared without case, `-` or `_`.
SECRET_FIELDS = frozenset({"apikey", "xapikey", "adminkey", "xadminkey", "authorization",
                           "token", "agenttoken", "password", "secret"})
SECRET_PATTERNS = (
    # `?apiKey=...` (and other key-like query or form parameters), up to the next separator.
    (re.compile(r"(?i)\b(api_?key|admin_?key|token|access_token)=[^&\s\"'<>;,]*"),
     rf"\1={REDACTED}"),
    # Header lines as aiohttp's parser errors quote them, and Bearer credentials.
    (re.compile(r"(?i)\b(x-api-key|x-admin-key|authorization)([\"']?\s*[:=]\s*[\"']?)"
                r"(?:bearer\s+)?[^\s\"',}\\]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\bbearer\s+[^\s\"',}\\]+"), f"Bearer {REDACTED}"),
    # Per-agent tokens.
    (re.compile(r"\bmat_[A-Za-z0-9_\-]+"), f"mat_{REDACTED}"),
)
_secrets: set[str] = set()


def add_secrets(*values: str | None) -> None:
    """Configured keys (API key, admin key) are redacted wherever they appear, even bare."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def redact_text(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_field(k) else _redact_value(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _is_secret_field(name: Any) -> bool:
    return isinstance(name, str) and name.lower().replace("-", "").replace("_", "") in SECRET_FIELDS


def redact(_logger, _name, event: dict) -> dict:
    """structlog processor: secret fields blanked, secrets inside text replaced."""
    return _redact_value(event)


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """stdlib records (aiohttp, apscheduler) rendered by meshd's processors (one JSON line,
    the traceback as a field), then redacted as text, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure(fmt: str = "auto", level: str = "info", process: str = "meshd",
              stream: TextIO | None = None, cache: bool = True) -> None:
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
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
        redact,
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    # Libraries that use stdlib logging (aiohttp, apscheduler) go to the same stream,
    # rendered by the same processors (redaction included): one line each, exceptions
    # as a field.
    logroute.route_stdlib(RedactingFormatter(**logroute.formatter_options(shared, renderer)),
                          logroute.stdlib_level(level), stream)


def _orjson_dumps(obj, **_kw) -> str:
    import orjson

    try:
        return orjson.dumps(obj, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Text holding undecodable bytes (a hostile header): logged with U+FFFD instead.
        return orjson.dumps(_repaired(obj), default=str).decode()


def _repaired(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_repaired(k)): _repaired(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repaired(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


def get(name: str | None = None):
    return structlog.get_logger(name) if name else structlog.get_logger()
