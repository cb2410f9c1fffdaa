"""Helpers the bench scripts share: a free loopback port, the meshd command, a clean
environment (no meshd or systemd variables leaking in from the caller's shell), a load
generator, and a daemon to start, ask, kill workers of and stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


# -- a meshd daemon for the kill benches (failover.py, restart_time.py) ----------------------

DAEMON_DEADLINE = 60.0


def nearest_rank(values: list[float], p: float) -> float:
    """The nearest-rank `p`th percentile (0-100) of unsorted values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def start_meshd(root: Path, args: list[str]) -> subprocess.Popen:
    """`meshd run ARGS` in `root` (its output in root/meshd.log), in its own session so the
    whole tree can be killed, with a clean environment."""
    with open(root / "meshd.log", "wb") as log:
        return subprocess.Popen([*meshd_command(), "run", *args], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env=clean_env(), start_new_session=True)


def health_ok(port: int, timeout: float = 0.5) -> float | None:
    """The perf_counter() of a 200 from GET /health on a fresh connection, else None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return time.perf_counter() if conn.getresponse().status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Mesh:
    """A running `meshd run` of a bench, in its own temporary directory."""

    root: Path
    port: int
    process: subprocess.Popen

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "meshd.log"


@contextlib.contextmanager
def meshd_daemon(args: list[str], prefix: str = "meshd-bench-",
                 keep: bool = False) -> Iterator[Mesh]:
    """`meshd run` on a free port with a fresh data and backup directory and JSON logs without
    an access log, plus `args`; yielded once GET /health answers 200. Stopped (and its
    directory removed, unless `keep`) on the way out, whatever happened."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    port = free_port()
    process = start_meshd(root, [
        "--port", str(port), "--data-dir", str(root / "data"),
        "--backup-dir", str(root / "backups"), "--log-format", "json",
        "--access-log", "false", *args])
    try:
        wait_for(lambda: health_ok(port), "GET /health to answer 200", process, every=0.05)
        yield Mesh(root, port, process)
    finally:
        stop_meshd(process)
        if keep:
            print(f"kept {root} (meshd.log has the timeline)")
        else:
            shutil.rmtree(root, ignore_errors=True)


def tree_rss(root) -> int:
    """RSS in bytes summed over a psutil.Process and its descendants (supervisor, worker)."""
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def stop_meshd(daemon: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL of its process group past 30 s; its children (the worker, the
    standby) are killed in any case, should one outlive its supervisor."""
    import psutil

    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(daemon.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(5)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


def meshd_status(data_dir: Path) -> dict | None:
    """`meshd status --json`; None while no daemon answers (exit 3: not started yet)."""
    done = subprocess.run([*meshd_command(), "status", "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=15, env=clean_env())
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise SystemExit(f"meshd status failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def wait_for(check, what: str, daemon: subprocess.Popen, every: float = 0.05,
             deadline: float = DAEMON_DEADLINE):
    """Call `check` every `every` s until it gives something true, and give that; SystemExit
    when the daemon exits or past the deadline."""
    limit = time.monotonic() + deadline
    while True:
        found = check()
        if found:
            return found
        if daemon.poll() is not None:
            raise SystemExit(f"meshd exited with {daemon.returncode}")
        if time.monotonic() > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def wait_settled(data_dir: Path, daemon: subprocess.Popen) -> dict:
    """The status once a worker serves and the warm standby (on by default) is imported and
    waiting: a memory baseline taken earlier would count the standby's start as growth."""
    def settled() -> dict | None:
        status = meshd_status(data_dir)
        if not status or status.get("state") != "serving":
            return None
        return status if (status.get("standby") or {}).get("ready") else None

    return wait_for(settled, "a serving worker and a ready standby", daemon, every=0.2)


def wait_serving(data_dir: Path, daemon: subprocess.Popen, other_than: int | None = None
                 ) -> dict:
    """The status once a worker other than `other_than` has passed its first probe."""
    def serving() -> dict | None:
        data = meshd_status(data_dir)
        return data if data and data["state"] == "serving" \
            and data["worker_pid"] not in (None, other_than) else None

    return wait_for(serving, "a serving worker", daemon)


@dataclass(frozen=True, slots=True)
class Kill:
    n: int
    old_worker: int
    status: dict  # meshd status once the new worker serves
    took_ms: float  # from the kill to the moment `answered` returned


def kill_workers(daemon: subprocess.Popen, data_dir: Path, kills: int, spacing: float,
                 answered, before_kill=None) -> Iterator[Kill]:
    """`kill -9` the serving worker `kills` times, each once it has served for `spacing`
    seconds (beyond the 10 s backoff reset, every kill takes the "first crash after a healthy
    period" path). `answered()` blocks until the mesh answers again and gives that moment
    (perf_counter); `before_kill()`, if given, runs just before each kill (e.g. waiting for a
    ready standby)."""
    worker = wait_serving(data_dir, daemon)["worker_pid"]
    healthy_at = time.perf_counter()
    for n in range(1, kills + 1):
        time.sleep(max(0.0, healthy_at + spacing - time.perf_counter()))
        if before_kill is not None:
            before_kill()
        killed_at = time.perf_counter()
        os.kill(worker, signal.SIGKILL)
        took = (answered() - killed_at) * 1000
        new = wait_serving(data_dir, daemon, worker)
        healthy_at = time.perf_counter()
        yield Kill(n, worker, new, took)
        worker = new["worker_pid"]
