"""The issue-14 scenarios: meshd against the Node server's figures and a bare-aiohttp ceiling.

Run: .venv/bin/python bench/scenarios.py [--seconds 8] [--warmup 1] [--clients 16]
         [--scale-agents 10000] [--scale-messages 1000000] [--ws-clients 1000]
         [--ws-events 100] [--only NAME ...] [--profile]

One closed-loop load generator (`--clients` keep-alive connections, each sending its next
request when the previous answer is read; `--warmup` seconds not counted, then `--seconds`
measured) drives each scenario against meshd, then the same requests (same bodies) against a
bare aiohttp handler in its own process (`bench/_ceiling.py`): the ceiling for any aiohttp
server on this machine with this client. The client shares the CPU with the server.

Then, on databases seeded straight into the file (not through the API): the dashboard and an
inbox with `--scale-agents` agents and no other messages, and again with `--scale-messages`
stored messages; and WebSocket fan-out of events to `--ws-clients` clients, with and without
one stalled client (it completes the handshake and never reads again).

`--profile` attaches py-spy to the worker during each measured meshd window and prints where
the samples went (raw stacks in bench/results/profile-<scenario>.txt); py-spy costs the worker
a little, so profiled figures are not the ones to quote.

Results: printed, and written to bench/results/scenarios-<time>.json and .txt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _profile
import aiohttp
import orjson
from _common import (
    child_pids,
    closed_loop,
    free_port,
    meshd_command,
    percentile,
    rss_mb,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEY = "bench-key"
JSON = {"Content-Type": "application/json"}
PEERS = 20
FILE_BYTES = 64 << 10
EVENT_LOOP = "uvloop"  # meshd's worker and the ceiling alike; set by --event-loop

# The Node server on this machine and load generator (issue 14): req/s and p99 ms.
NODE = {
    "register": (831, 35), "message": (932, 34), "health": (1033, 27), "heartbeat": (2766, 16),
    "inbox": (1099, 24), "upload": (557, 46), "download": (693, 40),
    "dashboard_200": (325, 69), "dashboard_5000": (20.6, 940),
}
TITLES = {
    "register": "register (unique names)",
    "message": "message (POST /api/messages)",
    "health": "health metrics (POST .../health)",
    "heartbeat": "heartbeat (POST .../heartbeat)",
    "inbox": "inbox (GET, 50 messages)",
    "upload": "file upload 64 KiB",
    "download": "file download 64 KiB",
    "dashboard_200": "dashboard, 200 agents",
    "dashboard_5000": "dashboard, 5,000 agents",
}


@dataclass
class Meshd:
    """A real `meshd run` (supervisor + worker) on a free port in a temporary directory."""

    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start, and wait for the baseline backup too: on a seeded database of hundreds of
        megabytes its copy and integrity check would otherwise run during the measurement.
        Scheduled backups and checks are pushed out of the bench's way for the same reason."""
        log = (self.home / "meshd.log").open("a")
        self.proc = subprocess.Popen(
            [*meshd_command(), "run", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.home / "data"), "--backup-dir", str(self.home / "backups"),
             "--api-key", KEY, "--log-format", "json", "--event-loop", EVENT_LOOP,
             "--backup-interval", "1h", "--quick-check-interval", "1h"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        await wait_healthy(self.url, timeout=600)
        deadline = time.monotonic() + 600
        while not list((self.home / "backups").glob("*.json")):
            if time.monotonic() > deadline:
                raise SystemExit("meshd wrote no baseline backup")
            await asyncio.sleep(0.2)

    def worker_pid(self) -> int | None:
        pids = child_pids(self.proc.pid) if self.proc else []
        return pids[0] if pids else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Ceiling:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_ceiling.py"),
                                      str(self.port), EVENT_LOOP])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- requests ---------------------------------------------------------------------------------


def post(path: str, body: dict | bytes):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return "POST", path, data, JSON


async def api(session: aiohttp.ClientSession, url: str, method: str, path: str,
              body: dict | None = None) -> tuple[int, bytes]:
    async with session.request(method, url + path, json=body) as resp:
        return resp.status, await resp.read()


async def register_many(url: str, names: list[str], concurrency: int = 16) -> list[str]:
    ids: list[str] = []
    queue = list(names)
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as session:
        async def worker() -> None:
            while queue:
                name = queue.pop()
                status, raw = await api(session, url, "POST", "/api/agents/register",
                                        {"name": name})
                if status != 200:
                    raise SystemExit(f"register {name}: {status} {raw[:200]!r}")
                ids.append(orjson.loads(raw)["agentId"])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


@dataclass
class Fixture:
    peers: list[str]
    file_id: str
    upload_body: bytes
    sizes: dict[str, int] = field(default_factory=dict)  # response bytes, for the ceiling


async def setup(url: str) -> Fixture:
    peers = await register_many(url, [f"peer-{i:02d}" for i in range(PEERS)])
    peers.sort()
    payload = base64.b64encode(random.randbytes(FILE_BYTES)).decode()
    upload_body = orjson.dumps({"agentId": peers[0], "filename": "bench.bin",
                                "fileType": "application/octet-stream", "fileData": payload})
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as session:
        for i in range(60):
            await api(session, url, "POST", "/api/messages",
                      {"from": peers[1], "to": peers[0], "content": f"seed message {i}"})
        async with session.post(url + "/api/files/upload", data=upload_body,
                                headers=JSON) as resp:
            file_id = (await resp.json())["fileId"]
    return Fixture(peers, file_id, upload_body)


def scenario_requests(name: str, fx: Fixture, run_id: str):
    """The request maker of a scenario: (client, i) -> (method, path, body, headers)."""
    peers = fx.peers if fx else []
    if name == "register":
        return lambda n, i: post("/api/agents/register", {"name": f"r-{run_id}-{n}-{i}"})
    if name == "message":
        return lambda n, i: post("/api/messages", {
            "from": peers[n % PEERS], "to": peers[(n + i) % PEERS],
            "content": f"message {i} from client {n}"})
    if name == "health":
        return lambda n, i: post(f"/api/agents/{peers[(n + i) % PEERS]}/health", {
            "status": "healthy", "cpuUsage": 12.5, "memoryUsage": 40.25,
            "uptimeSeconds": 1000 + i})
    if name == "heartbeat":
        return lambda n, i: post(f"/api/agents/{peers[(n + i) % PEERS]}/heartbeat", {
            "cpuUsage": 12.5, "memoryUsage": 40.25, "uptimeSeconds": 1000 + i})
    if name == "inbox":
        return lambda n, i: ("GET", f"/api/messages/{peers[0]}?limit=50", None, None)
    if name == "upload":
        return lambda n, i: ("POST", "/api/files/upload", fx.upload_body, JSON)
    if name == "download":
        return lambda n, i: ("GET", f"/api/files/{fx.file_id}", None, None)
    if name.startswith("dashboard"):
        return lambda n, i: ("GET", "/api/health/dashboard", None, None)
    raise ValueError(name)


def identity(make):
    """The same requests from a client that asks for no content coding (as the Node
    server's clients got): meshd answers them with the identity body."""
    def wrapped(n: int, i: int):
        method, path, body, headers = make(n, i)
        return method, path, body, {**(headers or {}), "Accept-Encoding": "identity"}
    return wrapped


def for_ceiling(make, size: int | None, gzip_file: Path | None = None):
    """The same requests, asking the ceiling for a response as large as meshd's (or for the
    very gzipped bytes meshd sent, when it sent gzip)."""
    if not size:
        return make
    extra = ({"X-Ceiling-Gzip-File": str(gzip_file)} if gzip_file
             else {"X-Ceiling-Bytes": str(size)})

    def wrapped(n: int, i: int):
        method, path, body, headers = make(n, i)
        return method, path, body, {**(headers or {}), **extra}
    return wrapped


@dataclass
class Shape:
    """What meshd answers a scenario's request with: decoded size and content coding (the
    load generator's client sends aiohttp's default `Accept-Encoding: gzip, deflate`)."""

    size: int
    encoding: str = "identity"
    wire_bytes: int = 0
    gzip_file: Path | None = None  # meshd's gzipped body, for the ceiling to send


async def response_shape(url: str, make, label: str = "") -> Shape:
    method, path, body, headers = make(0, 0)
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY},
                                     auto_decompress=False) as session, \
            session.request(method, url + path, data=body, headers=headers) as resp:
        raw = await resp.read()
        encoding = resp.headers.get("Content-Encoding", "identity")
    if encoding != "gzip":
        return Shape(len(raw), encoding, len(raw))
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / f"ceiling-body-{label or 'response'}.gz"
    saved.write_bytes(raw)
    return Shape(len(gzip.decompress(raw)), "gzip", len(raw), saved)


async def response_size(url: str, make) -> int:
    return (await response_shape(url, make)).size


# -- one measured scenario --------------------------------------------------------------------


async def measure(args, label: str, meshd: Meshd, ceiling: Ceiling | None, make,
                  size: int | None = None, shape: Shape | None = None) -> dict:
    profile = None
    if args.profile and (pid := meshd.worker_pid()):
        profile = _profile.start(pid, args.warmup + args.seconds,
                                 RESULTS / f"profile-{label}.txt")
    mine = await closed_loop(meshd.url, make, seconds=args.seconds, clients=args.clients,
                             warmup=args.warmup, headers={"X-API-Key": KEY},
                             cpu_of=meshd.worker_pid())
    if profile is not None:
        profile.wait(timeout=60)
        mine["profile"] = _profile.summarize(RESULTS / f"profile-{label}.txt")
    if ceiling is not None:
        gzip_file = shape.gzip_file if shape else None
        ceil = await closed_loop(ceiling.url, for_ceiling(make, size, gzip_file),
                                 seconds=args.seconds,
                                 clients=args.clients, warmup=args.warmup,
                                 cpu_of=ceiling.proc.pid)
        mine["ceiling_rps"] = ceil["rps"]
        mine["ceiling_p99_ms"] = ceil["p99_ms"]
        mine["ceiling_cpu_us"] = ceil["cpu_us"]
    mine["response_bytes"] = size
    if shape is not None:
        mine["encoding"] = shape.encoding
        mine["wire_bytes"] = shape.wire_bytes
        print(f"  {label}: response {shape.size:,} bytes, sent as {shape.encoding}"
              + (f" ({shape.wire_bytes:,} bytes on the wire, the ceiling sends the same)"
                 if shape.encoding != "identity" else ""), flush=True)
    print(f"  {label:<22} {mine['rps']:8.0f} req/s  p99 {mine['p99_ms']:7.1f} ms"
          f"  errors {mine['errors']}  worker CPU {_us(mine['cpu_us'])}/req"
          + (f"  ceiling {mine['ceiling_rps']:.0f} req/s, {_us(mine['ceiling_cpu_us'])}/req"
             if ceiling else ""), flush=True)
    if mine.get("profile"):
        print(f"    profile: {_profile.render(mine['profile'])}", flush=True)
    return mine


def _apart(fan: dict) -> str:
    return f" {fan['interval_ms']:g} ms apart" if "interval_ms" in fan else ""


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} us"


# -- seeded databases -------------------------------------------------------------------------


def seed_database(db_path: Path, agents: int, messages: int, target_inbox: int = 100) -> str:
    """A meshd database written straight into the file: `agents` agents (90 % seen within
    the last minute with a health row, the rest silent for a day), `target_inbox` messages to
    the first agent and `messages` more spread over all agents. The first agent's id."""
    from meshd.store import schema

    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    schema.migrate(conn)
    now = datetime.now(UTC)

    def stamp(seconds_ago: float) -> str:
        return (now - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%d %H:%M:%S")

    ids = [str(uuid.uuid4()) for _ in range(agents)]
    rng = random.Random(14)
    conn.execute("BEGIN")
    agent_rows, health_rows = [], []
    for i, agent_id in enumerate(ids):
        alive = i % 10 != 9
        seen = stamp(rng.uniform(0, 60) if alive else 86400 + i)
        agent_rows.append((agent_id, f"agent-{i:06d}", f"http://10.0.{i // 250}.{i % 250}:9000",
                           '["compute","storage"]', seen, stamp(86400 * 2)))
        if alive:
            health_rows.append((agent_id, rng.choice(("healthy", "healthy", "degraded")), seen,
                                rng.randint(1, 10**6), rng.uniform(0, 100), rng.uniform(0, 100),
                                '{"queue":3}', seen))
    conn.executemany("INSERT INTO agents (id, name, endpoint, capabilities, last_seen,"
                     " created_at) VALUES (?, ?, ?, ?, ?, ?)", agent_rows)
    conn.executemany("INSERT INTO agent_health_status (agent_id, status, last_heartbeat,"
                     " uptime_seconds, cpu_usage, memory_usage, custom_metrics, last_updated)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", health_rows)
    conn.execute("COMMIT")
    sql = ("INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
           " created_at) VALUES (?, ?, ?, ?, 'direct', 0, 'pending', ?)")
    conn.execute("BEGIN")
    conn.executemany(sql, ((str(uuid.uuid4()), ids[(k + 1) % agents], ids[0],
                            f"inbox message {k}", stamp(3600 - k)) for k in range(target_inbox)))
    chunk = 100_000
    for start in range(0, messages, chunk):
        conn.executemany(sql, (
            (str(uuid.uuid4()), ids[rng.randrange(agents)], ids[rng.randrange(agents)],
             f"stored message {k}: status report", stamp(rng.uniform(0, 7 * 86400)))
            for k in range(start, min(messages, start + chunk))))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return ids[0]


async def scale_phase(args, label: str, messages: int, ceiling: Ceiling | None) -> dict:
    home = Path(tempfile.mkdtemp(prefix="mbench-scale"))
    started = time.monotonic()
    target = seed_database(home / "data" / "mesh.db", args.scale_agents, messages)
    seeded = time.monotonic() - started
    print(f"  seeded {args.scale_agents} agents + {messages} messages in {seeded:.1f} s",
          flush=True)
    meshd = Meshd(home)
    results = {}
    try:
        await meshd.start()
        dash = scenario_requests("dashboard", None, "")
        inbox = lambda n, i: ("GET", f"/api/messages/{target}?limit=50", None, None)  # noqa: E731
        for name, make in (("dashboard", dash), ("dashboard_identity", identity(dash)),
                           ("inbox", inbox)):
            shape = await response_shape(meshd.url, make, f"{name}_{label}")
            results[name] = await measure(args, f"{name}_{label}", meshd, ceiling, make,
                                          shape.size, shape)
    finally:
        meshd.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results


# -- WebSocket fan-out ------------------------------------------------------------------------


def stalled_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and never reads again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"stalled client: no upgrade: {head[:100]!r}")
    return sock


async def fan_out(args, meshd: Meshd | Ceiling, stalled: bool) -> dict:
    """`--ws-events` events (agent registrations, one every `--ws-interval` seconds) to
    `--ws-clients` listeners; latency from the POST being sent to each listener receiving
    the event. Against the ceiling (same listeners, same POSTs, the frame written to every
    transport at once): the floor this client and machine put under the figure."""
    server = "ceiling" if isinstance(meshd, Ceiling) else "meshd"
    sent: dict[str, float] = {}
    latencies: list[float] = []
    expected = args.ws_events * args.ws_clients
    done = asyncio.Event()
    tag = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(limit=0)
    blocker = stalled_client(meshd.port) if stalled else None
    async with aiohttp.ClientSession(connector=connector) as session:
        async def listen(ws) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = orjson.loads(msg.data)
                if event.get("type") == "agent_joined":
                    name = event["agent"]["name"]
                    if name in sent:
                        latencies.append(time.perf_counter() - sent[name])
                        if len(latencies) >= expected:
                            done.set()

        # Each listener reads from the moment it is connected: one that waited for the others
        # (a thousand connections take a while) would not answer the server's pings and be
        # closed as dead.
        sockets, listeners = [], []
        for _ in range(args.ws_clients):
            ws = await session.ws_connect(meshd.url + "/ws", heartbeat=None)
            sockets.append(ws)
            listeners.append(asyncio.create_task(listen(ws)))
        failed = 0
        profile = None
        if args.profile and server == "meshd" and (pid := meshd.worker_pid()):
            profile = _profile.start(pid, args.ws_events * args.ws_interval + 1,
                                     RESULTS / f"profile-fan_out-{'stalled' if stalled else 'all'}.txt")
        async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as poster:
            for k in range(args.ws_events):
                name = f"fan-{tag}-{k}"
                sent[name] = time.perf_counter()
                status, _ = await api(poster, meshd.url, "POST", "/api/agents/register",
                                      {"name": name})
                failed += status != 200
                await asyncio.sleep(args.ws_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=60)
        open_at_end = sum(not ws.closed for ws in sockets)
        for ws in sockets:
            await ws.close()
        for task in listeners:
            task.cancel()
    if blocker is not None:
        blocker.close()
    summary = {}
    if profile is not None:
        profile.wait(timeout=60)
        summary = _profile.summarize(
            RESULTS / f"profile-fan_out-{'stalled' if stalled else 'all'}.txt")
        print(f"    profile: {_profile.render(summary)}", flush=True)
    latencies.sort()
    return {"server": server, "clients": args.ws_clients, "events": args.ws_events,
            "stalled": stalled,
            "failed_posts": failed, "open_at_end": open_at_end, "profile": summary,
            "interval_ms": args.ws_interval * 1000,
            "delivered": len(latencies), "expected": expected,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": (latencies[-1] if latencies else float("nan")) * 1000}


# -- report -----------------------------------------------------------------------------------


def table(results: dict, args) -> str:
    lines = [
        f"{args.clients} closed-loop clients, {args.warmup:g} s warm-up + {args.seconds:g} s "
        f"per scenario, {os.cpu_count()} cores shared with the client, "
        f"event loop {getattr(args, 'event_loop', 'asyncio')} (meshd and ceiling)"
        + (" (profiled: py-spy attached, figures not for quoting)" if args.profile else ""),
        "",
        "| scenario | meshd req/s | p99 ms | CPU us/req | ceiling req/s | ceiling p99 ms "
        "| ceiling CPU us/req | meshd/ceiling | Node req/s | meshd/Node | Node p99 ms | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.get("scenarios", {}).items():
        node_rps, node_p99 = NODE.get(name, (None, None))
        share = r["rps"] / r["ceiling_rps"] if r.get("ceiling_rps") else None
        vs_node = r["rps"] / node_rps if node_rps else None
        target = "-"
        if node_rps:
            met = (vs_node >= 3 or (share is not None and share >= 0.5)) and \
                r["p99_ms"] <= node_p99
            target = "met" if met else "MISS"
        if name == "dashboard_10000":
            target = "met" if r["p99_ms"] < 50 else "MISS (p99 >= 50 ms)"
        ceiling = (f"{r['ceiling_rps']:,.0f} | {r['ceiling_p99_ms']:.1f} | "
                   f"{_us(r.get('ceiling_cpu_us'))} | {share:.0%}"
                   if share is not None else "- | - | - | -")
        node = (f"{node_rps:,} | {vs_node:.2f}x | {node_p99}" if node_rps else "- | - | -")
        title = TITLES.get(name, name)
        if r.get("encoding", "identity") != "identity":
            title += f" ({r['encoding']}, {r['wire_bytes']:,} bytes sent)"
        lines.append(f"| {title} | {r['rps']:,.0f} | {r['p99_ms']:.1f} | "
                     f"{_us(r.get('cpu_us'))} | {ceiling} | {node} | {target} |")
    scale = results.get("scale", {})
    if scale:
        lines += ["", f"Seeded: {args.scale_agents:,} agents; empty = no other messages, full = "
                  f"{args.scale_messages:,} stored messages.", "",
                  "| scenario | empty req/s | empty p99 ms | full req/s | full p99 ms "
                  "| full/empty req/s | ceiling req/s | ceiling p99 ms | target |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in ("dashboard", "dashboard_identity", "inbox"):
            if name not in scale["empty"]:  # a results file from before the identity row
                continue
            empty, full = scale["empty"][name], scale["full"][name]
            ratio = full["rps"] / empty["rps"]
            target = "met" if ratio >= 0.8 else "MISS (> 20 % slower)"
            if name.startswith("dashboard") and max(empty["p99_ms"], full["p99_ms"]) >= 50:
                target += "; p99 >= 50 ms: MISS"
            coding = full.get("encoding")
            shown = (f"{name} ({coding}, {full['wire_bytes']:,} bytes sent)"
                     if coding else name)
            lines.append(f"| {shown} | {empty['rps']:,.0f} | {empty['p99_ms']:.1f} | "
                         f"{full['rps']:,.0f} | {full['p99_ms']:.1f} | {ratio:.2f} | "
                         f"{full.get('ceiling_rps', 0):,.0f} | "
                         f"{full.get('ceiling_p99_ms', 0):.1f} | {target} |")
    fan = results.get("fan_out", [])
    if fan:
        lines += ["", "| WebSocket fan-out | delivered | p50 ms | p99 ms | max ms | target |",
                  "|---|---|---|---|---|---|"]
        for r in fan:
            ok = r["delivered"] == r["expected"] and r["p99_ms"] < 30
            lines.append(
                f"| {r.get('server', 'meshd')}: {r['clients']} clients, {r['events']} events"
                f"{_apart(r)}"
                f"{', one stalled client' if r['stalled'] else ''} | "
                f"{r['delivered']}/{r['expected']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['max_ms']:.1f} | {'met' if ok else 'MISS'} |")
    rss = results.get("rss_mb")
    if rss:
        lines += ["", f"worker RSS: {rss['after_start']:.0f} MB after start "
                  f"(target < 60), {rss['after_run']:.0f} MB after the run (Node ~120)"]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


SIZED = ("inbox", "download")
LOAD_SCENARIOS = ("register", "message", "health", "heartbeat", "inbox", "upload", "download",
                  "dashboard_200", "dashboard_5000")


async def main(args) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or [*LOAD_SCENARIOS, "scale", "fan_out"])
    results: dict = {"args": vars(args), "scenarios": {}}
    ceiling = Ceiling()
    home = Path(tempfile.mkdtemp(prefix="mbench"))
    meshd = Meshd(home)
    try:
        await wait_healthy(ceiling.url)
        await meshd.start()
        pid = meshd.worker_pid()
        after_start = rss_mb(pid) if pid else float("nan")
        fx = await setup(meshd.url)
        run_id = uuid.uuid4().hex[:6]
        print("load scenarios (meshd, then the ceiling with the same requests)", flush=True)
        for name in LOAD_SCENARIOS:
            if name not in wanted or name.startswith("dashboard_"):
                continue
            make = scenario_requests(name, fx, run_id)
            size = await response_size(meshd.url, make) if name in SIZED else None
            results["scenarios"][name] = await measure(args, name, meshd, ceiling, make, size)
        if "fan_out" in wanted:
            print(f"WebSocket fan-out to {args.ws_clients} clients", flush=True)
            results["fan_out"] = []
            for server, stalled in ((meshd, False), (meshd, True), (ceiling, False),
                                    (ceiling, True)):
                r = await fan_out(args, server, stalled)
                print(f"  {r['server']}, stalled={stalled}: {r['delivered']}/{r['expected']} "
                      f"delivered, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, posts failed {r['failed_posts']}, "
                      f"listeners open at the end {r['open_at_end']}", flush=True)
                results["fan_out"].append(r)
        pid = meshd.worker_pid()
        results["rss_mb"] = {"after_start": after_start,
                             "after_run": rss_mb(pid) if pid else float("nan")}
        meshd.stop()
        dashboards = [n for n in LOAD_SCENARIOS if n.startswith("dashboard_") and n in wanted]
        if dashboards:
            # A fresh database: the register scenario above added agents by the thousand.
            await dashboard_phase(args, dashboards, ceiling, results["scenarios"])
        if "scale" in wanted:
            results["scale"] = {}
            for label, messages in (("empty", 0), ("full", args.scale_messages)):
                print(f"scale, {label} database", flush=True)
                results["scale"][label] = await scale_phase(args, label, messages, ceiling)
    finally:
        meshd.stop()
        ceiling.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results


async def dashboard_phase(args, names: list[str], ceiling: Ceiling, into: dict) -> None:
    home = Path(tempfile.mkdtemp(prefix="mbench-dash"))
    meshd = Meshd(home)
    try:
        await meshd.start()
        make = scenario_requests("dashboard", None, "")
        for name in names:
            total = int(name.split("_")[1])
            have = await agent_count(meshd.url)
            await register_many(meshd.url, [f"fleet-{k:05d}" for k in range(have, total)])
            shape = await response_shape(meshd.url, make, name)
            into[name] = await measure(args, name, meshd, ceiling, make, shape.size, shape)
    finally:
        meshd.stop()
        shutil.rmtree(home, ignore_errors=True)


async def agent_count(url: str) -> int:
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as session:
        status, raw = await api(session, url, "GET", "/api/health/dashboard?limit=0")
        return orjson.loads(raw)["totalAgents"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--scale-agents", type=int, default=10_000)
    parser.add_argument("--scale-messages", type=int, default=1_000_000)
    parser.add_argument("--ws-clients", type=int, default=1000)
    parser.add_argument("--ws-events", type=int, default=100)
    parser.add_argument("--ws-interval", type=float, default=0.1,
                        help="seconds between two events of the fan-out")
    parser.add_argument("--only", action="append",
                        choices=[*LOAD_SCENARIOS, "scale", "fan_out"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the event loop of meshd's worker and of the ceiling")
    parser.add_argument("--table-from", type=Path, metavar="JSON",
                        help="print the table of an earlier run's results file and exit")
    args = parser.parse_args()
    EVENT_LOOP = args.event_loop
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(table(saved, argparse.Namespace(**saved["args"])))
        sys.exit(0)
    # Stopped with SIGTERM, still stop the servers it started and remove their directories.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    outcome = asyncio.run(main(args))
    text = table(outcome, args)
    print()
    print(text)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scenarios-{stamp}.json").write_text(json.dumps(outcome, indent=1, default=str))
    (RESULTS / f"scenarios-{stamp}.txt").write_text(text + "\n")
    sys.exit(0)
