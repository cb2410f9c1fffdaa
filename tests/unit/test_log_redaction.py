"""The cheap paths of logging keep what the plain ones did: the redaction gate lets through
only text no pattern can match, and `info_line` (the access log) writes byte for byte the
line structlog's chain writes, timestamps aside, secrets redacted alike."""

from __future__ import annotations

import io
import logging as stdlib_logging

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import log as logging

# Text built from the pieces the patterns look for, in any case, with the characters
# IGNORECASE folds into them (dotless and dotted i, the Kelvin sign).
PIECES = ["api", "key", "_", "-", "admin", "token", "access", "=", ":", " ", "bearer",
          "authorization", "mat_", "x-", "abc", "\u0130", "\u0131", "\u212a", "'", '"', "?",
          "&", "A", "p", "I", "K", "e", "Y", "t", "o", "n"]
TEXTS = st.lists(st.sampled_from(PIECES), max_size=12).map("".join).flatmap(
    lambda s: st.sampled_from([s, s.upper(), s.title(), s.swapcase()]))


@settings(max_examples=3000, deadline=None)
@given(TEXTS)
def test_the_gate_passes_only_text_no_pattern_matches(text):
    if not logging.maybe_secret(text):
        for pattern, _ in logging.SECRET_PATTERNS:
            assert pattern.search(text) is None, (pattern.pattern, text)


@pytest.mark.parametrize("text", [
    "GET /x?apiKey=abc", "X-API-KEY: k", "x-admin-key=1", "Authorization: Bearer z",
    "BEARER qq", "t=mat_abc", "AUTHORİZATİON: x", "Authorızation: x", "api_key=1",
    "access_token=9", "ADMIN_KEY=2"])
def test_the_gate_opens_for_every_pattern(text):
    assert logging.maybe_secret(text)
    assert logging.redact_text(text) != text


@pytest.fixture
def stream():
    out = io.StringIO()
    logging.configure("json", "info", process="worker", stream=out, cache=False)
    yield out
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = stdlib_logging.getLogger()
    for handler in [h for h in root.handlers
                    if isinstance(h.formatter, logging.RedactingFormatter)]:
        root.removeHandler(handler)


def both_lines(stream: io.StringIO, fields: dict) -> tuple[dict, dict]:
    """The line structlog writes and the line info_line writes for the same fields, parsed,
    with their timestamps checked and removed."""
    start = len(stream.getvalue())
    logging.get("meshd.http").info("http.request", **fields)
    logging.info_line("http.request", dict(fields))
    plain, direct = stream.getvalue()[start:].splitlines()
    parsed = []
    for line in (plain, direct):
        event = orjson.loads(line)
        assert event.pop("timestamp").endswith("Z")
        parsed.append(event)
    assert list(parsed[0]) == list(parsed[1])  # same keys in the same order
    return parsed[0], parsed[1]


ACCESS = {"method": "POST", "path": "/api/agents/0b6f3a52/heartbeat", "status": 200,
          "agent_id": "0b6f3a52", "credential": "shared", "duration_ms": 1.25}


def test_info_line_is_the_structlog_line(stream):
    plain, direct = both_lines(stream, ACCESS)
    assert plain == direct == {**ACCESS, "event": "http.request", "process": "worker",
                               "level": "info"}


@pytest.mark.parametrize("changes", [
    {"path": "/api/agents/mat_secrettoken123/heartbeat"},
    {"path": "/api/x?apiKey=abc&y=1"},
    {"path": "/api/the-configured-key/x"},
    {"path": '/api/we"ird\\key-with"quote/x'},
    {"agent_id": "Authorization: Bearer abcdef"},
    {"path": "/api/\udcff\udcfe/mat_zz"},  # undecodable bytes, repaired in the line
])
def test_info_line_redacts_as_structlog_does(stream, changes):
    logging.add_secrets("the-configured-key", 'we"ird\\key-with"quote')
    try:
        plain, direct = both_lines(stream, {**ACCESS, **changes})
    finally:
        logging._secrets.difference_update({"the-configured-key", 'we"ird\\key-with"quote'})
        logging.add_secrets()
    assert plain == direct
    assert logging.REDACTED in stream.getvalue() or "\udcff" in changes.get("path", "")
    assert "secrettoken123" not in stream.getvalue()
    assert "the-configured-key" not in stream.getvalue()


def test_info_line_merges_context_variables_and_redacts_them(stream):
    structlog.contextvars.bind_contextvars(request_id="r-1", password="hunter2",
                                           nested={"secret": "s3", "ok": 1})
    plain, direct = both_lines(stream, ACCESS)
    assert plain == direct
    assert direct["request_id"] == "r-1" and direct["password"] == logging.REDACTED
    assert direct["nested"] == {"secret": logging.REDACTED, "ok": 1}


def test_info_line_follows_a_reconfiguration(stream):
    """Reset or reconfigured (console, warning level): info_line is structlog's info call."""
    structlog.reset_defaults()
    logging.info_line("http.request", dict(ACCESS))  # structlog's default: stdout, no crash
    assert stream.getvalue() == ""
    quiet = io.StringIO()
    logging.configure("json", "warning", process="worker", stream=quiet, cache=False)
    logging.info_line("http.request", dict(ACCESS))
    assert quiet.getvalue() == ""
    console = io.StringIO()
    logging.configure("console", "info", process="worker", stream=console, cache=False)
    logging.info_line("http.request", dict(ACCESS))
    assert "http.request" in console.getvalue() and not console.getvalue().startswith("{")


def test_info_line_shares_structlogs_write_lock(stream):
    """Lines from other threads (the writer, readers) go through structlog's PrintLogger,
    which writes a line in two calls under a per-file lock; info_line takes the same lock
    (a structlog internal: this fails if it changes)."""
    printer = structlog.PrintLoggerFactory(file=stream)()
    assert logging._direct.lock is printer._lock
