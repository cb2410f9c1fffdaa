"""Where log lines go besides structlog's own: stdlib loggers (aiohttp, asyncio, apscheduler)
rendered by the same processors, so each of their records is one JSON line with the exception
as a field; and journald's priority prefix (`<3>`) when stderr is the journal, so
`journalctl -p err` filters meshd's lines by level.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

# syslog priorities (sd-daemon(3)): journald reads "<N>" at the start of a line as the level.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2,
              "exception": 3}


def under_journald() -> bool:
    """systemd sets JOURNAL_STREAM to stderr's device:inode when stderr is the journal."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def journald_renderer(render):
    """Wrap the final renderer: the line gets its level's `<N>` prefix."""

    def prefixed(logger, name: str, event: dict) -> str:
        level = str(event.get("level") or name)
        return f"<{PRIORITIES.get(level, 6)}>{render(logger, name, event)}"

    return prefixed


def stdlib_level(level: str) -> int:
    """Libraries speak from warning up, unless meshd itself logs at debug (then aiohttp's
    debug lines, such as a client's malformed request, come through too)."""
    return logging.DEBUG if level == "debug" else logging.WARNING


def formatter_options(shared: list, renderer) -> dict:
    """Arguments of a structlog ProcessorFormatter that renders stdlib records through
    `shared` + `renderer`, as meshd's own lines are."""
    return {"foreign_pre_chain": [*shared, structlog.stdlib.add_logger_name],
            "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                           renderer]}


def route_stdlib(formatter: logging.Formatter, level: int = logging.WARNING,
                 stream=None) -> None:
    """stdlib's root logger writes through `formatter` to `stream`; a handler an earlier
    configure installed (same formatter class) is replaced, other handlers stay."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, type(formatter))]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
