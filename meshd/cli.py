"""The `meshd` command: `meshd run` starts the daemon; other subcommands talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from meshd import __version__, cli_help, cli_offline, cli_render, cli_replica, config
from meshd import log as logging
from meshd.control import client as control


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description=__doc__,
                                     epilog=cli_help.epilog(None),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    visible = ["run", "config", "status", "backup", "backups", "check", "restore", "mode",
               "protocol", "replicas", "migrate", "mcp", "completion"]
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{" + ",".join(visible) + "}")

    def command(name: str, help_text: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=cli_help.epilog(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    run = command("run", "start meshd (supervisor + API worker) in the foreground")
    config.add_arguments(run)
    sub.add_parser("worker")  # started by the supervisor only: no help, not listed
    show = command("config", "print the effective settings and where each came from")
    config.add_arguments(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    _daemon_arguments(command("status", "show the daemon's state (read fresh from it)"))
    _daemon_arguments(command("backup", "take a verified backup now (through the daemon, "
                                        "or on the files when none runs)"))
    _daemon_arguments(command("backups", "list backups with age, size and verification"))
    check = command("check", "run PRAGMA quick_check (or integrity_check)")
    _daemon_arguments(check)
    check.add_argument("--full", action="store_true", help="full integrity_check")
    restore = command("restore", "restore the newest verified backup (or BACKUP) and replay "
                                 "the journal; asks for confirmation (--yes without a terminal)")
    _daemon_arguments(restore)
    restore.add_argument("backup", nargs="?", help="backup file name (default: newest verified)")
    restore.add_argument("--to-time", help="point in time (ISO-8601, UTC if no zone); starts "
                                           "a new journal epoch")
    restore.add_argument("--yes", "-y", action="store_true",
                         help="do not ask for confirmation (needed without a terminal)")
    restore.add_argument("--output", "-o", metavar="PATH",
                         help="build the restored database at PATH (a new file) and touch "
                              "nothing live: no lock, no daemon, no confirmation")
    migrate = command("migrate", "copy a stopped SQLite mesh into PostgreSQL, verified by row "
                      "counts and checksums (resumable)")
    _daemon_arguments(migrate)
    migrate.add_argument("--to", required=True, help="postgresql:// URL of the target database")
    cli_replica.add_arguments(sub, restore, _daemon_arguments)
    sub.choices["replicas"].epilog = cli_help.epilog("replicas")
    sub.choices["replicas"].formatter_class = argparse.RawDescriptionHelpFormatter
    mode = command("mode", "switch the running daemon read-only or read-write")
    _daemon_arguments(mode)
    mode.add_argument("mode", choices=["read-only", "read-write"])
    protocol = command("protocol", "list, run, inspect or abort recovery protocols")
    psub = protocol.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parsed = psub.add_parser(name, help=help_text, description=help_text,
                                 epilog=cli_help.epilog("protocol"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        _daemon_arguments(parsed)
        return parsed

    action("list", "the four protocols and their states")
    prun = action("run", "start a protocol by hand")
    prun.add_argument("name", choices=list(PROTOCOL_NAMES),
                      help="one of: " + ", ".join(PROTOCOL_NAMES))
    prun.add_argument("--dry-run", action="store_true", help="print the steps; change nothing")
    prun.add_argument("--reason", default="started by an operator",
                      help="recorded with the run (default: %(default)s)")
    prun.add_argument("--update", help="update id (breaking_api_update)")
    prun.add_argument("--agents", help="comma-separated agent ids (network_partition)")
    prun.add_argument("--backup", help="backup file (database_corruption)")
    prun.add_argument("--rollback-to", metavar="V",
                      help="roll the newest breaking update back to version V "
                           "(server_crash_recovery)")
    pstatus = action("status", "runs, or one run's step log")
    pstatus.add_argument("run", nargs="?", help="run id (default: list the runs)")
    pabort = action("abort", "abort a run (its event stays open)")
    pabort.add_argument("run", help="run id")
    command("mcp", "MCP server over stdio, a client of a running meshd "
                   "(MESHD_URL, MESHD_AGENT_TOKEN or MESHD_API_KEY)")
    completion = command("completion", "print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh"])
    return parser


def _protocol_names() -> tuple[str, ...]:
    from meshd.recovery.protocols import PROTOCOLS

    return tuple(PROTOCOLS)


PROTOCOL_NAMES = _protocol_names()


def _daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Operator commands resolve settings like `meshd run` (flag > environment > file >
    default) and find the daemon through the control socket in the data directory."""
    parser.add_argument("--config", dest="config", default=None,
                        help="TOML file with settings, as given to `meshd run` (default: "
                             "$MESHD_CONFIG, else /etc/meshd/meshd.toml when it exists)")
    parser.add_argument("--data-dir", dest="data_dir", default=None,
                        help="data directory of the daemon (default: $MESHD_DATA_DIR, the "
                             "file's data_dir, $STATE_DIRECTORY, else ./data)")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (also whenever stdout is not a terminal)")
    parser.add_argument("--backup-dir", dest="backup_dir", default=None,
                        help="backup directory (default: $MESHD_BACKUP_DIR, the file's "
                             "backup_dir, else ./backups)")
    parser.add_argument("--database", dest="database", default=None,
                        help="database file (default: $MESHD_DATABASE, else <data dir>/mesh.db)")


def load_settings(args: argparse.Namespace) -> config.Settings:
    """Settings of an operator command: `meshd run`'s loader, plus the installed service's
    /etc/meshd/meshd.toml when no other config file is named."""
    loader = config.load if args.command == "run" else config.load_for_operator
    try:
        return loader(vars(args))
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
    _print(args, rows, cli_render.table(("SETTING", "VALUE", "SOURCE"), [
        (r["setting"], _show(r["value"]), r["source"]) for r in rows]))
    return 0


def _show(value) -> str:
    return "none" if value is None else str(value)


def cmd_worker(args: argparse.Namespace) -> int:
    from meshd import progress
    from meshd.worker.serve import run_supervised

    # Migration (and start-up replay) of a daemon run in the foreground show on its terminal.
    progress.enable()
    return run_supervised()


def cmd_status(args: argparse.Namespace) -> int:
    data = _call(load_settings(args), "GET", "/status")
    _print(args, data, cli_render.status(data))
    return 0


def render_status(data: dict) -> str:
    return cli_render.status(data) + "\n"


def _call(settings: config.Settings, method: str, path: str, body=None,
          timeout: float = 30.0):
    """One request to the running daemon; exits 3 when none answers (not running, or not
    answering: a short probe first, so a stopped daemon is told at once rather than after
    the request's own timeout), 1 on its error."""
    socket_path = settings.control_socket
    state = control.probe(socket_path)
    if state is not control.Liveness.ANSWERING:
        sys.stderr.write(cli_offline.no_answer(settings, state) + "\n")
        raise SystemExit(3)
    try:
        return control.request_sync(socket_path, method, path, body, timeout)
    except control.Unreachable as exc:  # it stopped or died since the probe
        sys.stderr.write(cli_offline.no_answer(settings, control.probe(socket_path),
                                               f": {exc}") + "\n")
        raise SystemExit(3) from None
    except control.ControlError as exc:
        sys.stderr.write(f"meshd: {exc.message}\n")
        raise SystemExit(1) from None


def _print(args: argparse.Namespace, data, text: str) -> None:
    """--json, or stdout not a terminal: the data as JSON (the stable form scripts read);
    else the human text."""
    if args.json or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(text + "\n")


def _offline_note(settings: config.Settings) -> None:
    sys.stderr.write(f"meshd: no daemon answers on {settings.control_socket}; working on the "
                     "files\n")


def cmd_backup(args: argparse.Namespace) -> int:
    from meshd.store import backups

    settings = load_settings(args)
    daemon = cli_offline.find(settings)
    if daemon.alive:
        data = _call(settings, "POST", "/control/backup", {}, timeout=600)
    else:
        _offline_note(settings)
        if _is_postgres(settings.database):
            return _pg_backup(args, str(settings.database), settings.backup_dir)
        try:
            data = _asdict(backups.take_backup(settings.database, settings.backup_dir,
                                               "operator"))
        except backups.BackupError as exc:
            sys.stderr.write(f"meshd: {exc}\n")
            return 1
    _print(args, data, f"backup {data['file']}: {data['size']} bytes, verified "
                       f"{data['verified']}" if "journal_seq" not in data  # a pg_dump's manifest
           else cli_render.pairs([
        ("file", data["file"]), ("size", cli_render.size(data["size"])),
        ("journal seq", data["journal_seq"]), ("journal epoch", data.get("journal_epoch")),
        ("integrity", data["integrity"]), ("sha256", data.get("sha256"))]))
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
        _offline_note(settings)
        rows = backup_listing(settings.backup_dir)
        if not settings.backup_dir.is_dir():
            sys.stderr.write(f"meshd: no backup directory {settings.backup_dir.resolve()} "
                             "(pass --backup-dir or --config)\n")
    _print(args, rows, cli_render.backups(rows))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from meshd.store import backups

    settings = load_settings(args)
    if control.alive(settings.control_socket):
        data = _call(settings, "POST", "/control/check", {"full": args.full}, timeout=3600)
    else:
        _offline_note(settings)
        database = settings.database
        if not _is_postgres(database) and not database.exists():
            sys.stderr.write(f"meshd: no database at {database}\n")
            return 1
        problems = backups.integrity(database, full=args.full)
        data = {"ok": not problems, "problems": problems,
                "check": {"kind": "integrity_check" if args.full else "quick_check",
                          "database": str(database)}}
    text = cli_render.pairs([("check", data.get("check", {}).get("kind")),
                             ("result", "ok" if data["ok"] else "PROBLEMS")]
                            + [("problem", p) for p in data["problems"]])
    _print(args, data, text)
    return 0 if data["ok"] else 1


def cmd_restore(args: argparse.Namespace) -> int:
    if args.from_url:
        if args.output:
            sys.stderr.write("meshd: --output and --from do not combine\n")
            return 2
        settings = load_settings(args)
        daemon = cli_offline.find(settings)
        if daemon.alive:
            sys.stderr.write(f"meshd: cannot restore --from a replica beside the daemon "
                             f"answering on {settings.control_socket}: it rebuilds the data "
                             "directory as on a new machine; stop meshd first\n")
            return 1
        cli_offline.refuse_if_hung(daemon, settings, "restore --from a replica")
        plan = (f"This restores from replica {args.from_url} into {settings.database.resolve()}"
                " (a database there moves to the quarantine directory).")
        if not confirm(args, plan):
            return 2
        return cli_replica.restore_from_replica(args)
    to_time = _parse_when(args.to_time)
    settings = load_settings(args)
    if args.output:
        return _restore_copy(args, settings, to_time)
    daemon = cli_offline.find(settings)
    cli_offline.refuse_if_hung(daemon, settings, "restore")
    if _is_postgres(settings.database):
        if daemon.alive:
            sys.stderr.write("meshd: a PostgreSQL restore replaces meshd's tables: stop meshd "
                             "first, then run meshd restore\n")
            return 1
        return _pg_restore(args, str(settings.database), settings.backup_dir)
    plan = _restore_plan(settings, args.backup, to_time, daemon.alive)
    if not confirm(args, plan):
        return 2
    if daemon.alive:
        body = {"backup": args.backup, "to_time": to_time.isoformat() if to_time else None}
        data = _call(settings, "POST", "/control/restore", body, timeout=3600)
        _print(args, data, f"restore run {data['id']}: {data['outcome']} ({data['state']})")
        return 0 if data["outcome"] == "completed" else 1
    _offline_note(settings)
    from meshd.store import restore as restore_mod

    lock = cli_offline.writer_lock(settings)
    try:
        report = restore_mod.restore(
            settings.database, settings.data_dir / "journal", settings.backup_dir,
            settings.data_dir, backup_name=args.backup, to_time=to_time)
    except restore_mod.RestoreError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    finally:
        lock.release()
    _print(args, _asdict(report), _restore_text(report))
    return 0


def _restore_text(report, output=None) -> str:
    rows = [("backup", report.backup), ("replayed", f"{report.replayed} journal records"),
            ("journal seq", report.journal_seq), ("journal epoch", report.journal_epoch),
            ("to time", report.to_time or "-"), ("seconds", report.seconds)]
    if output:
        rows.insert(0, ("output", output))
    rows += [("quarantined", q) for q in report.quarantined]
    return cli_render.pairs(rows)


def _restore_copy(args: argparse.Namespace, settings: config.Settings, to_time) -> int:
    from meshd.store import restore as restore_mod

    output = Path(args.output).resolve()
    if output == settings.database.resolve():
        sys.stderr.write("meshd: --output names the live database; pick another path\n")
        return 2
    try:
        report = restore_mod.restore_copy(output, settings.data_dir / "journal",
                                          settings.backup_dir, backup_name=args.backup,
                                          to_time=to_time)
    except restore_mod.RestoreError as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 1
    data = _asdict(report) | {"output": str(output)}
    _print(args, data, _restore_text(report, str(output)))
    return 0


def _restore_plan(settings: config.Settings, backup: str | None, to_time,
                  alive: bool) -> str:
    """What a restore will replace, from which backup, and (--to-time) which epoch it
    starts: shown before the confirmation."""
    from meshd.store import restore as restore_mod

    try:
        manifest, _skipped = restore_mod.choose_backup(settings.backup_dir, backup, to_time)
    except restore_mod.RestoreError as exc:
        if alive:  # the daemon restores from its own settings, which it checks itself
            which = backup or "its newest verified backup"
            return (f"This asks the running daemon to restore {which}; it answers 503 to "
                    "agents until the restore ends.")
        sys.stderr.write(f"meshd: {exc}\n")
        raise SystemExit(1) from None
    lines = [f"This replaces {settings.database.resolve()} with backup {manifest.file} "
             f"(taken {manifest.created_at}, journal seq {manifest.journal_seq}) plus the "
             "journal after it; the current file moves to "
             f"{(settings.data_dir / 'quarantine').resolve()}/."]
    if to_time is not None:
        epoch = restore_mod.next_epoch(settings.data_dir / "journal", manifest)
        lines.append(f"--to-time {to_time.isoformat()} starts journal epoch {epoch}: records "
                     "after that moment stay on disk but leave the timeline.")
    if alive:
        lines.append("The running daemon answers 503 to agents until the restore ends.")
    return "\n".join(lines)


def confirm(args: argparse.Namespace, plan: str) -> bool:
    """On a terminal, ask; without one, --yes is required (exit 2 otherwise)."""
    sys.stderr.write(plan + "\n")
    if args.yes:
        return True
    if not sys.stdin.isatty():
        sys.stderr.write("meshd: not a terminal: pass --yes to restore\n")
        return False
    sys.stderr.write("Proceed? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer in ("y", "yes"):
        return True
    sys.stderr.write("meshd: restore cancelled\n")
    return False


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
    from meshd.recovery.protocols import catalog, dry_run

    if args.action == "list":
        data = catalog(PROTOCOL_NAMES)
        _print(args, data, cli_render.table(("PROTOCOL", "STATES"), [
            (name, " -> ".join(p["states"])) for name, p in data.items()]))
        return 0
    if args.action == "run":
        if args.dry_run:
            steps = dry_run(args.name)
            _print(args, {"protocol": args.name, "dry_run": True, "steps": steps},
                   cli_render.table(("STATE", "NEXT", "STEP"), [
                       (s["state"], s["next"], s["summary"]) for s in steps]))
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
            text = (f"{data['protocol']} {data['id']}: {data['outcome']} at {data['state']}"
                    + (f" ({data['reason']})" if data['reason'] else "") + "\n\n"
                    + cli_render.table(("STATE", "NEXT", "OUTCOME", "DETAIL"), [
                        (st["state"], st["next_state"], st["outcome"], st["detail"])
                        for st in data["steps"]]))
        else:
            data = _call(load_settings(args), "GET", "/control/runs")
            text = cli_render.table(("RUN", "PROTOCOL", "OUTCOME", "STATE"), [
                (r["id"], r["protocol"], r["outcome"], r["state"]) for r in data]) \
                if data else "no protocol runs"
        _print(args, data, text)
        return 0
    data = _call(load_settings(args), "POST", f"/control/runs/{args.run}/abort",
                 {"reason": "operator"})
    _print(args, data, f"run {data['id']}: {data['outcome']}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    parser = build_parser()
    sys.stdout.write(cli_help.bash(parser) if args.shell == "bash" else cli_help.zsh(parser))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from meshd.mcp import stdio

    # stdout carries the protocol: log lines (warnings and worse) go to stderr.
    logging.configure("json", "warning", process="mcp")
    return stdio.run()


COMMANDS = {"protocol": cmd_protocol, "run": cmd_run, "worker": cmd_worker, "mcp": cmd_mcp,
            "config": cmd_config, "status": cmd_status, "backup": cmd_backup,
            "backups": cmd_backups, "check": cmd_check, "restore": cmd_restore,
            "mode": cmd_mode, "migrate": cmd_migrate, "completion": cmd_completion,
            "replicas": lambda args: cli_replica.cmd_replicas(args)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "worker", "mcp", "completion"):
        # Operator commands print results on stdout; their log lines go to stderr, and so do
        # progress bars of a long backup, restore or replay when stderr is a terminal.
        logging.configure("auto", "warning", process="cli")
        from meshd import progress

        progress.enable()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
