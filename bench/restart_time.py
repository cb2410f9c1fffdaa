"""Restart time of the watchdog: from `kill -9` of a healthy API worker to the first 200 from
GET /health, over a number of kills spaced beyond the backoff reset (a worker healthy for 10 s
restarts at once), so every kill measures the "first crash after a healthy period" path.

Run: .venv/bin/python bench/restart_time.py [--kills 20] [--spacing 10.5]
(20 kills at the default spacing take about 4 minutes.) Target: median under 1 s.

/health is polled every 5 ms on a fresh connection with a short timeout. The supervisor keeps
the listening socket, so a poll made while no worker runs waits in the accept queue and is
answered as soon as the new worker accepts: the first 200 is the moment the new worker serves.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import free_port, meshd_command

POLL_EVERY = 0.005
POLL_TIMEOUT = 0.5
RECOVERY_DEADLINE = 60.0


def health_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=POLL_TIMEOUT)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_healthy(port: int, daemon: subprocess.Popen, deadline: float) -> float:
    """Poll /health every 5 ms until a 200; the perf_counter() of that answer."""
    limit = time.perf_counter() + deadline
    while True:
        if health_ok(port):
            return time.perf_counter()
        if daemon.poll() is not None:
            raise SystemExit(f"meshd exited with {daemon.returncode}")
        if time.perf_counter() > limit:
            raise SystemExit(f"no 200 from /health within {deadline} s")
        time.sleep(POLL_EVERY)


def status(data_dir: Path) -> dict:
    done = subprocess.run([*meshd_command(), "status", "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        raise SystemExit(f"meshd status failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def serving_worker(data_dir: Path, other_than: int | None) -> dict:
    """The status once a worker other than `other_than` has passed its first probe."""
    limit = time.monotonic() + RECOVERY_DEADLINE
    while True:
        data = status(data_dir)
        if data["state"] == "serving" and data["worker_pid"] not in (None, other_than):
            return data
        if time.monotonic() > limit:
            raise SystemExit(f"no new serving worker: {data}")
        time.sleep(0.05)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="number of kill -9 (default 20)")
    parser.add_argument("--spacing", type=float, default=10.5,
                        help="seconds a worker stays healthy before it is killed (default "
                             "10.5, beyond the 10 s backoff reset)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="mb"))
    data_dir = root / "data"
    port = free_port()
    log_path = root / "meshd.log"
    command = [*meshd_command(), "run", "--port", str(port), "--data-dir", str(data_dir),
               "--backup-dir", str(root / "backups"), "--log-format", "json",
               "--access-log", "false",
               # 20 kills 10.5 s apart are a crash loop by the default policy (more than 5 in
               # 60 s): this bench measures restarts, so it lifts the limit.
               "--crash-loop-limit", "1000"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MESHD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                       "WATCHDOG_PID", "PORT")}
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=root, env=env,
                                  start_new_session=True)
    times_ms: list[float] = []
    try:
        healthy_at = wait_healthy(port, daemon, RECOVERY_DEADLINE)
        worker = serving_worker(data_dir, None)["worker_pid"]
        print(f"meshd pid {daemon.pid} on port {port}; {args.kills} kills, "
              f"{args.spacing:g} s apart", flush=True)
        for n in range(1, args.kills + 1):
            time.sleep(max(0.0, healthy_at + args.spacing - time.perf_counter()))
            killed_at = time.perf_counter()
            os.kill(worker, signal.SIGKILL)
            healthy_at = wait_healthy(port, daemon, RECOVERY_DEADLINE)
            took = (healthy_at - killed_at) * 1000
            times_ms.append(took)
            new = serving_worker(data_dir, worker)
            print(f"kill {n:2d}: worker {worker} -> {new['worker_pid']}: first 200 after "
                  f"{took:7.1f} ms (restarts {new['restarts']})", flush=True)
            worker = new["worker_pid"]
        final = status(data_dir)
    finally:
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
        for child in children:  # the worker stops with its supervisor; make sure of it
            with contextlib.suppress(psutil.Error):
                child.kill()
        shutil.rmtree(root, ignore_errors=True)

    if final["restarts"] != args.kills:
        print(f"warning: the supervisor counted {final['restarts']} restarts for "
              f"{args.kills} kills", file=sys.stderr)
    print(f"kill -9 -> first 200 from /health over {len(times_ms)} kills: "
          f"median {statistics.median(times_ms):.1f} ms, "
          f"p90 {percentile(times_ms, 90):.1f} ms, max {max(times_ms):.1f} ms "
          f"(min {min(times_ms):.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
