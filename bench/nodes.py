"""Message throughput and latency with 1, 2 and 3 meshd nodes on one PostgreSQL database
(issue 19): POST /api/messages from closed-loop keep-alive clients spread over the nodes
(client n talks to node n % N), each node a whole `meshd run` on one throwaway local cluster
(tests/pgcluster.py: initdb, loopback, default settings, fsync on).

Run: .venv/bin/python bench/nodes.py [--seconds 10] [--warmup 2] [--clients 32]
                                     [--nodes 1 2 3] [--before DIR] [--ab-nodes 1]
                                     [--rounds 1] [--source DIR] [--keep]
`--source DIR` runs the node table from another source tree; `--before DIR`: also run `--ab-nodes` (default 1) from another source tree (PYTHONPATH=DIR,
e.g. `git archive` of the commit before the commit-order change), alternating with this tree
`--rounds` times, so background load on the machine hits both alike.

Besides requests/s and latency it prints the CPU time per request of all meshd processes
(every node's supervisor, worker and standby) and of PostgreSQL's processes: on a shared
machine steadier than requests/s. Everything (the nodes, PostgreSQL and this Python load
generator) shares the machine's cores, so more nodes add CPU contention, not capacity, here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import orjson
from _common import child_pids, closed_loop, cpu_seconds, free_port, meshd_command, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
AGENTS = 20


class Node:
    """One `meshd run` (supervisor, worker, standby) in a temp dir of its own."""

    def __init__(self, database: str, source: str | None, keep: bool = False) -> None:
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="mnodes"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = meshd_command()
        if source:  # run another tree's meshd with this venv's packages
            env["PYTHONPATH"] = source
            command = [sys.executable, "-m", "meshd"]
        self.log = (self.root / "meshd.log").open("w")
        self.proc = subprocess.Popen(
            [*command, "run", "--port", str(self.port), "--data-dir", str(self.root / "data"),
             "--backup-dir", str(self.root / "backups"), "--api-key", KEY, "--log-format",
             "json", "--access-log", "false", "--database", database],
            stdout=self.log, stderr=self.log, env=env, cwd=self.root)

    def pids(self) -> list[int]:
        return [self.proc.pid, *child_pids(self.proc.pid)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if self.keep:
            print(f"  kept {self.root} (its log: meshd.log)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def postgres_pids(cluster) -> list[int]:
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return [postmaster, *child_pids(postmaster)]


async def measure(cluster, name: str, count: int, args: argparse.Namespace,
                  source: str | None = None) -> dict:
    """`count` nodes on a fresh database, agents registered, then the message load."""
    database = cluster.create_database(name)
    nodes = [Node(database, source, args.keep)]
    try:
        await wait_healthy(nodes[0].url)  # the first migrates the schema alone
        nodes += [Node(database, source, args.keep) for _ in range(count - 1)]
        for node in nodes:
            await wait_healthy(node.url)
        ids = []
        async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as session:
            for i in range(AGENTS):
                async with session.post(nodes[i % count].url + "/api/agents/register",
                                        json={"name": f"bench-{i}"}) as resp:
                    ids.append((await resp.json())["agentId"])

        def write(n: int, i: int):
            body = {"from": ids[n % AGENTS], "to": ids[(n + 1) % AGENTS],
                    "content": f"message {i} from client {n}"}
            return "POST", "/api/messages", orjson.dumps(body), \
                {"Content-Type": "application/json"}

        meshd_pids = [p for node in nodes for p in node.pids()]
        pg_pids = postgres_pids(cluster)
        pg_before = sum(_cpu(p) for p in pg_pids)
        result = await closed_loop([node.url for node in nodes], write, seconds=args.seconds,
                                   clients=args.clients, warmup=args.warmup,
                                   headers={"X-API-Key": KEY}, cpu_of=meshd_pids)
        # PostgreSQL's CPU over warmup + measure (its backends live as long as the pools).
        pg_used = sum(_cpu(p) for p in pg_pids) - pg_before
        total = result["requests"] * (args.seconds + args.warmup) / args.seconds
        result["pg_cpu_us"] = pg_used / max(total, 1) * 1e6
        return result
    finally:
        for node in nodes:
            node.stop()


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def row(label: str, r: dict) -> str:
    return (f"{label:<34}{r['rps']:>8.0f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
            f"{r['max_ms']:>8.0f}{r['cpu_us'] or 0:>14.0f}{r['pg_cpu_us']:>11.0f}"
            f"{r['errors']:>7}")


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from tests import pgcluster

    print(f"POST /api/messages, {args.clients} closed-loop keep-alive clients spread over the "
          f"nodes, {args.warmup:g} s warm-up + {args.seconds:g} s measured, one local "
          f"PostgreSQL cluster, {os.cpu_count()} cores shared by everything")
    print(f"{'configuration':<34}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
          f"{'meshd us/req':>14}{'pg us/req':>11}{'errors':>7}")
    with pgcluster.throwaway_cluster() as cluster:
        n = 0
        for count in args.nodes:
            n += 1
            result = await measure(cluster, f"bench{n}", count, args, args.source)
            print(row(f"{count} node{'s' if count > 1 else ''}", result), flush=True)
            if result["errors"]:
                print(f"  statuses: {result['statuses']}", flush=True)
        if args.before:
            for _ in range(args.rounds):
                for count in args.ab_nodes:
                    for label, source in ((f"{count}, before", args.before),
                                          (f"{count}, this tree", None)):
                        n += 1
                        result = await measure(cluster, f"bench{n}", count, args, source)
                        print(row(label, result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--before", help="another source tree to run 1 node from (A/B)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ab-nodes", type=int, nargs="+", default=[1],
                        help="node counts of the --before A/B rounds")
    parser.add_argument("--source", help="run the node table from another source tree")
    parser.add_argument("--keep", action="store_true", help="keep each node's dir and log")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
