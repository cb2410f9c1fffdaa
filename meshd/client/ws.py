"""The WebSocket to /ws, kept open for as long as the client runs: when it drops or cannot be
opened it is retried with exponential backoff and jitter, and `on_open` runs after every
successful connection before any event is handled (the caller fills the gap there)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiohttp

from meshd import log as logging
from meshd.client.backoff import Backoff, Pause
from meshd.client.errors import MeshError
from meshd.client.http import MeshHttp

log = logging.get("meshd.client.ws")

HANDSHAKE_TIMEOUT = 10.0


class EventStream:
    def __init__(self, http: MeshHttp, params: Callable[[], dict[str, str]],
                 on_open: Callable[[], Awaitable[None]],
                 on_event: Callable[[dict], Awaitable[None]], *,
                 backoff: Backoff, heartbeat: float = 20.0) -> None:
        self._http = http
        self._params = params
        self._on_open = on_open
        self._on_event = on_event
        self._backoff = backoff
        self._heartbeat = heartbeat
        self._pause = Pause()
        self.connected = False
        self.connections = 0  # successful connections so far

    def wake(self) -> None:
        """Retry now instead of at the end of the current backoff (the server is back)."""
        self._pause.wake()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._http.session.ws_connect(
                        self._http.url("/ws"), params=self._params(),
                        headers=self._http.auth_headers(), heartbeat=self._heartbeat) as ws:
                    first = await ws.receive_json(timeout=HANDSHAKE_TIMEOUT)
                    if not isinstance(first, dict) or first.get("type") != "connected":
                        raise ValueError(f"unexpected first frame {first!r}")
                    self.connected = True
                    self.connections += 1
                    attempt = 0
                    log.info("client.ws_connected", connections=self.connections)
                    await self._on_open()
                    await self._pump(ws)
                    log.info("client.ws_closed", code=ws.close_code)
            except (TimeoutError, aiohttp.ClientError, OSError, MeshError, ValueError,
                    TypeError) as exc:
                log.info("client.ws_failed", error=f"{type(exc).__name__}: {exc}",
                         attempt=attempt)
            finally:
                self.connected = False
            await self._pause.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                if frame.type == aiohttp.WSMsgType.ERROR:
                    return
                continue
            try:
                event = json.loads(frame.data)
            except ValueError:
                log.warning("client.ws_bad_frame", data=frame.data[:200])
                continue
            if not isinstance(event, dict):
                continue
            try:
                await self._on_event(event)
            except MeshError:
                raise  # the server failed under us: reconnect
            except Exception:  # noqa: BLE001 - a bug in handling one event must not end the stream
                log.exception("client.ws_event_failed", event_type=event.get("type"))
