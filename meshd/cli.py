"""The `meshd` command: `meshd run` starts the daemon; other subcommands talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from meshd import __version__, config
from meshd import log as logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start meshd (supervisor + API worker) in the foreground")
    config.add_arguments(run)
    sub.add_parser("worker", help=argparse.SUPPRESS)
    status = sub.add_parser("status", help="show the running daemon's state")
    _daemon_arguments(status)
    return parser


def _daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Operator commands find the daemon through the control socket in its data dir."""
    parser.add_argument("--data-dir", dest="data_dir", default=None,
                        help="data directory of the daemon (default: $STATE_DIRECTORY or ./data)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


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
    if settings.listens_beyond_loopback and not settings.ws_auth:
        log.warning("config.ws_open", host=settings.host,
                    detail="WebSocket connections are accepted without a key; set ws_auth "
                           "to require it")
    from meshd.store.schema import SchemaTooNew, check_version
    from meshd.supervisor import run_supervisor

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


def cmd_worker(args: argparse.Namespace) -> int:
    from meshd.worker import run_supervised

    return run_supervised()


def cmd_status(args: argparse.Namespace) -> int:
    from meshd import control

    data = control.call(args, "GET", "/status")
    if args.json or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(control.render_status(data))
    return 0


COMMANDS = {"run": cmd_run, "worker": cmd_worker, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
