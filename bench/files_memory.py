"""Memory cost of file transfer: RSS growth of a real `meshd run` while it takes a 20 MiB upload,
a raw download and a JSON download, as MiB and as a multiple of the file size.

Run: .venv/bin/python bench/files_memory.py [--size-mib 20] [--rounds 1]
The RSS is summed over meshd's process tree (supervisor and worker), sampled every 10 ms.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import sys
import threading
from collections.abc import Callable

import psutil
from _common import meshd_daemon, tree_rss

API_KEY = "openclaw-mesh-default-key"
MIB = 1 << 20
SAMPLE_EVERY = 0.01


class PeakSampler:
    """Samples the tree's RSS on a thread until stopped; `peak` is the largest sample."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.peak = tree_rss(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.root))
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.root))


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"X-API-Key": API_KEY}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def measure(root: psutil.Process, action: Callable[[], None]) -> tuple[int, int]:
    """(baseline RSS, peak RSS) around one action."""
    baseline = tree_rss(root)
    with PeakSampler(root) as sampler:
        action()
    return baseline, sampler.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three transfers")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    with meshd_daemon(["--max-file-size", str(max(size, 25 * MIB))]) as mesh:
        port = mesh.port
        root = psutil.Process(mesh.process.pid)
        status, body = request(port, "POST", "/api/agents/register",
                               json.dumps({"name": "bench"}).encode())
        assert status == 200, body
        agent_id = json.loads(body)["agentId"]
        data = random.Random(0).randbytes(size)
        payload = json.dumps({"agentId": agent_id, "filename": "bench.bin",
                              "fileData": base64.b64encode(data).decode()}).encode()
        rows = []
        for round_ in range(1, args.rounds + 1):
            result: dict = {}

            def upload(result=result) -> None:
                status, body = request(port, "POST", "/api/files/upload", payload)
                assert status == 200, body[:200]
                result["id"] = json.loads(body)["fileId"]

            def raw(result=result) -> None:
                status, body = request(port, "GET", f"/api/files/{result['id']}?raw=1")
                assert status == 200 and body == data, status

            def as_json(result=result) -> None:
                status, body = request(port, "GET", f"/api/files/{result['id']}")
                assert status == 200
                assert base64.b64decode(json.loads(body)["fileData"]) == data

            for name, action in (("upload", upload), ("raw download", raw),
                                 ("JSON download", as_json)):
                baseline, peak = measure(root, action)
                rows.append((round_, name, baseline, peak))
        print(f"file size {size / MIB:.1f} MiB; RSS of meshd's process tree, sampled every "
              f"{SAMPLE_EVERY * 1000:.0f} ms")
        print(f"{'round':>5}  {'transfer':<14} {'before MiB':>10} {'peak MiB':>9} "
              f"{'growth MiB':>10} {'x file':>7}")
        for round_, name, baseline, peak in rows:
            growth = peak - baseline
            print(f"{round_:>5}  {name:<14} {baseline / MIB:>10.1f} {peak / MIB:>9.1f} "
                  f"{growth / MIB:>10.1f} {growth / size:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
