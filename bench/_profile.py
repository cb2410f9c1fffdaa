"""Profiles of meshd's worker under load, taken with py-spy (a sampling profiler that attaches
to a running process, so the worker runs unmodified) and summarized by where the time goes.

Only samples of the thread holding the GIL are taken (`--gil`): the worker's throughput is
bounded by Python CPU on the event loop, and a thread waiting for the GIL (or in fsync, or in
SQLite's C code, which release it) is not doing Python work. Time in fsync and in SQLite's
own C code is therefore not in these profiles; the journal's fsync shows as latency instead.

Each sample is charged to the innermost frame of its stack that belongs to a known part
(the journal, SQLite store functions, logging, the hub, ...); C code (orjson, sqlite3, the
hash) is charged to the Python frame that called it, which is why JSON encoding shows up
under the helper that encodes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (part, substrings of a frame "function (file:line)"), innermost match wins; order matters
# only between parts that could match the same frame.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("journal append + fsync", ("meshd/store/journal.py",)),
    ("writer batch (SQLite, commit)", ("meshd/store/sqlite.py", "meshd/store/writer.py")),
    ("store functions (SQL)", ("meshd/store/",)),
    ("logging (structlog)", ("structlog/", "meshd/log.py", "/logging/")),
    ("WebSocket hub", ("meshd/api/ws.py", "aiohttp/web_ws.py", "aiohttp/_websocket")),
    ("JSON + request helpers", ("meshd/api/http.py",)),
    ("middleware (auth, access log, errors)", ("meshd/api/middleware.py",)),
    ("handlers (validation, shaping)", ("meshd/api/",)),
    ("aiohttp HTTP (parse, route, write)", ("aiohttp/",)),
    ("event loop + thread hand-off", ("asyncio/", "concurrent/futures", "threading.py")),
)


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy recording `pid` for `seconds` into `out` (collapsed stacks); None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", "250", "--format", "raw", "--nonblocking", "--full-filenames", "--gil",
         "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Leaf frames of a thread with nothing to do: the loop in select, a pool thread waiting for
# work. py-spy cannot tell them from work without pausing the process (--nonblocking).
IDLE_LEAVES = (("select (", "selectors.py"), ("_worker (", "concurrent/futures/thread.py"))


def _idle(leaf: str) -> bool:
    return any(name in leaf and where in leaf for name, where in IDLE_LEAVES)


def summarize(path: Path) -> dict[str, float]:
    """Share of busy samples per part (0..1), and per thread (keys `thread: <name>`), from a
    py-spy raw (collapsed) file; idle samples (IDLE_LEAVES) are left out."""
    counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if _idle(frames[-1]):
            continue
        total += int(n)
        counts[_part(frames)] += int(n)
        threads[_thread(stack)] += int(n)
    if not total:
        return {}
    shares = {part: n / total for part, n in counts.most_common()}
    shares.update({f"thread: {name}": n / total for name, n in threads.most_common()})
    return shares


def _thread(stack: str) -> str:
    """Which thread a stack ran on: the event loop, the writer or a reader."""
    if "_run_batch" in stack or "WriterThread._run" in stack:
        return "writer"
    if "_run_read" in stack:
        return "readers"
    if "_read_inline" in stack:
        return "event loop (small reads)"
    if "Thread._bootstrap" in stack:
        return "other threads"
    return "event loop"


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return "other"


def render(summary: dict[str, float], top: int = 6) -> str:
    parts = [(k, v) for k, v in summary.items() if not k.startswith("thread: ")][:top]
    threads = [(k.removeprefix("thread: "), v) for k, v in summary.items()
               if k.startswith("thread: ")]
    return (", ".join(f"{part} {share:.0%}" for part, share in parts)
            + " | threads: " + ", ".join(f"{name} {share:.0%}" for name, share in threads))
