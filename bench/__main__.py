"""Run every bench script in bench/ one after another, each as a subprocess with its output
streamed; exit non-zero when one fails.

Run: .venv/bin/python -m bench [--quick] [--only NAME ...]
--quick passes small sizes to each bench for a fast smoke run (about 3 minutes); without it
the benches run at the sizes the README's results were measured at (about 15 minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (arguments for a full run, arguments for --quick). A script not listed here runs
# with no arguments in both modes.
ARGS: dict[str, tuple[list[str], list[str]]] = {
    "files_memory": ([], ["--size-mib", "2"]),
    "restart_time": (["--kills", "5", "--spacing", "11"], ["--kills", "2", "--spacing", "11"]),
    "backup_latency": ([], ["--size-mb", "20", "--seconds", "2"]),
    "recovery_time": ([], ["--db-mb", "10", "--journal-seconds", "5"]),
    "throughput": ([], ["--seconds", "3"]),
    "mcp_memory": ([], ["--sessions", "5"]),
    "replica": ([], ["--writes", "100", "--load-seconds", "2"]),
    "hostile": ([], ["--uploads", "5", "--slowloris", "20", "--websockets", "5"]),
    "scenarios": ([], ["--seconds", "1", "--warmup", "0.5", "--scale-agents", "2000",
                       "--scale-messages", "50000", "--ws-clients", "200", "--ws-events", "20"]),
    "failover": (["--kills", "5"], ["--kills", "2", "--mode", "standby"]),
    "nodes": ([], ["--seconds", "2", "--warmup", "1"]),
}
ORDER = list(ARGS)


def scripts() -> list[str]:
    found = sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this bench (repeatable)")
    args = parser.parse_args(argv)
    names = scripts()
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"no bench {', '.join(unknown)}; one of {', '.join(names)}")
        names = [n for n in names if n in args.only]
    results: list[tuple[str, int, float]] = []
    for name in names:
        full, quick = ARGS.get(name, ([], []))
        command = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        code = subprocess.call(command, cwd=HERE.parent)
        results.append((name, code, time.monotonic() - started))
    print("\n=== summary")
    for name, code, seconds in results:
        print(f"{name:<16} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:6.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
