"""`meshd restore --from URL` and `meshd replicas`: the operator's side of the replicas. Both
run without a daemon: on a fresh machine there is none, and restore refuses to run beside one."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from meshd.store.replica import crypt, pull, urls
from meshd.store.replica.objects import ObjectCorrupt
from meshd.store.replica.targets import TargetError, open_target, read_credentials


def add_arguments(sub, restore: argparse.ArgumentParser, daemon_arguments) -> None:
    """`restore --from` and the `replicas` command, added to the CLI's parser."""
    restore.add_argument("--from", dest="from_url", metavar="URL",
                         help="restore from a replica (file://, sftp://, s3://) into a new "
                              "data directory, as on a fresh machine")
    restore.add_argument("--credentials", help="KEY=VALUE file of replica secrets")
    restore.add_argument("--key-file", help="the replica_key_file, when the replica is "
                         "encrypted")
    replicas = sub.add_parser("replicas", help="what each replica holds: backups, journal "
                              "range, epochs")
    daemon_arguments(replicas)
    replicas.add_argument("--from", dest="from_url", action="append", metavar="URL",
                          help="a replica URL (repeatable; default: the `replica` setting)")
    replicas.add_argument("--credentials", help="KEY=VALUE file of replica secrets")
    replicas.add_argument("--key-file", help="the replica_key_file, when encrypted "
                          "(default: the setting)")
    replicas.add_argument("--drill", action="store_true",
                          help="also restore each into a scratch directory and check it")


def _target(text: str, credentials: str | None, key_file: str | Path | None = None):
    try:
        url = urls.parse(text)
    except urls.ReplicaURLError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        raise SystemExit(2) from None
    try:
        env = read_credentials(Path(credentials) if credentials else None)
    except OSError as exc:
        sys.stderr.write(f"meshd: cannot read credentials: {exc}\n")
        raise SystemExit(2) from None
    try:
        key = crypt.load_key(Path(key_file)) if key_file else None
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"meshd: --key-file: {exc}\n")
        raise SystemExit(2) from None
    return open_target(url, env, key)


def _out(args: argparse.Namespace, data, text: str) -> None:
    if args.json or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(text + "\n")


def restore_from_replica(args: argparse.Namespace) -> int:
    from meshd.cli import _parse_when, load_settings
    from meshd.locks import FileLock, LockBusy

    if args.backup:
        sys.stderr.write("meshd: --from takes the newest verified backup on the replica "
                         "(or the newest before --to-time); it names no backup\n")
        return 2
    to_time = _parse_when(args.to_time)
    paths = load_settings(args)
    if isinstance(paths.database, str):  # config.parse_database keeps only URLs as text
        sys.stderr.write("meshd: replicas hold SQLite backups and journal; a PostgreSQL "
                         "database is restored with `meshd restore [FILE] --database "
                         "postgresql://...` or PostgreSQL's own tools (docs/postgresql.md)\n")
        return 2
    target = _target(args.from_url, args.credentials, args.key_file)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(paths.data_dir / "writer.lock")
    try:
        lock.acquire(timeout=5)
    except LockBusy:
        sys.stderr.write("meshd: another process holds the writer lock; stop meshd first\n")
        return 1

    async def run():
        try:
            return await pull.restore_from(target, paths.database, paths.data_dir,
                                           paths.backup_dir, to_time)
        finally:
            await target.close()

    try:
        report = asyncio.run(run())
    except (pull.PullError, TargetError, FileNotFoundError, ObjectCorrupt) as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    finally:
        lock.release()
    text = (f"restored {report.backup} from {report.replica}, replayed {report.replayed} "
            f"journal records (seq {report.journal_seq}, epoch {report.journal_epoch})")
    if report.gap:
        text += (f"\nWARNING: the replica's journal has a gap at seq {report.gap[0]}; "
                 "records after it were not replayed")
    _out(args, asdict(report), text)
    return 0


def cmd_replicas(args: argparse.Namespace) -> int:
    names, key_file = args.from_url, args.key_file
    if not names or not key_file:
        from meshd.cli import load_settings

        settings = load_settings(args)
        names = names or list(settings.replica)
        key_file = key_file or settings.replica_key_file
    if not names:
        sys.stderr.write("meshd: no replica configured (set `replica`, or pass --from URL)\n")
        return 2

    async def one(text: str):
        target = _target(text, args.credentials, key_file)
        try:
            data = await pull.inventory(target)
            if args.drill:
                with tempfile.TemporaryDirectory(prefix="meshd-drill-") as scratch:
                    data["drill"] = asdict(await pull.drill(target, Path(scratch) / "d"))
            return data
        except (TargetError, OSError, ObjectCorrupt) as exc:
            return {"replica": target.name, "error": str(exc)}
        finally:
            await target.close()

    rows = [asyncio.run(one(text)) for text in names]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['replica']}: UNREACHABLE ({r['error']})")
            continue
        lines.append(f"{r['replica']}: {len(r['backups'])} backups")
        for b in r["backups"]:
            lines.append(f"  backup {b['file']}  {b['size']} B  epoch {b['journal_epoch']} "
                         f"seq {b['journal_seq']}")
        for e in r["journal"]:
            lines.append(f"  journal epoch {e['epoch']}: seq {e['first_seq']}..{e['last_seq']}"
                         f" in {e['objects']} objects, {e['gaps']} gaps")
        if "drill" in r:
            d = r["drill"]
            lines.append("  drill: " + ("ok" if d["ok"] else "FAILED: " + "; ".join(
                d["problems"])))
    _out(args, rows, "\n".join(lines))
    failed = any("error" in r or not r.get("drill", {"ok": True})["ok"] for r in rows)
    return 1 if failed else 0
