"""Client side of the control socket: how operator commands reach the running supervisor."""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


class DaemonNotRunning(SystemExit):
    pass


def data_dir(args: Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    state = os.environ.get("STATE_DIRECTORY") or os.environ.get("MESHD_DATA_DIR")
    return Path(state.split(":")[0]) if state else Path("data")


@dataclass(frozen=True, slots=True)
class Paths:
    data_dir: Path
    database: Path | str  # str: a postgresql:// URL
    backup_dir: Path


def daemon_running(args: Namespace) -> bool:
    return (data_dir(args) / "meshd.sock").exists()


def offline_paths(args: Namespace) -> Paths:
    """Where the files are when no daemon can tell us: flags, then the usual defaults."""
    directory = data_dir(args)
    from meshd.config import parse_database

    database = parse_database(args.database) if getattr(args, "database", None) else (
        parse_database(os.environ["MESHD_DATABASE"]) if os.environ.get("MESHD_DATABASE")
        else directory / "mesh.db")
    backup_dir = Path(args.backup_dir) if getattr(args, "backup_dir", None) else Path(
        os.environ.get("MESHD_BACKUP_DIR", "backups"))
    return Paths(directory, database, backup_dir)


def call(args: Namespace, method: str, path: str, body: Any = None,
         timeout: float = 30.0) -> Any:
    """One request to the supervisor; exits with a clear message when no daemon answers."""
    import asyncio

    socket_path = data_dir(args) / "meshd.sock"
    if not socket_path.exists():
        sys.stderr.write(f"meshd: no running daemon: {socket_path} does not exist "
                         "(start it with `meshd run`, or pass --data-dir)\n")
        raise DaemonNotRunning(3)

    async def go() -> Any:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, f"http://meshd{path}", json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = {"error": f"the daemon answered {resp.status}: {text[:500]}"}
            if resp.status >= 400:
                sys.stderr.write(f"meshd: {data.get('error', data)}\n")
                raise SystemExit(1)
            return data

    try:
        return asyncio.run(go())
    except (aiohttp.ClientError, OSError) as exc:
        sys.stderr.write(f"meshd: the daemon at {socket_path} did not answer: {exc}\n")
        raise DaemonNotRunning(3) from None


def render_status(data: dict[str, Any]) -> str:
    lines = [f"meshd {data['state']}" + (f": {data['reason']}" if data.get("reason") else "")]
    for key in ("mode", "supervisor_pid", "worker_pid", "uptime_s", "worker_uptime_s",
                "restarts", "agents", "open_events", "pending_records", "last_backup",
                "listen", "data_dir", "database"):
        lines.append(f"  {key.replace('_', ' '):<16} {data.get(key)}")
    return "\n".join(lines) + "\n"
