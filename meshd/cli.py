"""The `meshd` command: `meshd run` starts the daemon; other subcommands talk to it."""

from __future__ import annotations

import argparse
import asyncio
import sys

from meshd import __version__, config
from meshd import log as logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start meshd in the foreground")
    config.add_arguments(run)
    return parser


def load_settings(args: argparse.Namespace) -> config.Settings:
    try:
        return config.load(vars(args))
    except config.ConfigError as exc:
        sys.stderr.write(f"meshd: configuration error: {exc}\n")
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    logging.configure(settings.log_format, settings.log_level, process="worker")
    log = logging.get("meshd")
    refusal = config.refuse_unsafe(settings)
    if refusal:
        sys.stderr.write(f"meshd: {refusal}\n")
        return 2
    if settings.listens_beyond_loopback and not settings.ws_auth:
        log.warning("config.ws_open", host=settings.host,
                    detail="WebSocket connections are accepted without a key; set ws_auth "
                           "to require it")
    from meshd.store.schema import SchemaTooNew
    from meshd.worker import serve

    try:
        asyncio.run(serve(settings))
    except SchemaTooNew as exc:
        sys.stderr.write(f"meshd: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"meshd: cannot start: {exc}\n")
        return 1
    return 0


COMMANDS = {"run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
