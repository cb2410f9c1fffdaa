"""Helpers the bench scripts share: a free loopback port, the meshd command, a clean
environment (no meshd or systemd variables leaking in from the caller's shell)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def meshd_command() -> list[str]:
    script = Path(sys.executable).parent / "meshd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshd"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MESHD_") and k not in (
                "PORT", "AGENT_MESH_API_KEY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
