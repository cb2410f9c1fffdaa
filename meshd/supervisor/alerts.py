"""Operator alert hooks: every critical event and protocol transition runs `alert_command`
(the event as JSON on stdin) and/or POSTs to `alert_webhook`, bounded in time. A failing hook is
logged and never blocks or fails recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from meshd import log as logging
from meshd.config import Settings

log = logging.get("meshd.alerts")


@dataclass(slots=True)
class HookFailures:
    """Failed hook calls by hook (command, webhook), for /metrics. One per process: the
    supervisor is the only sender."""

    by_hook: dict[str, int] = field(default_factory=lambda: {"command": 0, "webhook": 0})

    def add(self, hook: str) -> None:
        self.by_hook[hook] += 1


FAILURES = HookFailures()


async def send(settings: Settings, payload: dict[str, Any]) -> None:
    data = orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)  # one JSON line each
    if settings.alert_command:
        await _run_command(settings.alert_command, data, settings.alert_timeout)
    if settings.alert_webhook:
        await _post(settings.alert_webhook, data, settings.alert_timeout)


async def _run_command(command: str, data: bytes, timeout: float) -> None:
    try:
        proc = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        FAILURES.add("command")
        log.warning("alert.command_failed", error=str(exc))
        return
    try:
        _out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        FAILURES.add("command")
        log.warning("alert.command_timeout", timeout_s=timeout)
        return
    if proc.returncode != 0:
        FAILURES.add("command")
        log.warning("alert.command_failed", code=proc.returncode,
                    stderr=err.decode(errors="replace")[-500:])


async def _post(url: str, data: bytes, timeout: float) -> None:
    try:
        async with aiohttp.ClientSession() as session, session.post(
            url, data=data, headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if resp.status >= 300:
                FAILURES.add("webhook")
                log.warning("alert.webhook_failed", status=resp.status)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        FAILURES.add("webhook")
        log.warning("alert.webhook_failed", error=str(exc))
