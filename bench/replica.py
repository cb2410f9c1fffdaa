"""Replicas: single-write latency (p50/p99) without a replica, with asynchronous shipping
(`replica_interval` 1 s) and with `replica_sync`; and the RPO after a host loss in each mode
(meshd SIGKILLed under write load, data and backups deleted, `meshd restore --from`).

Real servers on loopback: moto's S3 server and asyncssh's SFTP server (as in the tests).
Run: .venv/bin/python bench/replica.py [--writes 300] [--load-seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.process.harness import (  # noqa: E402
    MeshdProcess,
    WriteLoad,
    api,
    clean_env,
    write_latencies,
)
from tests.process.replica_servers import S3Server, SftpServer  # noqa: E402

FLAGS = ["--access-log", "false", "--backup-interval", "1h", "--log-level", "warning"]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def host_loss(proc: MeshdProcess, url: str, env: dict, root: Path, seconds: float
                    ) -> tuple[int, int, float]:
    """(acknowledged writes lost, acknowledged writes, seconds of writes lost)."""
    load = WriteLoad(proc, "rpo")
    samples: list[tuple[float, int]] = []

    async def clock():
        while not load.stop.is_set():
            samples.append((time.monotonic(), len(load.acked)))
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(load.run(4)), asyncio.create_task(clock())]
    await asyncio.sleep(seconds)  # a bench: the load runs for a fixed time
    killed = time.monotonic()
    proc.kill_tree()
    load.stop.set()
    await asyncio.gather(*tasks)
    shutil.rmtree(proc.data_dir)
    shutil.rmtree(proc.backup_dir)
    new = MeshdProcess(root / "restored")
    new.root.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "meshd", "restore", "--yes", "--from", url, "--data-dir",
         str(new.data_dir), "--backup-dir", str(new.backup_dir), "--json"],
        capture_output=True, text=True, env=clean_env(env), timeout=300)
    assert done.returncode == 0, done.stderr
    new.start(FLAGS)
    try:
        new.wait_serving(timeout=60)
        async with aiohttp.ClientSession() as session:
            _, agents = await api(session, new, "GET", "/api/agents")
        names = {a["name"] for a in agents}
    finally:
        new.kill_tree()
    lost = [i for i, n in enumerate(load.acked) if n not in names]
    first_lost = next((t for t, n in samples if lost and n > lost[0]), killed)
    return len(lost), len(load.acked), killed - first_lost if lost else 0.0


async def mode(name: str, extra: list[str], env: dict, url: str | None, args) -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="mb"))
    try:
        proc = MeshdProcess(root)
        proc.start([*FLAGS, *extra], env=env)
        proc.wait_serving(timeout=60)
        lat = await write_latencies(proc, "lat", args.writes)
        line = (f"{name:<34} write p50 {pct(lat, 0.5):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms"
                f"  mean {statistics.mean(lat) * 1000:6.1f} ms")
        if url:
            lost, acked, seconds = await host_loss(proc, url, env, root, args.load_seconds)
            line += f"  | host loss: {lost}/{acked} acknowledged writes lost ({seconds:.2f} s)"
        proc.kill_tree()
        print(line, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--load-seconds", type=float, default=3.0)
    args = parser.parse_args()
    servers = Path(tempfile.mkdtemp(dir="/tmp", prefix="mbs"))
    s3 = S3Server(servers / "s3").start()
    sftp = SftpServer(servers / "sftp").start()
    env = {**s3.env, **sftp.env}
    try:
        await mode("no replica", [], env, None, args)
        for kind, url in (("s3", s3.url), ("sftp", sftp.url)):
            await mode(f"{kind}, replica_interval 1s", ["--replica", url(f"a{kind}")], env,
                       url(f"a{kind}"), args)
            await mode(f"{kind}, replica_sync", ["--replica", url(f"s{kind}"),
                                                  "--replica-sync"], env, url(f"s{kind}"), args)
    finally:
        s3.stop()
        sftp.stop()
        shutil.rmtree(servers, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
