"""The `meshd` command: `meshd run` starts the daemon; other subcommands talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from meshd import __version__, cli_replica, config
from meshd import log as logging
from meshd.control import client as control


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start meshd (supervisor + API worker) in the foreground")
    config.add_arguments(run)
    sub.add_parser("worker", help=argparse.SUPPRESS)
    show = sub.add_parser("config", help="print the effective settings and where each came from")
    config.add_arguments(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    status = sub.add_parser("status", help="show the running daemon's state")
    _daemon_arguments(status)
    backup = sub.add_parser("backup", help="take a verified backup now")
    _daemon_arguments(backup)
    listing = sub.add_parser("backups", help="list backups with age, size and verification")
    _daemon_arguments(listing)
    check = sub.add_parser("check", help="run PRAGMA quick_check (or integrity_check)")
    _daemon_arguments(check)
    check.add_argument("--full", action="store_true", help="full integrity_check")
    restore = sub.add_parser("restore", help="restore the newest verified backup (or BACKUP) "
                             "and replay the journal")
    _daemon_arguments(restore)
    restore.add_argument("backup", nargs="?", help="backup file name (default: newest verified)")
    restore.add_argument("--to-time", help="point in time (ISO-8601, UTC if no zone)")
    migrate = sub.add_parser("migrate", help="copy a stopped SQLite mesh into PostgreSQL, "
                             "verified by row counts and checksums (resumable)")
    _daemon_arguments(migrate)
    migrate.add_argument("--to", required=True, help="postgresql:// URL of the target database")
    cli_replica.add_arguments(sub, restore, _daemon_arguments)
    mode = sub.add_parser("mode", help="switch the running daemon read-only or read-write")
    _daemon_arguments(mode)
    mode.add_argument("mode", choices=["read-only", "read-write"])
    protocol = sub.add_parser("protocol", help="list, run, inspect or abort recovery protocols")
    psub = protocol.add_subparsers(dest="action", required=True)
    _daemon_arguments(psub.add_parser("list", help="the four protocols and their states"))
    prun = psub.add_parser("run", help="start a protocol by hand")
    _daemon_arguments(prun)
    prun.add_argument("name")
    prun.add_argument("--dry-run", action="store_true", help="print the steps; change nothing")
    prun.add_argument("--reason", default="started by an operator")
    prun.add_argument("--update", help="update id (breaking_api_update)")
    prun.add_argument("--agents", help="comma-separated agent ids (network_partition)")
    prun.add_argument("--backup", help="backup file (database_corruption)")
    prun.add_argument("--rollback-to", metavar="V",
                      help="roll the newest breaking update back to version V "
                           "(server_crash_recovery)")
    pstatus = psub.add_parser("status", help="runs, or one run's step log")
    _daemon_arguments(pstatus)
    pstatus.add_argument("run", nargs="?")
    pabort = psub.add_parser("abort", help="abort a run (its event stays open)")
    _daemon_arguments(pabort)
    pabort.add_argument("run")
    sub.add_parser("mcp", help="MCP server over stdio, a client of a running meshd "
                   "(MESHD_URL, MESHD_AGENT_TOKEN or MESHD_API_KEY)")
    return parser


def _daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Operator commands resolve settings like `meshd run` (flag > environment > file >
    default) and find the daemon through the control socket in the data directory."""
    parser.add_argument("--config", dest="config", default=None,
                        help="TOML file with settings, as given to `meshd run`")
    parser.add_argument("--data-dir", dest="data_dir", default=None,
                        help="data directory of the daemon (default: $MESHD_DATA_DIR, the "
                             "file's data_dir, $STATE_DIRECTORY, else ./data)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--backup-dir", dest="backup_dir", default=None,
                        help="backup directory, when no daemon runs (default ./backups)")
    parser.add_argument("--database", dest="database", default=None,
                        help="database file, when no daemon runs (default <data dir>/mesh.db)")


def load_settings(args: argparse.Namespace) -> config.Settings:
    try:
        return config.load(vars(args))
    except config.ConfigError as exc:
        sys.stderr.write(f"meshd: configuration error: {exc}\n")
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    logging.configure(settings.log_format, settings.log_level, process="supervisor")
    log = logging.get("meshd")
    refusal = config.refuse_unsafe(settings)
    if refusal:
        sys.stderr.write(f"meshd: {refusal}\n")
        return 2
    if settings.listens_beyond_loopback and settings.ws_auth == "off":
        log.warning("config.ws_open", host=settings.host,
                    detail="ws_auth is off: WebSocket connections without a key receive every "
                           "event; public or required closes that")
    from meshd.store.schema import SchemaTooNew, check_version
    from meshd.supervisor.loop import run_supervisor

    try:
        # Refuse a too-new database here, clearly, rather than as a worker crash loop.
        check_version(settings.database)
        return asyncio.run(run_supervisor(settings, vars(args)))
    except SchemaTooNew as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"meshd: cannot start: {exc}\n")
        return 1


def cmd_config(args: argparse.Namespace) -> int:
    rows = config.describe(load_settings(args))
    width = max(len(r["setting"]) for r in rows)
    _print(args, rows, "\n".join(
        f"{r['setting']:<{width}}  {_show(r['value'])}  ({r['source']})" for r in rows))
    return 0


def _show(value) -> str:
    return "none" if value is None else str(value)


def cmd_worker(args: argparse.Namespace) -> int:
    from meshd.worker.serve import run_supervised

    return run_supervised()


def cmd_status(args: argparse.Namespace) -> int:

    data = _call(load_settings(args), "GET", "/status")
    if args.json or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(render_status(data))
    return 0


def render_status(data: dict) -> str:
    lines = [f"meshd {data['state']}" + (f": {data['reason']}" if data.get("reason") else "")]
    for key in ("mode", "supervisor_pid", "worker_pid", "uptime_s", "worker_uptime_s",
                "restarts", "agents", "open_events", "pending_records", "last_backup",
                "listen", "data_dir", "database"):
        lines.append(f"  {key.replace('_', ' '):<16} {data.get(key)}")
    standby = data.get("standby")
    if standby:
        lines.append(f"  standby          pid {standby['pid']}, "
                     f"{'ready' if standby['ready'] else 'starting'}, {standby['rss_mb']} MB; "
                     f"{data.get('promotions', 0)} promotion(s)")
    for r in data.get("replicas") or []:
        state = "ok" if r["ok"] else f"FAILING ({r['last_error']})"
        lines.append(f"  replica          {r['replica']}: {state}, shipped seq "
                     f"{r['shipped_seq']} (epoch {r['shipped_epoch']})")
    return "\n".join(lines) + "\n"


def _call(settings: config.Settings, method: str, path: str, body=None,
          timeout: float = 30.0):
    """One request to the running daemon; exits 3 when none answers, 1 on its error."""
    socket_path = settings.control_socket
    try:
        return control.request_sync(socket_path, method, path, body, timeout)
    except control.Unreachable as exc:
        if not socket_path.exists():
            sys.stderr.write(f"meshd: no running daemon: {socket_path} does not exist "
                             "(start it with `meshd run`, or pass --data-dir)\n")
        else:
            sys.stderr.write(f"meshd: the daemon at {socket_path} did not answer: {exc}\n")
        raise SystemExit(3) from None
    except control.ControlError as exc:
        sys.stderr.write(f"meshd: {exc.message}\n")
        raise SystemExit(1) from None


def _print(args: argparse.Namespace, data, text: str) -> None:
    if args.json or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")


def cmd_backup(args: argparse.Namespace) -> int:
    from meshd.store import backups

    settings = load_settings(args)
    if control.alive(settings.control_socket):
        data = _call(settings, "POST", "/control/backup", {}, timeout=600)
    else:
        paths = settings
        if _is_postgres(paths.database):
            return _pg_backup(args, str(paths.database), paths.backup_dir)
        try:
            data = _asdict(backups.take_backup(paths.database, paths.backup_dir, "operator"))
        except backups.BackupError as exc:
            sys.stderr.write(f"meshd: {exc}\n")
            return 1
    _print(args, data, f"backup {data['file']}: {data['size']} bytes, journal seq "
                       f"{data['journal_seq']}, integrity {data['integrity']}"
           if "journal_seq" in data else  # a PostgreSQL dump's manifest
           f"backup {data['file']}: {data['size']} bytes, verified {data['verified']}")
    return 0


def _is_postgres(database) -> bool:
    return isinstance(database, str)  # config.parse_database keeps only URLs as text


def _pg_backup(args: argparse.Namespace, url: str, backup_dir) -> int:
    from meshd.store import pg_backups

    try:
        manifest = pg_backups.take_dump(url, backup_dir, "operator")
    except pg_backups.BackupError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    _print(args, _asdict(manifest), f"backup {manifest.file}: {manifest.size} bytes, "
                                    f"{sum(manifest.row_counts.values())} rows, verified by a "
                                    "restore into a scratch database")
    return 0


def _pg_restore(args: argparse.Namespace, url: str, backup_dir) -> int:
    """Restore a pg_dump backup (named, or the newest) in place of meshd's tables."""
    from meshd.store import pg_backups

    dumps = sorted(backup_dir.glob(f"*{pg_backups.SUFFIX}"))
    dump = backup_dir / args.backup if args.backup else (dumps[-1] if dumps else None)
    if dump is None or not dump.exists():
        sys.stderr.write(f"meshd: no PostgreSQL backup {args.backup or ''} in {backup_dir}\n")
        return 1
    if args.to_time:
        sys.stderr.write("meshd: --to-time on PostgreSQL is point-in-time recovery: use "
                         "pgBackRest or WAL-G (docs/postgresql.md)\n")
        return 1
    try:
        counts = pg_backups.restore(url, dump)
    except pg_backups.BackupError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    _print(args, {"backup": dump.name, "row_counts": counts},
           f"restored {dump.name}: {sum(counts.values())} rows")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """SQLite -> PostgreSQL, with meshd stopped: the writer lock keeps it from starting."""
    from meshd.locks import FileLock, LockBusy
    from meshd.store import pg_migrate

    paths = load_settings(args)
    if not str(args.to).startswith(("postgresql://", "postgres://")):
        sys.stderr.write("meshd: --to takes a postgresql:// URL\n")
        return 2
    if _is_postgres(paths.database):
        sys.stderr.write("meshd: --database names the SQLite file to copy from\n")
        return 2
    lock = FileLock(paths.data_dir / "writer.lock")
    try:
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=5)
    except LockBusy:
        sys.stderr.write("meshd: meshd is running on this data directory; stop it first\n")
        return 1
    try:
        report = pg_migrate.migrate(paths.database, args.to)
    except (pg_migrate.MigrateError, OSError) as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - psycopg's errors, shown without a traceback
        sys.stderr.write(f"meshd: migration stopped ({type(exc).__name__}: {exc}); "
                         "run the same command again to resume\n")
        return 1
    finally:
        lock.release()
    data = {"verified": report.verified, "resumed": report.resumed,
            "tables": {t: _asdict(r) for t, r in report.tables.items()}}
    text = "\n".join(f"{t:<24} {r.target_rows:>9} rows  {r.moved:>5} moved  "
                     f"{'ok' if r.verified else 'MISMATCH'}" for t, r in report.tables.items())
    _print(args, data, text)
    return 0 if report.verified else 1


def _asdict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def cmd_backups(args: argparse.Namespace) -> int:
    from meshd.supervisor.maintenance import backup_listing

    settings = load_settings(args)
    if control.alive(settings.control_socket):
        rows = _call(settings, "GET", "/control/backups")
    else:
        rows = backup_listing(settings.backup_dir)
    text = "\n".join(
        f"{r['file']}  {r['age_s'] // 60:>6.0f} min  {r['size']:>12} B  "
        f"seq {'-' if r['journal_seq'] is None else r['journal_seq']:>8}"
        f"  {'verified' if r['verified'] else 'NOT VERIFIED'}" for r in rows) or "no backups"
    _print(args, rows, text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from meshd.store import backups

    settings = load_settings(args)
    if control.alive(settings.control_socket):
        data = _call(settings, "POST", "/control/check", {"full": args.full}, timeout=3600)
    else:
        database = settings.database
        if not _is_postgres(database) and not database.exists():
            sys.stderr.write(f"meshd: no database at {database}\n")
            return 1
        problems = backups.integrity(database, full=args.full)
        data = {"ok": not problems, "problems": problems}
    _print(args, data, "ok" if data["ok"] else "PROBLEMS:\n  " + "\n  ".join(data["problems"]))
    return 0 if data["ok"] else 1


def cmd_restore(args: argparse.Namespace) -> int:
    from meshd.store import restore as restore_mod

    if args.from_url:
        return cli_replica.restore_from_replica(args)
    body = {"backup": args.backup, "to_time": _iso(args.to_time) if args.to_time else None}
    paths = load_settings(args)
    if control.alive(paths.control_socket):
        data = _call(paths, "POST", "/control/restore", body, timeout=3600)
        _print(args, data, f"restore run {data['id']}: {data['outcome']} ({data['state']})")
        return 0 if data["outcome"] == "completed" else 1
    if _is_postgres(paths.database):
        return _pg_restore(args, str(paths.database), paths.backup_dir)
    from meshd.locks import FileLock, LockBusy

    lock = FileLock(paths.data_dir / "writer.lock")
    try:
        lock.acquire(timeout=5)
    except LockBusy:
        sys.stderr.write("meshd: another process holds the writer lock; stop meshd first\n")
        return 1
    try:
        report = restore_mod.restore(
            paths.database, paths.data_dir / "journal", paths.backup_dir, paths.data_dir,
            backup_name=args.backup, to_time=_parse_when(args.to_time))
    except restore_mod.RestoreError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    finally:
        lock.release()
    data = _asdict(report)
    _print(args, data, f"restored {report.backup}, replayed {report.replayed} journal records "
                       f"(seq {report.journal_seq}, epoch {report.journal_epoch})")
    return 0


def _parse_when(text: str | None):
    from meshd.clock import parse_time

    if not text:
        return None
    moment = parse_time(text)
    if moment is None:
        sys.stderr.write(f"meshd: --to-time {text!r} is not a timestamp\n")
        raise SystemExit(2)
    return moment


def _iso(text: str) -> str:
    return _parse_when(text).isoformat()


def cmd_mode(args: argparse.Namespace) -> int:

    data = _call(load_settings(args), "POST", "/control/mode", {"mode": args.mode})
    _print(args, data, f"mode: {data['mode']}")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from meshd.recovery.protocols import PROTOCOLS, catalog, dry_run

    if args.action == "list":
        data = catalog(tuple(PROTOCOLS))
        _print(args, data, "\n".join(f"{name}: {' -> '.join(p['states'])}"
                                      for name, p in data.items()))
        return 0
    if args.action == "run":
        if args.name not in PROTOCOLS:
            sys.stderr.write(f"meshd: no protocol {args.name}; one of {', '.join(PROTOCOLS)}\n")
            return 2
        if args.dry_run:
            steps = dry_run(args.name)
            _print(args, {"protocol": args.name, "dry_run": True, "steps": steps}, "\n".join(
                f"{s['state']} -> {s['next']}: {s['summary']}" for s in steps))
            return 0
        context = {k: v for k, v in (("update_id", args.update), ("backup", args.backup),
                                     ("agents", args.agents.split(",") if args.agents else None),
                                     ("rollback_to", args.rollback_to))
                   if v}
        data = _call(load_settings(args), "POST", f"/control/protocols/{args.name}/run",
                            {"reason": args.reason, "context": context})
        _print(args, data, f"run {data['id']} started ({data['protocol']}, {data['state']})")
        return 0
    if args.action == "status":
        if args.run:
            data = _call(load_settings(args), "GET", f"/control/runs/{args.run}")
            text = "\n".join([f"{data['protocol']} {data['id']}: {data['outcome']} at "
                              f"{data['state']}" + (f" ({data['reason']})" if data['reason']
                                                    else "")]
                             + [f"  {st['state']} -> {st['next_state']}: {st['outcome']}"
                                f" ({st['detail']})" for st in data["steps"]])
        else:
            data = _call(load_settings(args), "GET", "/control/runs")
            text = "\n".join(f"{r['id']}  {r['protocol']:<22} {r['outcome']:<9} {r['state']}"
                             for r in data) or "no protocol runs"
        _print(args, data, text)
        return 0
    data = _call(load_settings(args), "POST", f"/control/runs/{args.run}/abort",
                 {"reason": "operator"})
    _print(args, data, f"run {data['id']}: {data['outcome']}")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from meshd.mcp import stdio

    # stdout carries the protocol: log lines (warnings and worse) go to stderr.
    logging.configure("json", "warning", process="mcp")
    return stdio.run()


COMMANDS = {"protocol": cmd_protocol, "run": cmd_run, "worker": cmd_worker, "mcp": cmd_mcp,
            "config": cmd_config, "status": cmd_status, "backup": cmd_backup,
            "backups": cmd_backups, "check": cmd_check, "restore": cmd_restore,
            "mode": cmd_mode, "migrate": cmd_migrate,
            "replicas": lambda args: cli_replica.cmd_replicas(args)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "worker", "mcp"):
        # Operator commands print results on stdout; their log lines go to stderr.
        logging.configure("auto", "warning", process="cli")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
