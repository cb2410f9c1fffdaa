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
    Option("ws_auth", parse_bool, False, "require the API key on WebSocket connections"),
    Option("max_body_size", parse_size, 1 << 20, "largest JSON body of a non-upload request"),
    Option("max_file_size", parse_size, 25 << 20, "largest uploaded file (decoded bytes)"),
    Option("sweep_interval", parse_duration, 60.0, "how often messages past their timeoutMs are timed out"),
    Option("heartbeat_timeout", parse_duration, 120.0,
           "an agent silent for longer is reported offline"),
    Option("offline_check_interval", parse_duration, 5.0,
           "how often agents past heartbeat_timeout are marked offline"),
    Option("probe_interval", parse_duration, 1.0, "how often the supervisor probes the worker"),
    Option("probe_timeout", parse_duration, 2.0, "a probe unanswered this long has failed"),
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
           "a crash this soon after a system update marks the update suspect"),
    Option("partition_share", float, 0.5,
           "share of active agents going offline together that opens a network_partition"),
    Option("partition_min_agents", int, 2, "fewest agents that make a network partition"),
    Option("partition_window", parse_duration, 60.0,
           "agents going offline within this window count as going offline together"),
    Option("update_grace", parse_duration, 600.0,
           "time after a breaking update before too-old agents are refused"),
    Option("unknown_version", _choice("deny", "allow"), "deny",
           "whether an agent of unknown version counts as too old during enforcement"),
    Option("alert_command", _optional_str, None,
           "command run with each critical event / protocol transition as JSON on stdin"),
    Option("alert_webhook", _optional_str, None,
           "URL POSTed each critical event / protocol transition as JSON"),
    Option("alert_timeout", parse_duration, 10.0, "time limit of one alert hook"),
    Option("readers", int, 4, "reader connections (threads)"),
    Option("drain_timeout", parse_duration, 10.0,
           "how long shutdown waits for in-flight requests"),
)
_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclass(frozen=True, slots=True)
class Settings:
    config: str | None = None
    host: str = "127.0.0.1"
    port: int = 4000
    api_key: str = DEFAULT_API_KEY
    allow_default_key: bool = False
    data_dir: Path = Path("data")
    database: Path | str = Path("data/mesh.db")  # str: a postgresql:// URL
    backup_dir: Path = Path("backups")
    log_format: str = "auto"
    log_level: str = "info"
    access_log: bool = True
    ws_auth: bool = False
    max_body_size: int = 1 << 20
    max_file_size: int = 25 << 20
    sweep_interval: float = 60.0
    heartbeat_timeout: float = 120.0
    offline_check_interval: float = 5.0
    probe_interval: float = 1.0
    probe_timeout: float = 2.0
    probe_failures: int = 3
    restart_backoff_max: float = 30.0
    crash_loop_limit: int = 5
    crash_loop_window: float = 60.0
    backup_interval: float = 300.0
    backup_cron: str | None = None
    backup_keep: int = 10
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    quick_check_interval: float = 60.0
    full_check_cron: str = "0 3 * * *"
    auto_read_write: bool = True
    admin_key: str | None = None
    crash_update_window: float = 900.0
    partition_share: float = 0.5
    partition_min_agents: int = 2
    partition_window: float = 60.0
    update_grace: float = 600.0
    unknown_version: str = "deny"
    alert_command: str | None = None
    alert_webhook: str | None = None
    alert_timeout: float = 10.0
    readers: int = 4
    drain_timeout: float = 10.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

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


def to_json(settings: Settings) -> str:
    """Settings for a worker process, which gets them from its supervisor, not from flags."""
    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    data["sources"] = dict(settings.sources)
    return json.dumps(data, default=str)


def from_json(text: str) -> Settings:
    data = json.loads(text)
    for name in ("data_dir", "backup_dir"):
        data[name] = Path(data[name])
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
        if opt.parse is parse_bool:
            parser.add_argument(flag_name(opt.name), dest=opt.name, nargs="?", const="true",
                                default=None, help=opt.help)
        else:
            parser.add_argument(flag_name(opt.name), dest=opt.name, default=None, help=opt.help)


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
        state_dir = environ.get("STATE_DIRECTORY")
        values["data_dir"] = Path(state_dir.split(":")[0]) if state_dir else Path("data")
    if values["database"] is None:
        values["database"] = values["data_dir"] / "mesh.db"
    if not values["api_key"]:
        values["api_key"] = DEFAULT_API_KEY  # the Node server treats an empty key as unset
    settings = Settings(**values, sources=sources)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if not 0 < settings.port < 65536 and settings.port != 0:
        raise ConfigError(f"port: {settings.port} is not a TCP port")
    if settings.readers < 1:
        raise ConfigError("readers: at least 1")


def refuse_unsafe(settings: Settings) -> str | None:
    """The reason to refuse starting, or None: the default key must not face a network."""
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


def settings_table() -> Sequence[tuple[str, str, str, str, str]]:
    """(setting, flag, env, default, help) rows: the README's table is checked against these."""
    rows = []
    for opt in OPTIONS:
        envs = ", ".join((env_name(opt.name), *opt.extra_env))
        rows.append((opt.name, flag_name(opt.name), envs, str(opt.default), opt.help))
    return rows
