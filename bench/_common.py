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


async def wait_healthy(url: str, timeout: float = 60) -> None:
    """Poll GET /health until it answers 200 (SystemExit past the deadline)."""
    import asyncio
    import time

    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become healthy")


def percentile(sorted_values: list[float], share: float) -> float:
    """The value below which `share` of the sorted values fall (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = max(0, min(len(sorted_values) - 1, int(len(sorted_values) * share + 0.5) - 1))
    return sorted_values[index]


async def closed_loop(url: str | list[str], make_request, *, seconds: float, clients: int,
                      warmup: float = 0.0, headers: dict[str, str] | None = None,
                      ok=(200,), cpu_of: int | list[int] | None = None) -> dict:
    """A closed-loop load generator: `clients` keep-alive connections, each sending its next
    request as soon as the previous answer is read. `make_request(client, i)` gives
    (method, path, body bytes or None, extra headers or None). Requests answered during the
    first `warmup` seconds are not counted; then `seconds` are measured. With `cpu_of` (a
    pid), also the CPU time that process used per measured request (`cpu_us`): on a shared
    machine a steadier figure than requests/s, which moves with everyone else's load.
    With a list of URLs (several meshd nodes), client n sends to `url[n % len(url)]`; with a
    list of pids, `cpu_us` is their CPU time together."""
    import asyncio
    import time

    import aiohttp

    urls = [url] if isinstance(url, str) else url
    pids = [cpu_of] if isinstance(cpu_of, int) else (cpu_of or [])
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    started = time.monotonic()
    measure_from = started + warmup
    stop = measure_from + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, headers=headers or {},
                                     timeout=timeout) as session:
        async def client(n: int) -> None:
            nonlocal errors
            i = 0
            while (now := time.monotonic()) < stop:
                i += 1
                method, path, body, extra = make_request(n, i)
                sent = time.perf_counter()
                async with session.request(method, urls[n % len(urls)] + path, data=body,
                                           headers=extra) as resp:
                    await resp.read()
                    status = resp.status
                elapsed = time.perf_counter() - sent
                if now >= measure_from:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status not in ok:
                        errors += 1

        cpu_marks: list[float] = []
        if pids:
            asyncio.get_running_loop().call_later(
                warmup, lambda: cpu_marks.append(sum(cpu_seconds(p) for p in pids)))
        await asyncio.gather(*(client(n) for n in range(clients)))
        if cpu_marks:
            cpu_marks.append(sum(cpu_seconds(p) for p in pids))
    measured = max(time.monotonic() - measure_from, 1e-9)
    latencies.sort()
    return {
        "requests": len(latencies), "errors": errors, "statuses": statuses,
        "rps": len(latencies) / measured,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "cpu_us": ((cpu_marks[1] - cpu_marks[0]) / len(latencies) * 1e6
                   if len(cpu_marks) == 2 and latencies else None),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (from /proc), e.g. the worker under meshd's supervisor."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
