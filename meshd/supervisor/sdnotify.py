"""The systemd notify protocol: datagrams on the unix socket named by $NOTIFY_SOCKET.

A few lines need no library (the `sdnotify` package swallows errors); failures are logged.
Without NOTIFY_SOCKET every call is a no-op, so meshd runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket

from meshd import log as logging

log = logging.get("meshd.sdnotify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog_for_us = pid is None or pid == str(os.getpid())
        self.watchdog_interval = (
            int(usec) / 1e6 / 2 if usec and usec.isdigit() and watchdog_for_us else None
        )
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("sdnotify.send_failed", error=str(exc), message=lines[0][:40])
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None
