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
import statistics
import sys

from _common import health_ok, kill_workers, meshd_daemon, meshd_status, nearest_rank, wait_for

POLL_EVERY = 0.005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="number of kill -9 (default 20)")
    parser.add_argument("--spacing", type=float, default=10.5,
                        help="seconds a worker stays healthy before it is killed (default "
                             "10.5, beyond the 10 s backoff reset)")
    args = parser.parse_args(argv)

    times_ms: list[float] = []
    # 20 kills 10.5 s apart are a crash loop by the default policy (more than 5 in 60 s): this
    # bench measures restarts, so it lifts the limit.
    with meshd_daemon(["--crash-loop-limit", "1000"], prefix="mb") as mesh:
        def answered() -> float:
            return wait_for(lambda: health_ok(mesh.port), "a 200 from /health", mesh.process,
                            every=POLL_EVERY)

        print(f"meshd pid {mesh.process.pid} on port {mesh.port}; {args.kills} kills, "
              f"{args.spacing:g} s apart", flush=True)
        for kill in kill_workers(mesh.process, mesh.data_dir, args.kills, args.spacing,
                                 answered):
            times_ms.append(kill.took_ms)
            print(f"kill {kill.n:2d}: worker {kill.old_worker} -> {kill.status['worker_pid']}: "
                  f"first 200 after {kill.took_ms:7.1f} ms (restarts {kill.status['restarts']})",
                  flush=True)
        final = meshd_status(mesh.data_dir)

    if final["restarts"] != args.kills:
        print(f"warning: the supervisor counted {final['restarts']} restarts for "
              f"{args.kills} kills", file=sys.stderr)
    print(f"kill -9 -> first 200 from /health over {len(times_ms)} kills: "
          f"median {statistics.median(times_ms):.1f} ms, "
          f"p90 {nearest_rank(times_ms, 90):.1f} ms, max {max(times_ms):.1f} ms "
          f"(min {min(times_ms):.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
