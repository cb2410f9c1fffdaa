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
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import kill_workers, meshd_daemon, meshd_status, nearest_rank, wait_for, wait_serving

KEY = "bench-failover-key"
POLL_EVERY = 0.005
POLL_TIMEOUT = 2.0
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


def first_read(port: int, agent_id: str, daemon: subprocess.Popen) -> float:
    """Ask for the agent every 5 ms on a fresh connection until a 200; when it came."""
    def answered() -> float | None:
        try:
            code, _ = request(port, "GET", f"/api/agents/{agent_id}")
        except (OSError, http.client.HTTPException):
            return None
        return time.perf_counter() if code == 200 else None

    return wait_for(answered, "an answered API read", daemon, every=POLL_EVERY)


def ready_standby(data_dir: Path) -> dict | None:
    standby = (meshd_status(data_dir) or {}).get("standby")
    return standby if standby and standby["ready"] else None


def run_mode(standby: bool, kills: int, spacing: float, writers: int,
             keep: bool = False) -> dict:
    label = "standby" if standby else "cold start"
    times_ms: list[float] = []
    standby_rss: list[float] = []
    # kills 11 s apart are a crash loop by the default policy: lift the limit
    with meshd_daemon(["--api-key", KEY, "--standby", "true" if standby else "false",
                       "--crash-loop-limit", "1000"], prefix="mf", keep=keep) as mesh:
        port, daemon = mesh.port, mesh.process

        def standby_ready() -> None:
            if standby:
                ready = wait_for(lambda: ready_standby(mesh.data_dir), "a ready standby",
                                 daemon)
                standby_rss.append(ready["rss_mb"])

        load = Writers(port, writers)
        try:
            wait_serving(mesh.data_dir, daemon)
            code, body = request(port, "POST", "/api/agents/register", {"name": "probe-target"})
            assert code in (200, 201), (code, body)
            agent_id = body["agentId"]
            load.start()
            print(f"[{label}] meshd pid {daemon.pid} on port {port}; {kills} kills, "
                  f"{spacing:g} s apart, {writers} writers", flush=True)
            for kill in kill_workers(daemon, mesh.data_dir, kills, spacing,
                                     lambda: first_read(port, agent_id, daemon), standby_ready):
                times_ms.append(kill.took_ms)
                new = kill.status
                print(f"[{label}] kill {kill.n:2d}: worker {kill.old_worker} -> "
                      f"{new['worker_pid']}: first API read after {kill.took_ms:7.1f} ms "
                      f"(restarts {new['restarts']}, promotions {new.get('promotions', 0)})",
                      flush=True)
        finally:
            load.join()
        checked = load.acked[:: max(1, len(load.acked) // 2000)]
        missing = [agent for agent in checked if not agent_present(port, agent)]
        final = meshd_status(mesh.data_dir)
    return {"label": label, "times": times_ms, "acked": len(load.acked),
            "checked": len(checked), "missing": missing, "restarts": final["restarts"],
            "promotions": final.get("promotions", 0), "standby_rss": standby_rss}


def agent_present(port: int, agent_id: str) -> bool:
    """An acknowledged registration is in the mesh."""
    code, _ = request(port, "GET", f"/api/agents/{agent_id}", timeout=10)
    return code == 200


def report(result: dict) -> str:
    times = result["times"]
    line = (f"{result['label']:<10} kill -9 -> first API read over {len(times)} kills: "
            f"median {statistics.median(times):.1f} ms, p90 {nearest_rank(times, 90):.1f} ms, "
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
    results = [run_mode(standby, args.kills, args.spacing, args.writers, args.keep)
               for standby in modes]
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
