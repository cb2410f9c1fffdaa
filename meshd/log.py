"""structlog setup: JSON lines in production, pretty console output on a TTY.

One event per line with an `event` name; callers add ids and durations as keys. Every line,
meshd's and the libraries' (aiohttp logs through stdlib logging), passes through `redact`:
a hostile request can put a key into a path or header that ends up in an error message.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
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
# True when a configured key holds a character JSON escapes: the rendered line cannot be
# searched for it, so `info_line` redacts value by value.
_secret_needs_escaping = False


def add_secrets(*values: str | None) -> None:
    """Configured keys (API key, admin key) are redacted wherever they appear, even bare."""
    global _secret_needs_escaping
    _secrets.update(v for v in values if v and len(v) >= 4)
    _secret_needs_escaping = any(orjson.dumps(v).decode() != f'"{v}"' for v in _secrets)


def maybe_secret(text: str) -> bool:
    """False only when no redaction pattern can match `text` (configured keys aside).

    Every text a pattern can match holds one of these words once lowercased, or a dotted or
    dotless i (the patterns' IGNORECASE matches them to `i`; lower() does not). A text with
    none (nearly every log value: paths, ids, event names) skips the four substitutions,
    which cost tens of microseconds per value even when nothing matches.
    tests/unit/test_log_redaction.py checks the gate against the patterns."""
    lowered = text.lower()
    return ("key" in lowered or "token" in lowered or "authorization" in lowered
            or "bearer" in lowered or "mat_" in lowered or "\u0130" in text
            or "\u0131" in lowered)


def redact_text(text: str) -> str:
    if maybe_secret(text):
        for pattern, replacement in SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_PLAIN = frozenset({int, float, bool, type(None)})  # values with nothing to redact


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return _redact_dict(value)
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _redact_dict(value: dict) -> dict:
    # Every log line passes here: numbers and None are copied without a call.
    out = {}
    for k, v in value.items():
        if isinstance(k, str) and _secret_field_name(k):
            out[k] = REDACTED
        elif type(v) in _PLAIN:
            out[k] = v
        else:
            out[k] = _redact_value(v)
    return out


@functools.lru_cache(maxsize=4096)
def _secret_field_name(name: str) -> bool:
    # Field names are the code's own (a few dozen), so the cache holds them all; a hostile
    # dict's keys only cycle it.
    return name.lower().replace("-", "").replace("_", "") in SECRET_FIELDS


def redact(_logger, _name, event: dict) -> dict:
    """structlog processor: secret fields blanked, secrets inside text replaced."""
    return _redact_dict(event)


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """stdlib records (aiohttp, apscheduler) rendered by meshd's processors (one JSON line,
    the traceback as a field), then redacted as text, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


@dataclass(frozen=True, slots=True)
class _Direct:
    """What `info_line` needs to write an info line exactly as configure's JSON chain does,
    without going through structlog's bound logger and processor list."""

    processors: list  # the list handed to structlog.configure: still in force?
    process: str
    stamper: Any
    render: Any  # the chain's final renderer (journald prefix included)
    stream: TextIO
    lock: Any


_direct: _Direct | None = None


def info_line(event: str, fields: dict[str, Any]) -> None:
    """`get().info(event, **fields)` for the hottest line (the access log, once per request):
    the same JSON line (same keys in the same order, context variables, timestamp, process,
    redaction, journald prefix), made without structlog's per-call machinery and per-value
    redaction, which together cost more than a small request's own work. The rendered line is
    checked for redaction once as a whole; only a line that might hold a secret is redacted
    value by value and rendered again. Falls back to structlog when the JSON configuration
    from `configure` is not the one in force (console format, info filtered out, reset or
    reconfigured by someone else). `fields` is consumed."""
    direct = _direct
    if direct is None or structlog.get_config()["processors"] is not direct.processors:
        get().info(event, **fields)
        return
    fields["event"] = event
    structlog.contextvars.merge_contextvars(None, "info", fields)
    fields.setdefault("process", direct.process)
    fields["level"] = "info"
    direct.stamper(None, "info", fields)
    line = direct.render(None, "info", fields)
    if _line_may_hold_secret(line):
        line = direct.render(None, "info", _redact_dict(fields))
    with direct.lock:
        direct.stream.write(line + "\n")
        direct.stream.flush()


def _line_may_hold_secret(line: str) -> bool:
    """False only when per-value redaction would change nothing in the line: no word a
    pattern or a secret field name needs, and no configured key (a key JSON would escape
    cannot be found in the rendered text, so its presence always says yes)."""
    lowered = line.lower()
    if ("key" in lowered or "token" in lowered or "authorization" in lowered
            or "bearer" in lowered or "mat_" in lowered or "password" in lowered
            or "secret" in lowered or "\u0130" in line or "\u0131" in lowered
            or _secret_needs_escaping):
        return True
    return any(secret in line for secret in _secrets)


def configure(fmt: str = "auto", level: str = "info", process: str = "meshd",
              stream: TextIO | None = None, cache: bool = True) -> None:
    global _direct
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    def add_process(_logger, _name, event: dict) -> dict:
        # A plain processor, not a context variable: threads (the SQLite writer, readers)
        # do not inherit context variables, and their lines must say which process they are.
        event.setdefault("process", process)
        return event

    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    processors: list = [
        structlog.contextvars.merge_contextvars,
        add_process,
        structlog.processors.add_log_level,
        stamper,
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
    info_shown = getattr(logging, level.upper()) <= logging.INFO
    # The direct path renders what the JSON chain renders; the console renderer (a TTY,
    # development) and a level that hides info lines keep the plain structlog call.
    _direct = (_Direct(processors, process, stamper, renderer, stream,
                       structlog._output._get_lock_for_file(stream))
               if info_shown and not use_console else None)
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
