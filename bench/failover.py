"""Failover time under write load: from `kill -9` of the API worker to the first answered API
read (GET /api/agents/:id, 200), with and without the warm standby worker.

Run: .venv/bin/python bench/failover.py [--kills 10] [--spacing 11] [--writers 4]
                                        [--mode both|standby|cold] [--keep]
(10 kills per mode at the default spacing take about 2 minutes per mode.)
Target (issue 14): median under 150 ms with the standby.

Writers (threads, keep-alive connections) register uniquely named agents without pause during
the whole run; a reader thread asks for one agent every 5 ms on a fresh connection. Each kill
waits until the worker has been healthy for `--spacing` seconds (beyond the 10 s backoff reset,
so every kill takes the "first crash after a healthy period" path) and, with the standby, until
a new standby said it is ready. The supervisor keeps the listening socket, so a read made while
no worker runs waits in the accept queue: the first 200 is the moment the new worker serves.
At the end every acknowledged write is looked up: a missing one is reported and fails the run.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _common import clean_env, free_port, meshd_command

KEY = "bench-failover-key"
POLL_EVERY = 0.005
POLL_TIMEOUT = 2.0
DEADLINE = 60.0
TARGET_MS = 150.0


def request(port: int, method: str, path: str, body: dict | None = None,
            conn: http.client.HTTPConnection | None = None, timeout: float = POLL_TIMEOUT
            ) -> tuple[int, dict | str]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode(errors="replace")
    finally:
        if own:
            conn.close()


@dataclass
class Writers:
    """Threads registering unique agents back to back; `acked` holds each 2xx agent id."""

    port: int
    count: int
    acked: list[str] = field(default_factory=list)
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.count):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = 0
        while not self.stop.is_set():
            name = f"w{n}-{i}"
            i += 1
            try:
                status, body = request(self.port, "POST", "/api/agents/register",
                                       {"name": name}, conn=conn)
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                time.sleep(0.01)
                continue
            if 200 <= status < 300:
                self.acked.append(body["agentId"])
            else:
                self.failed += 1
        conn.close()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def status(data_dir: Path) -> dict:
    done = subprocess.run([*meshd_command(), "status", "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=15, env=clean_env())
    if done.returncode == 3:
        return {"state": None, "worker_pid": None}  # the control socket is not up yet
    if done.returncode != 0:
        raise SystemExit(f"meshd status failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def wait_for(check, what: str, daemon: subprocess.Popen, every: float = 0.05):
    limit = time.monotonic() + DEADLINE
    while True:
        found = check()
        if found:
            return found
        if daemon.poll() is not None:
            raise SystemExit(f"meshd exited with {daemon.returncode}")
        if time.monotonic() > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def first_read(port: int, agent_id: str, daemon: subprocess.Popen) -> float:
    """Ask for the agent every 5 ms on a fresh connection until a 200; when it came."""
    def answered() -> float | None:
        try:
            code, _ = request(port, "GET", f"/api/agents/{agent_id}")
        except (OSError, http.client.HTTPException):
            return None
        return time.perf_counter() if code == 200 else None

    return wait_for(answered, "an answered API read", daemon, every=POLL_EVERY)


def serving_other_than(data_dir: Path, old: int) -> dict | None:
    data = status(data_dir)
    return data if data["state"] == "serving" and data["worker_pid"] not in (None, old) else None


def ready_standby(data_dir: Path) -> dict | None:
    standby = status(data_dir).get("standby")
    return standby if standby and standby["ready"] else None


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run_mode(standby: bool, kills: int, spacing: float, writers: int,
             keep: bool = False) -> dict:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="mf"))
    data_dir = root / "data"
    port = free_port()
    command = [*meshd_command(), "run", "--port", str(port), "--data-dir", str(data_dir),
               "--backup-dir", str(root / "backups"), "--log-format", "json",
               "--access-log", "false", "--api-key", KEY,
               "--standby", "true" if standby else "false",
               # kills 11 s apart are a crash loop by the default policy: lift the limit
               "--crash-loop-limit", "1000"]
    label = "standby" if standby else "cold start"
    with open(root / "meshd.log", "wb") as log:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=root, env=clean_env(),
                                  start_new_session=True)
    load = Writers(port, writers)
    times_ms: list[float] = []
    standby_rss: list[float] = []
    try:
        wait_for(lambda: status(data_dir)["state"] == "serving", "a serving worker", daemon)
        code, body = request(port, "POST", "/api/agents/register", {"name": "probe-target"})
        assert code in (200, 201), (code, body)
        agent_id = body["agentId"]
        load.start()
        worker = status(data_dir)["worker_pid"]
        healthy_at = time.perf_counter()
        print(f"[{label}] meshd pid {daemon.pid} on port {port}; {kills} kills, "
              f"{spacing:g} s apart, {writers} writers", flush=True)
        for n in range(1, kills + 1):
            time.sleep(max(0.0, healthy_at + spacing - time.perf_counter()))
            if standby:
                ready = wait_for(lambda: ready_standby(data_dir), "a ready standby", daemon)
                standby_rss.append(ready["rss_mb"])
            killed_at = time.perf_counter()
            os.kill(worker, signal.SIGKILL)
            answered_at = first_read(port, agent_id, daemon)
            took = (answered_at - killed_at) * 1000
            times_ms.append(took)
            new = wait_for(lambda old=worker: serving_other_than(data_dir, old),
                           "a new serving worker", daemon)
            healthy_at = time.perf_counter()
            print(f"[{label}] kill {n:2d}: worker {worker} -> {new['worker_pid']}: first API "
                  f"read after {took:7.1f} ms (restarts {new['restarts']}, promotions "
                  f"{new.get('promotions', 0)})", flush=True)
            worker = new["worker_pid"]
        load.join()
        missing = [agent for agent in load.acked[:: max(1, len(load.acked) // 2000)]
                   if not agent_present(port, agent)]
        final = status(data_dir)
    finally:
        load.join()
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
        if keep:
            print(f"[{label}] kept {root} (meshd.log has the timeline)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {"label": label, "times": times_ms, "acked": len(load.acked),
            "checked": len(load.acked[:: max(1, len(load.acked) // 2000)]),
            "missing": missing, "restarts": final["restarts"],
            "promotions": final.get("promotions", 0), "standby_rss": standby_rss}


def agent_present(port: int, agent_id: str) -> bool:
    """An acknowledged registration is in the mesh."""
    code, _ = request(port, "GET", f"/api/agents/{agent_id}", timeout=10)
    return code == 200


def report(result: dict) -> str:
    times = result["times"]
    line = (f"{result['label']:<10} kill -9 -> first API read over {len(times)} kills: "
            f"median {statistics.median(times):.1f} ms, p90 {percentile(times, 90):.1f} ms, "
            f"max {max(times):.1f} ms (min {min(times):.1f} ms); "
            f"restarts {result['restarts']}, promotions {result['promotions']}; "
            f"{result['acked']} acknowledged writes, {result['checked']} checked, "
            f"{len(result['missing'])} missing")
    if result["standby_rss"]:
        line += f"; standby RSS {statistics.median(result['standby_rss']):.1f} MB"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per mode (default 10)")
    parser.add_argument("--spacing", type=float, default=11.0,
                        help="seconds a worker serves before it is killed (default 11, "
                             "beyond the 10 s backoff reset)")
    parser.add_argument("--writers", type=int, default=4, help="writer threads (default 4)")
    parser.add_argument("--mode", choices=("both", "standby", "cold"), default="both")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and log")
    args = parser.parse_args(argv)
    modes = {"both": (False, True), "standby": (True,), "cold": (False,)}[args.mode]
    results = [run_mode(standby, args.kills, args.spacing, args.writers, args.keep) for standby in modes]
    print()
    for result in results:
        print(report(result))
    failed = False
    for result in results:
        if result["missing"]:
            failed = True
            print(f"LOST acknowledged writes ({result['label']}): {result['missing'][:10]}",
                  file=sys.stderr)
        if result["label"] == "standby":
            median = statistics.median(result["times"])
            print(f"target median < {TARGET_MS:g} ms with the standby: "
                  f"{'met' if median < TARGET_MS else 'MISS'} ({median:.1f} ms)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
