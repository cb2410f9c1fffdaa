"""Off-site replicas with real servers on loopback: moto's S3 server and an asyncssh SFTP
server. The host is lost under write load (meshd killed, data and backups deleted); `meshd
restore --from` on a new directory brings back every write acknowledged before the last
shipped interval. A replica that goes away opens `replica_failed` and shipping catches up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from meshd.store import journal as jr
from tests.process.harness import (
    MeshdProcess,
    WriteLoad,
    api,
    async_poll,
    clean_env,
    write_latencies,
)
from tests.process.replica_servers import S3Server, SftpServer

pytestmark = pytest.mark.process

FAST = ("--access-log", "false", "--backup-interval", "1h")


def cli(proc: MeshdProcess, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args, "--data-dir", str(proc.data_dir),
         "--backup-dir", str(proc.backup_dir), "--json"],
        capture_output=True, text=True, timeout=120, env=clean_env(env), cwd=proc.root,
        stdin=subprocess.DEVNULL)


def local_seq(data_dir: Path) -> int:
    """The last sequence in the local journal (what the worker has acknowledged)."""
    segments = jr.list_segments(data_dir / "journal")
    if not segments:
        return 0
    last, _end, _torn = jr.scan_segment(segments[-1].path)
    return last or segments[-1].first_seq - 1


def replicas(proc: MeshdProcess) -> list[dict]:
    return proc.status()["replicas"]


async def wait_shipped(proc: MeshdProcess, seq: int, backups: int = 1,
                       timeout: float = 60) -> None:
    def done() -> bool:
        rows = replicas(proc)
        return all(r["ok"] and (r["shipped_seq"] or 0) >= seq and (r["backups"] or 0) >= backups
                   for r in rows)

    await async_poll(lambda: asyncio.to_thread(done), timeout,
                     f"every replica to hold journal seq {seq}", interval=0.2)


async def agent_names(proc: MeshdProcess) -> set[str]:
    async with aiohttp.ClientSession() as session:
        status, body = await api(session, proc, "GET", "/api/agents?limit=100000")
    assert status == 200, body
    return {a["name"] for a in body}


class AckClock:
    """Samples how many writes were acknowledged, so a lost write's acknowledgement time
    (and so the RPO in seconds) can be told after the fact."""

    def __init__(self, load: WriteLoad) -> None:
        self.load, self.samples = load, []

    async def run(self) -> None:
        while not self.load.stop.is_set():
            self.samples.append((time.monotonic(), len(self.load.acked)))
            await asyncio.sleep(0.01)

    def acked_at(self, index: int) -> float:
        return next(t for t, n in self.samples if n > index)


async def test_host_loss_restore_from_s3_and_from_sftp(meshd_proc, tmp_path):
    s3 = S3Server(tmp_path / "s3").start()
    sftp = SftpServer(tmp_path / "sftp").start()
    try:
        env = {**s3.env, **sftp.env}
        proc = meshd_proc()
        proc.start([*FAST, "--replica", f"{s3.url()},{sftp.url()}", "--drill-interval", "2s"],
                   env=env)
        proc.wait_serving(timeout=30)

        def drilled() -> bool:
            return all((r["last_drill"] or {}).get("ok") for r in replicas(proc))

        await async_poll(lambda: asyncio.to_thread(drilled), 60,
                         "a passing restore drill of each replica", interval=0.2)
        load = WriteLoad(proc, "w")
        clock = AckClock(load)
        tasks = [asyncio.create_task(load.run(4)), asyncio.create_task(clock.run())]
        await async_poll(lambda: len(load.acked) >= 150, 60, "150 acknowledged writes")
        done = await asyncio.to_thread(cli, proc, env, "backup")  # shipped as well
        assert done.returncode == 0, done.stderr
        await async_poll(lambda: len(load.acked) >= 400, 60, "400 acknowledged writes")
        # Everything acknowledged so far is at or below this sequence; once both replicas
        # hold it, the host may go.
        acked_before = list(load.acked)
        await wait_shipped(proc, local_seq(proc.data_dir), backups=2)
        await async_poll(lambda: len(load.acked) >= len(acked_before) + 50, 30, "more writes")
        killed_at = time.monotonic()
        proc.kill_tree()  # the host is lost, mid-load
        load.stop.set()
        await asyncio.gather(*tasks)
        acked_all = list(load.acked)
        shutil.rmtree(proc.data_dir)
        shutil.rmtree(proc.backup_dir)

        for url in (s3.url(), sftp.url()):
            new = meshd_proc()
            done = await asyncio.to_thread(cli, new, env, "restore", "--yes", "--from", url)
            assert done.returncode == 0, done.stderr
            assert "secret" not in done.stdout + done.stderr
            new.start(FAST)
            new.wait_serving(timeout=30)
            names = await agent_names(new)
            missing = set(acked_before) - names
            assert not missing, f"{url}: {len(missing)} shipped writes missing"
            assert names <= set(acked_all) | {f[1] for f in load.failures}
            lost = [i for i, n in enumerate(acked_all) if n not in names]
            rpo = killed_at - clock.acked_at(lost[0]) if lost else 0.0
            sys.stderr.write(f"\nRPO {url.split(':')[0]} (replica_interval 1s): {len(lost)} of "
                             f"{len(acked_all)} acknowledged writes lost, {rpo:.3f} s\n")
            new.kill_tree()
        # `meshd replicas` lists what each holds.
        done = await asyncio.to_thread(cli, proc, env, "replicas", "--from", s3.url(),
                                       "--from", sftp.url(), "--drill")
        assert done.returncode == 0, done.stderr + done.stdout
        import json

        rows = json.loads(done.stdout)
        assert [len(r["backups"]) for r in rows] == [2, 2]
        assert all(r["journal"][0]["gaps"] == 0 and r["drill"]["ok"] for r in rows)
    finally:
        s3.stop()
        sftp.stop()


async def test_replica_outage_opens_event_keeps_serving_and_catches_up(meshd_proc, tmp_path):
    sftp = SftpServer(tmp_path / "sftp").start()
    try:
        proc = meshd_proc()
        alerts = tmp_path / "alerts.jsonl"
        key_file = tmp_path / "replica.key"  # this replica is encrypted client-side
        key_file.write_text(os.urandom(32).hex() + "\n")
        proc.start([*FAST, "--replica", sftp.url(), "--replica-interval", "200ms",
                    "--replica-key-file", str(key_file),
                    "--alert-command", f"cat >> {alerts}"], env=sftp.env)
        proc.wait_serving(timeout=30)
        await wait_shipped(proc, local_seq(proc.data_dir))
        load = WriteLoad(proc, "o")
        task = asyncio.create_task(load.run(2))
        latencies: dict[str, list[float]] = {"up": [], "down": []}

        async def probe(phase: str, session: aiohttp.ClientSession) -> None:
            started = time.perf_counter()
            status, _ = await api(session, proc, "GET", "/api/agents?limit=1")
            assert status == 200
            latencies[phase].append(time.perf_counter() - started)

        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                await probe("up", session)
            sftp.stop()

            async def event(status: str) -> bool:
                code, events = await api(session, proc, "GET", "/api/catastrophe")
                return code == 200 and any(e["event_type"] == "replica_failed"
                                           and e["status"] == status for e in events)

            await async_poll(lambda: event("active"), 30, "an active replica_failed event")
            for _ in range(50):
                await probe("down", session)
            row = (await asyncio.to_thread(replicas, proc))[0]
            assert not row["ok"] and row["last_error"]
            acked_during = len(load.acked)
            await async_poll(lambda: len(load.acked) > acked_during + 20, 30,
                             "writes acknowledged while the replica is down")
            sftp.start()
            await async_poll(lambda: event("resolved"), 60, "the replica_failed event resolved")
        load.stop.set()
        await task
        assert not load.server_errors()
        sent = [json.loads(line)["event"] for line in alerts.read_text().splitlines()]
        assert [(e["event_type"], e["status"]) for e in sent] == [
            ("replica_failed", "active"), ("replica_failed", "resolved")]
        await wait_shipped(proc, local_seq(proc.data_dir))
        for phase, values in latencies.items():
            values.sort()
            sys.stderr.write(f"\nGET latency with replica {phase}: p50 "
                             f"{statistics.median(values) * 1000:.1f} ms, p99 "
                             f"{values[int(len(values) * 0.99) - 1] * 1000:.1f} ms\n")
        # Caught up: a restore from the replica holds every acknowledged write.
        proc.kill_tree()
        new = meshd_proc()
        done = await asyncio.to_thread(cli, new, sftp.env, "restore", "--yes", "--from", sftp.url())
        assert done.returncode != 0 and "is encrypted" in done.stderr  # no key, no restore
        done = await asyncio.to_thread(cli, new, sftp.env, "restore", "--yes", "--from", sftp.url(),
                                       "--key-file", str(key_file))
        assert done.returncode == 0, done.stderr
        new.start(FAST)
        new.wait_serving(timeout=30)
        assert set(load.acked) <= await agent_names(new)
        assert not any(b"o-0-" in p.read_bytes() for p in sftp.files.rglob("*.jrn"))
    finally:
        sftp.stop()


def test_a_malformed_replica_url_refuses_to_start(meshd_proc):
    proc = meshd_proc()
    proc.start(["--replica", "sftp://user:pw@host/x"])
    assert proc.wait_exit(30) == 2
    text = proc.log_text()
    assert "replica" in text and "password" in text and "pw@" not in text


def describe(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:.1f} ms, "
            f"p99 {values[max(0, int(len(values) * 0.99) - 1)] * 1000:.1f} ms")


async def test_replica_sync_every_acknowledged_write_survives_host_loss(meshd_proc, tmp_path):
    s3 = S3Server(tmp_path / "s3").start()
    sftp = SftpServer(tmp_path / "sftp").start()
    try:
        env = {**s3.env, **sftp.env}
        # Asynchronous shipping first, as the baseline of the latency figures.
        plain = meshd_proc()
        plain.start([*FAST, "--replica", s3.url("plain")], env=env)
        plain.wait_serving(timeout=30)
        async_lat = await write_latencies(plain, "a", 200)
        plain.kill_tree()

        proc = meshd_proc()
        proc.start([*FAST, "--replica", f"{s3.url()},{sftp.url()}", "--replica-sync",
                    "--replica-sync-timeout", "1s"], env=env)
        proc.wait_serving(timeout=30)
        sync_lat = await write_latencies(proc, "s", 200)
        sys.stderr.write(f"\nwrite latency, replica_interval 1s: {describe(async_lat)}; "
                         f"replica_sync (S3 + SFTP on loopback): {describe(sync_lat)}\n")

        # A replica going away: the other still confirms, writes go on.
        sftp.stop()
        async with aiohttp.ClientSession() as session:
            status, body = await api(session, proc, "POST", "/api/agents/register",
                                     {"name": "one-replica-left"})
            assert status == 200, body
            # Both gone: nothing is committed and the client is told to retry.
            s3.stop()
            async with session.post(proc.url + "/api/agents/register",
                                    json={"name": "unconfirmed"},
                                    headers=proc.headers) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"]
                assert "replica" in (await resp.json())["error"]
            status, agents = await api(session, proc, "GET", "/api/agents")
            assert "unconfirmed" not in {a["name"] for a in agents}
        sftp.start()  # same port, same files: writes are confirmed again

        load = WriteLoad(proc, "w")
        task = asyncio.create_task(load.run(4))
        await async_poll(lambda: len(load.acked) >= 200, 60, "200 acknowledged writes")
        proc.kill_tree()  # the host is lost, mid-load
        load.stop.set()
        await task
        shutil.rmtree(proc.data_dir)
        shutil.rmtree(proc.backup_dir)

        new = meshd_proc()
        done = await asyncio.to_thread(cli, new, env, "restore", "--yes", "--from", sftp.url())
        assert done.returncode == 0, done.stderr
        new.start(FAST)
        new.wait_serving(timeout=30)
        names = await agent_names(new)
        acked = set(load.acked) | {f"s-{i}" for i in range(200)} | {"one-replica-left"}
        missing = acked - names
        assert not missing, f"{len(missing)} acknowledged writes lost with replica_sync"
        assert "unconfirmed" not in names
        sys.stderr.write(f"\nRPO replica_sync: 0 of {len(acked)} acknowledged writes lost\n")
    finally:
        s3.stop()
        sftp.stop()
