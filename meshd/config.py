"""Settings: one table of options, read from CLI flags, then environment, then a TOML file.

Every option has a flag (`--backup-interval`), a variable (`MESHD_BACKUP_INTERVAL`) and a TOML
key (`backup_interval`); a few also honour the Node server's variables (`PORT`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_KEY = "openclaw-mesh-default-key"


class ConfigError(ValueError):
    """A setting has a value meshd cannot use; the message names the setting."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20,
               "mb": 1000**2, "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}


def parse_duration(value: Any) -> float:
    """Seconds from `500ms`, `10s`, `5m`, `1h`, `1d` or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use 500ms, 10s, 5m, 1h)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """Bytes from `100KiB`, `25MiB`, `1m` or a bare number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use 512KiB, 25MiB)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_database(value: Any) -> Path | str:
    """A SQLite file path, or a `postgresql://` URL kept as text (a Path would fold `//`)."""
    text = str(value)
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


WS_AUTH_MODES = ("off", "public", "required")


def parse_ws_auth(value: Any) -> str:
    """off, public or required; the old boolean still reads (true: required, false: off)."""
    if isinstance(value, bool):
        return "required" if value else "off"
    text = str(value).strip().lower()
    if text in WS_AUTH_MODES:
        return text
    if text in {"1", "true", "yes", "on"}:
        return "required"
    if text in {"0", "false", "no"}:
        return "off"
    raise ValueError(f"must be one of {', '.join(WS_AUTH_MODES)}")


_ORIGIN_RE = re.compile(r"^https?://[^/\s,]+$")


def parse_origins(value: Any) -> str:
    """`*` or a comma-separated list of origins (`https://ui.example:8443`), kept as text."""
    text = str(value).strip()
    if text == "*":
        return text
    origins = [o.strip().rstrip("/") for o in text.split(",") if o.strip()]
    bad = [o for o in origins if not _ORIGIN_RE.match(o)]
    if not origins or bad:
        raise ValueError("use * or a comma-separated list of origins such as "
                         "https://ui.example.org" + (f" (not an origin: {bad[0]})" if bad else ""))
    return ",".join(origins)


def _replicas(value: Any) -> tuple[str, ...]:
    """Checked here so a malformed URL refuses to start (urls.parse_list says why)."""
    from meshd.store.replica.urls import parse_list

    return tuple(u.url for u in parse_list(value))


def _optional_path(value: Any) -> Path | None:
    return Path(value) if str(value) else None


def _optional_str(value: Any) -> str | None:
    text = str(value)
    return text if text else None


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    extra_env: tuple[str, ...] = ()


OPTIONS: tuple[Option, ...] = (
    Option("config", _optional_str, None, "TOML file with settings (keys as in this table)"),
    Option("host", str, "127.0.0.1", "address to listen on"),
    Option("port", int, 4000, "HTTP and WebSocket port", ("PORT",)),
    Option("node_address", _optional_str, None,
           "this node's address as other nodes and operators reach it, shown in `meshd status`"
           " and in a follower's refusals (default http://HOST:PORT)"),
    Option("api_key", str, DEFAULT_API_KEY, "the agents' shared API key", ("AGENT_MESH_API_KEY",)),
    Option("allow_default_key", parse_bool, False,
           "allow the default API key on a non-loopback address"),
    Option("data_dir", Path, None,
           "data directory (default: $STATE_DIRECTORY under systemd, else ./data)"),
    Option("database", parse_database, None,
           "database file (default <data_dir>/mesh.db; may name a Node agent-mesh.db), or a"
           " postgresql:// URL for the PostgreSQL backend"),
    Option("backup_dir", Path, Path("backups"), "backup directory"),
    Option("log_format", _choice("auto", "json", "console"), "auto",
           "log format: json, console, or auto (console on a TTY)"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "info", "log level"),
    Option("access_log", parse_bool, True, "log one event per HTTP request"),
    Option("ws_auth", parse_ws_auth, "off",
           "WebSocket access: off (anyone, every event), public (anonymous sockets see only "
           "mesh-wide events), required (a key or token needed); must be set explicitly "
           "beyond loopback"),
    Option("agent_auth", _choice("off", "optional", "required"), "optional",
           "agent tokens: off, optional (enforced when presented), required (agent-scoped "
           "routes need the agent's own token)"),
    Option("cors_origins", parse_origins, "*",
           "origins allowed to call header-key routes from a browser (* or a comma list)"),
    Option("metrics_auth", parse_bool, False,
           "require the API key (or a console session) on GET /metrics"),
    Option("max_body_size", parse_size, 1 << 20, "largest JSON body of a non-upload request"),
    Option("max_file_size", parse_size, 25 << 20, "largest uploaded file (decoded bytes)"),
    Option("gzip_min_size", parse_size, 0,
           "agent list and dashboard bodies at least this large are sent gzipped to clients "
           "that accept gzip (0: never)"),
    Option("sweep_interval", parse_duration, 60.0, "how often messages past their timeoutMs are timed out"),
    Option("heartbeat_timeout", parse_duration, 120.0,
           "an agent silent for longer is reported offline"),
    Option("offline_check_interval", parse_duration, 5.0,
           "how often agents past heartbeat_timeout are marked offline"),
    Option("probe_interval", parse_duration, 1.0, "how often the supervisor probes the worker"),
    Option("probe_timeout", parse_duration, 2.0, "a probe unanswered this long has failed"),
    Option("standby", parse_bool, True,
           "keep a warm standby worker, promoted at once when the worker crashes"),
    Option("probe_failures", int, 3, "consecutive failed probes that count as a crash"),
    Option("restart_backoff_max", parse_duration, 30.0, "longest delay between restarts"),
    Option("crash_loop_limit", int, 5, "more crashes than this within crash_loop_window stop "
           "restarting"),
    Option("crash_loop_window", parse_duration, 60.0, "window of crash_loop_limit"),
    Option("backup_interval", parse_duration, 300.0, "time between scheduled backups"),
    Option("backup_cron", _optional_str, None,
           "cron schedule of backups (UTC), instead of backup_interval"),
    Option("backup_keep", int, 10, "newest backups kept (the journal is kept back to them)"),
    Option("backup_keep_daily", int, 7, "days for which the newest backup of the day is kept"),
    Option("backup_keep_weekly", int, 4, "weeks for which the newest backup of the week is kept"),
    Option("quick_check_interval", parse_duration, 60.0, "time between PRAGMA quick_check runs"),
    Option("full_check_cron", str, "0 3 * * *", "cron schedule (UTC) of PRAGMA integrity_check"),
    Option("auto_read_write", parse_bool, True,
           "after a restore, go read-write by itself once the self-test passes"),
    Option("admin_key", _optional_str, None,
           "operator key for /api/admin/* routes (distinct from api_key; unset disables them)"),
    Option("crash_update_window", parse_duration, 900.0,
           "a crash this soon after a breaking, api, schema or emergency update names it possibly related"),
    Option("partition_share", float, 0.5,
           "share of active agents going offline together that opens a network_partition"),
    Option("partition_min_agents", int, 2, "fewest agents that make a network partition"),
    Option("partition_window", parse_duration, 60.0,
           "agents going offline within this window count as going offline together"),
    Option("partition_max_wait", parse_duration, 3600.0,
           "a network_partition run waits this long for its agents, then lists the rest as "
           "lost and resolves"),
    Option("adoption_window", parse_duration, 600.0,
           "agents heartbeating within this window count as active for a breaking update's "
           "adoption"),
    Option("adoption_max_wait", parse_duration, 86400.0,
           "a breaking_api_update run waits this long for adoption, then resolves with who "
           "is still behind (or no active agents)"),
    Option("event_log_keep", int, 100000,
           "newest events kept in the events table for WebSocket clients resuming with ?since="),
    Option("update_grace", parse_duration, 600.0,
           "time after a breaking update before too-old agents are refused"),
    Option("unknown_version", _choice("deny", "allow"), "deny",
           "whether an agent of unknown version counts as too old during enforcement"),
    Option("alert_command", _optional_str, None,
           "command run with each critical event / protocol transition as JSON on stdin"),
    Option("alert_webhook", _optional_str, None,
           "URL POSTed each critical event / protocol transition as JSON"),
    Option("alert_timeout", parse_duration, 10.0, "time limit of one alert hook"),
    Option("replica", _replicas, (),
           "off-site replicas of backups and journal: file:///dir, sftp://user@host/dir, "
           "s3://bucket/prefix (comma-separated, or a TOML list)"),
    Option("replica_credentials", _optional_path, None,
           "KEY=VALUE file with replica secrets (AWS_*, MESHD_SFTP_*), read over the environment"),
    Option("replica_key_file", _optional_path, None,
           "file with a 256-bit key (64 hex characters): encrypt everything shipped to replicas"),
    Option("replica_interval", parse_duration, 1.0, "how often new journal records are shipped"),
    Option("replica_sync", parse_bool, False,
           "acknowledge a write only once a replica holds its journal records (RPO 0)"),
    Option("replica_sync_timeout", parse_duration, 2.0,
           "with replica_sync, a write no replica confirms within this is aborted (503)"),
    Option("drill_interval", parse_duration, 86400.0,
           "how often the newest replica is restored into a scratch file and checked"),
    Option("readers", int, 4, "reader connections (threads)"),
    Option("baseline_retry", parse_duration, 10.0,
           "after a restore, how long the worker waits between attempts at its baseline backup"),
    Option("event_loop", _choice("uvloop", "asyncio"), "asyncio",
           "the worker's event loop: uvloop (libuv) or asyncio's own"),
    Option("drain_timeout", parse_duration, 10.0,
           "how long shutdown waits for in-flight requests"),
    Option("mcp", parse_bool, False,
           "serve the MCP server (streamable HTTP) at /mcp on the API port"),
    Option("header_timeout", parse_duration, 20.0,
           "a connection that has not sent a whole request head within this is closed"),
    Option("body_timeout", parse_duration, 30.0,
           "a request body that stops arriving for this long is refused (408)"),
    Option("ws_max_per_address", int, 0,
           "most WebSocket connections from one remote address (0: no cap; never loopback)"),
)
_BY_NAME = {opt.name: opt for opt in OPTIONS}


# Defaults of the settings whose table default is "decided by another setting", for a Settings
# built without the loader (the loader always resolves them: see `load`).
_SETTINGS_DEFAULTS = {"data_dir": Path("data"), "database": None}


class _SettingsBase:
    """Behaviour of Settings; its fields come from OPTIONS (declared once, there)."""

    __slots__ = ()

    def __post_init__(self) -> None:
        if self.database is None:
            object.__setattr__(self, "database", Path(self.data_dir) / "mesh.db")

    @property
    def listens_beyond_loopback(self) -> bool:
        return not is_loopback(self.host)

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "meshd.sock"

    @property
    def worker_socket(self) -> Path:
        return self.data_dir / "worker.sock"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _settings_fields() -> list[tuple[str, Any, Any]]:
    fields = [(opt.name, Any, field(default=_SETTINGS_DEFAULTS.get(opt.name, opt.default)))
              for opt in OPTIONS]
    fields.append(("sources", Mapping[str, str], field(default_factory=dict, compare=False)))
    return fields


# One field per option, same name and default: adding a row to OPTIONS adds the setting.
Settings = dataclasses.make_dataclass(
    "Settings", _settings_fields(), bases=(_SettingsBase,), frozen=True, slots=True)
Settings.__module__ = __name__
Settings.__doc__ = "The effective settings: one field per row of OPTIONS, plus their sources."

PATH_OPTIONS = tuple(opt.name for opt in OPTIONS if opt.parse in (Path, _optional_path))


def to_json(settings: Settings) -> str:
    """Settings for a worker process, which gets them from its supervisor, not from flags."""
    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    data["sources"] = dict(settings.sources)
    return json.dumps(data, default=str)


def from_json(text: str) -> Settings:
    data = json.loads(text)
    data["replica"] = tuple(data.get("replica") or ())
    for name in PATH_OPTIONS:
        if data.get(name) is not None:
            data[name] = Path(data[name])
    if data.get("database") is not None:
        data["database"] = parse_database(data["database"])
    return Settings(**data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_name(name: str) -> str:
    return "MESHD_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option; unset flags stay None so env and TOML can fill them."""
    for opt in OPTIONS:
        text = option_help(opt)
        if opt.parse is parse_bool:
            parser.add_argument(flag_name(opt.name), dest=opt.name, nargs="?", const="true",
                                default=None, help=text)
        else:
            parser.add_argument(flag_name(opt.name), dest=opt.name, default=None, help=text)


def option_help(opt: Option) -> str:
    """The option's help with its default and environment names (`--help` of every command);
    `%` doubled for argparse."""
    envs = ", ".join((env_name(opt.name), *opt.extra_env))
    default = "none" if opt.default is None or opt.default == () else opt.default
    if opt.name in SECRET_OPTIONS:
        default = "the Node server's default key" if opt.default else "unset"
    return f"{opt.help} (default: {default}; env {envs})".replace("%", "%%")


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option: flag, then environment, then TOML file, then default."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and k in _BY_NAME}
    environ = os.environ if environ is None else environ
    config_path = flags.get("config") or environ.get(env_name("config"))
    toml_values = _read_toml(Path(config_path)) if config_path else {}
    unknown = set(toml_values) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {config_path}: {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw, source = _lookup(opt, flags, environ, toml_values)
        if raw is None:
            values[opt.name] = opt.default
            sources[opt.name] = "default"
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{opt.name} ({source}): {exc}") from None
        sources[opt.name] = source

    if values["data_dir"] is None:
        # systemd's StateDirectory= comes after MESHD_DATA_DIR and the file: it is where a
        # unit without any other setting keeps its state.
        state_dir = environ.get("STATE_DIRECTORY")
        values["data_dir"] = Path(state_dir.split(":")[0]) if state_dir else Path("data")
        if state_dir:
            sources["data_dir"] = "env STATE_DIRECTORY"
    if values["database"] is None:
        values["database"] = values["data_dir"] / "mesh.db"
    if not values["api_key"]:
        values["api_key"] = DEFAULT_API_KEY  # the Node server treats an empty key as unset
    settings = Settings(**values, sources=sources)
    validate(settings)
    return settings


# The installed service's settings (`make install`): operator commands read this file when it
# exists and nothing else names one. MESHD_SYSTEM_CONFIG moves it, for tests of that fallback.
SYSTEM_CONFIG = Path("/etc/meshd/meshd.toml")


def system_config(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("MESHD_SYSTEM_CONFIG") or SYSTEM_CONFIG)


def load_for_operator(flags: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> Settings:
    """`load` for the operator commands (not `meshd run`): with no --config and no
    MESHD_CONFIG, the installed service's file is used when it exists, so an admin finds the
    service's data and backups from any directory without flags."""
    flags = dict(flags or {})
    environ = os.environ if environ is None else environ
    if not flags.get("config") and not environ.get(env_name("config")):
        fallback = system_config(environ)
        if fallback.is_file():
            flags["config"] = str(fallback)
            settings = load(flags, environ)
            return settings.replace(sources={**settings.sources,
                                             "config": f"system file {fallback}"})
    return load(flags, environ)


# Intervals that drive a timer or scheduler: zero would spin.
_POSITIVE_DURATIONS = frozenset({"sweep_interval", "offline_check_interval", "probe_interval",
                                 "probe_timeout", "backup_interval", "quick_check_interval"})


def validate(settings: Settings) -> None:
    """Checked when settings load, before anything is created on disk, so a bad value is a
    clear message and exit 2, not a traceback after the control socket exists."""
    for opt in OPTIONS:
        if opt.parse is parse_duration:
            value = getattr(settings, opt.name)
            if value < 0 or (value == 0 and opt.name in _POSITIVE_DURATIONS):
                raise ConfigError(f"{opt.name}: {value:g} s; it must be more than 0")
    for name in ("backup_cron", "full_check_cron"):
        text = getattr(settings, name)
        if text is not None:
            problem = cron_problem(text)
            if problem:
                raise ConfigError(f"{name}: {text!r} is not a cron schedule ({problem}); "
                                  "use five fields, e.g. '*/5 * * * *'")
    for name in ("data_dir", "backup_dir"):
        path = getattr(settings, name)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{name}: {path} exists and is not a directory")
    if isinstance(settings.database, Path) and settings.database.is_dir():  # a URL is text
        raise ConfigError(f"database: {settings.database} is a directory")
    if not 0 < settings.port < 65536 and settings.port != 0:
        raise ConfigError(f"port: {settings.port} is not a TCP port")
    if settings.readers < 1:
        raise ConfigError("readers: at least 1")
    if min(settings.replica_interval, settings.drill_interval,
           settings.replica_sync_timeout) <= 0:
        raise ConfigError("replica_interval, replica_sync_timeout, drill_interval: more than 0")
    if settings.replica_sync and not settings.replica:
        raise ConfigError("replica_sync: needs at least one replica")
    if isinstance(settings.database, str) and (settings.replica or settings.replica_sync):
        # Replicas ship meshd's SQLite backups and journal; PostgreSQL has neither.
        raise ConfigError("replica, replica_sync: SQLite only; on PostgreSQL use its own "
                          "streaming replication or WAL archiving (docs/postgresql.md)")
    if settings.replica_credentials is not None:
        from meshd.store.replica.targets import read_credentials

        try:
            read_credentials(settings.replica_credentials, {})
        except OSError as exc:
            raise ConfigError(f"replica_credentials: {exc}") from None
    if settings.replica_key_file is not None:
        from meshd.store.replica.crypt import load_key

        try:
            load_key(settings.replica_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"replica_key_file: {exc}") from None


def cron_problem(text: str) -> str | None:
    """Why a crontab line is unusable, or None: the same parser the scheduler uses."""
    from apscheduler.triggers.cron import CronTrigger

    if len(text.split()) != 5:
        return f"{len(text.split())} fields, not 5"
    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        return str(exc)
    return None


def refuse_unsafe(settings: Settings) -> str | None:
    """The reason to refuse starting, or None: the default key must not face a network, and
    nor may a WebSocket whose openness nobody chose."""
    if (
        settings.api_key == DEFAULT_API_KEY
        and settings.listens_beyond_loopback
        and not settings.allow_default_key
    ):
        return (
            f"refusing to listen on {settings.host} with the default API key: anyone on the "
            "network could use the mesh. Set AGENT_MESH_API_KEY (or --api-key), or pass "
            "--allow-default-key if this network is trusted."
        )
    if settings.listens_beyond_loopback and settings.sources.get("ws_auth", "default") == "default":
        return (
            f"refusing to listen on {settings.host} without an explicit ws_auth: choose off "
            "(anyone who reaches the port reads every event, direct messages included), public "
            "(sockets without a key see only mesh-wide events) or required (a key or agent "
            "token is needed), e.g. --ws-auth public or MESHD_WS_AUTH=public."
        )
    return None


def _lookup(
    opt: Option, flags: Mapping[str, Any], environ: Mapping[str, str], toml_values: Mapping
) -> tuple[Any, str]:
    if opt.name in flags:
        return flags[opt.name], "flag " + flag_name(opt.name)
    if env_name(opt.name) in environ:
        return environ[env_name(opt.name)], "env " + env_name(opt.name)
    for var in opt.extra_env:
        if environ.get(var):
            return environ[var], "env " + var
    if opt.name in toml_values:
        return toml_values[opt.name], "config file"
    return None, "default"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return data.get("meshd", data)


SECRET_OPTIONS = frozenset({"api_key", "admin_key"})


def describe(settings: Settings) -> list[dict[str, Any]]:
    """Every effective setting with where it came from (`meshd config`); secrets are shown
    only as set or default, never their value."""
    rows = []
    for opt in OPTIONS:
        value = getattr(settings, opt.name)
        if opt.name in SECRET_OPTIONS and value is not None:
            value = "(default)" if value == DEFAULT_API_KEY else "(set)"
        elif isinstance(value, Path):
            value = str(value)
        rows.append({"setting": opt.name, "value": value,
                     "source": settings.sources.get(opt.name, "default")})
    return rows


def settings_table() -> Sequence[tuple[str, str, str, str, str]]:
    """(setting, flag, env, default, help) rows: the README's table is checked against these."""
    rows = []
    for opt in OPTIONS:
        envs = ", ".join((env_name(opt.name), *opt.extra_env))
        rows.append((opt.name, flag_name(opt.name), envs, str(opt.default), opt.help))
    return rows
