"""Settings: value parsing, precedence (flag > env > TOML > default), the Node server's
variables, systemd's STATE_DIRECTORY, and the refusal of the default key on a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd import config
from meshd.config import (
    DEFAULT_API_KEY,
    ConfigError,
    load,
    parse_bool,
    parse_duration,
    parse_size,
    parse_ws_auth,
    refuse_unsafe,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
    ("1.5s", 1.5), ("250 ms", 0.25), ("2", 2.0), (" 3s ", 3.0), (7, 7.0), (0.2, 0.2),
    ("0s", 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1s", "s", "1.s", "5 minutes", "1e3",
                                  True])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("512", 512), (512, 512), ("1b", 1), ("100KiB", 100 * 1024), ("1k", 1024),
    ("1kb", 1000), ("25MiB", 25 << 20), ("1m", 1 << 20), ("2MB", 2_000_000),
    ("1GiB", 1 << 30), ("1.5KiB", 1536),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "1tb", "-1k", "KiB", True])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On ", True])
def test_true_values(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "no", "off", "", False])
def test_false_values(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["maybe", "2", "enabled"])
def test_bad_bools(text):
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(text)


def test_defaults():
    s = load({}, environ={})
    assert (s.host, s.port, s.api_key) == ("127.0.0.1", 4000, DEFAULT_API_KEY)
    assert s.data_dir == Path("data") and s.database == Path("data/mesh.db")
    assert (s.probe_interval, s.probe_timeout, s.probe_failures) == (1.0, 2.0, 3)
    assert (s.restart_backoff_max, s.crash_loop_limit, s.crash_loop_window) == (30.0, 5, 60.0)
    assert s.drain_timeout == 10.0
    assert set(s.sources.values()) == {"default"}


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "meshd.toml"
    path.write_text(text)
    return str(path)


def test_precedence_flag_over_env_over_toml_over_default(tmp_path):
    toml = write_toml(tmp_path, 'probe_interval = "5s"\nprobe_failures = 7\n'
                                'drain_timeout = "20s"\ncrash_loop_limit = 9\n')
    env = {"MESHD_PROBE_INTERVAL": "3s", "MESHD_PROBE_FAILURES": "4",
           "MESHD_DRAIN_TIMEOUT": "15s"}
    flags = {"config": toml, "probe_interval": "200ms", "probe_failures": None}

    s = load(flags, environ=env)

    assert s.probe_interval == 0.2 and s.sources["probe_interval"] == "flag --probe-interval"
    assert s.probe_failures == 4 and s.sources["probe_failures"] == "env MESHD_PROBE_FAILURES"
    assert s.drain_timeout == 15.0
    assert s.crash_loop_limit == 9 and s.sources["crash_loop_limit"] == "config file"
    assert s.crash_loop_window == 60.0 and s.sources["crash_loop_window"] == "default"


def test_the_config_file_can_come_from_the_environment(tmp_path):
    toml = write_toml(tmp_path, "probe_failures = 6\n")
    assert load({}, environ={"MESHD_CONFIG": toml}).probe_failures == 6


def test_a_meshd_table_in_the_toml_file_is_read(tmp_path):
    toml = write_toml(tmp_path, '[meshd]\nport = 4100\nprobe_timeout = "300ms"\n')
    s = load({"config": toml}, environ={})
    assert (s.port, s.probe_timeout) == (4100, 0.3)


def test_an_unknown_toml_key_is_rejected(tmp_path):
    toml = write_toml(tmp_path, "port = 4100\nprobe_intervall = 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*probe_intervall"):
        load({"config": toml}, environ={})


def test_a_bad_value_names_the_setting_and_where_it_came_from(tmp_path):
    toml = write_toml(tmp_path, 'probe_interval = "often"\n')
    with pytest.raises(ConfigError, match=r"probe_interval \(config file\)"):
        load({"config": toml}, environ={})
    with pytest.raises(ConfigError, match=r"probe_timeout \(env MESHD_PROBE_TIMEOUT\)"):
        load({}, environ={"MESHD_PROBE_TIMEOUT": "2 parsecs"})
    with pytest.raises(ConfigError, match=r"crash_loop_limit \(flag --crash-loop-limit\)"):
        load({"crash_loop_limit": "five"}, environ={})


def test_a_missing_or_invalid_toml_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load({"config": str(tmp_path / "nope.toml")}, environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({"config": write_toml(tmp_path, "port = = 1\n")}, environ={})


def test_port_honours_the_node_variable():
    assert load({}, environ={"PORT": "5001"}).port == 5001
    assert load({}, environ={"PORT": "5001", "MESHD_PORT": "5002"}).port == 5002
    assert load({"port": "5003"}, environ={"PORT": "5001"}).port == 5003


def test_a_bad_port_is_rejected():
    with pytest.raises(ConfigError, match="port"):
        load({}, environ={"PORT": "70000"})
    with pytest.raises(ConfigError, match="port"):
        load({}, environ={"PORT": "http"})


def test_api_key_honours_the_node_variable():
    s = load({}, environ={"AGENT_MESH_API_KEY": "s3cret"})
    assert s.api_key == "s3cret" and s.sources["api_key"] == "env AGENT_MESH_API_KEY"
    assert load({"api_key": "flag-key"}, environ={"AGENT_MESH_API_KEY": "s3cret"}).api_key \
        == "flag-key"


def test_an_empty_api_key_falls_back_to_the_default():
    assert load({}, environ={"AGENT_MESH_API_KEY": ""}).api_key == DEFAULT_API_KEY
    assert load({}, environ={"MESHD_API_KEY": ""}).api_key == DEFAULT_API_KEY


def test_state_directory_is_the_data_dir():
    s = load({}, environ={"STATE_DIRECTORY": "/var/lib/meshd"})
    assert s.data_dir == Path("/var/lib/meshd")
    assert s.database == Path("/var/lib/meshd/mesh.db")
    # systemd lists several directories separated by colons: the first is ours.
    assert load({}, environ={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}).data_dir \
        == Path("/var/lib/a")
    assert load({"data_dir": "/srv/mesh"}, environ={"STATE_DIRECTORY": "/var/lib/meshd"}
                ).data_dir == Path("/srv/mesh")


def test_an_explicit_database_is_kept():
    s = load({"data_dir": "/srv/mesh", "database": "/old/agent-mesh.db"}, environ={})
    assert s.database == Path("/old/agent-mesh.db")


def test_unset_argparse_flags_do_not_override():
    s = load({"port": None, "host": None, "command": "run"},
             environ={"MESHD_HOST": "127.0.0.2"})
    assert s.host == "127.0.0.2" and s.port == 4000


def test_settings_travel_to_the_worker_as_json(tmp_path):
    s = load({"data_dir": str(tmp_path), "probe_interval": "200ms"}, environ={})
    back = config.from_json(config.to_json(s))
    assert back == s
    assert isinstance(back.data_dir, Path)


@pytest.mark.parametrize(("host", "key", "allow", "refused"), [
    ("0.0.0.0", None, None, True),
    ("::", None, None, True),
    ("192.168.1.5", None, None, True),
    ("127.0.0.1", None, None, False),
    ("::1", None, None, False),
    ("localhost", None, None, False),
    ("0.0.0.0", None, "true", False),
    ("0.0.0.0", "a-real-key", None, False),
])
def test_the_default_key_is_refused_beyond_loopback(host, key, allow, refused):
    s = load({"host": host, "api_key": key, "allow_default_key": allow, "ws_auth": "off"},
             environ={})
    reason = refuse_unsafe(s)
    if refused:
        assert reason and "--allow-default-key" in reason and host in reason
    else:
        assert reason is None


@pytest.mark.parametrize(("value", "mode"), [
    ("off", "off"), ("public", "public"), ("required", "required"), ("REQUIRED", "required"),
    ("true", "required"), ("1", "required"), ("yes", "required"), (True, "required"),
    ("false", "off"), ("0", "off"), (False, "off"),
])
def test_ws_auth_modes_and_the_old_booleans(value, mode):
    assert parse_ws_auth(value) == mode


def test_bad_auth_settings_name_the_choices():
    with pytest.raises(ConfigError, match="ws_auth.*off, public, required"):
        load({"ws_auth": "maybe"}, environ={})
    with pytest.raises(ConfigError, match="agent_auth.*off, optional, required"):
        load({"agent_auth": "sometimes"}, environ={})
    with pytest.raises(ConfigError, match="cors_origins.*not an origin: ftp://x"):
        load({"cors_origins": "https://ok.example,ftp://x"}, environ={})


def test_auth_defaults_keep_node_clients_working():
    s = load({}, environ={})
    assert (s.ws_auth, s.agent_auth, s.cors_origins) == ("off", "optional", "*")
    assert load({"cors_origins": " https://a.example/ , http://b:8080"}, environ={}
                ).cors_origins == "https://a.example,http://b:8080"


@pytest.mark.parametrize(("host", "ws_auth", "where", "refused"), [
    ("0.0.0.0", None, None, True),
    ("192.168.1.5", None, None, True),
    ("0.0.0.0", "off", "flag", False),
    ("0.0.0.0", "public", "env", False),
    ("0.0.0.0", "required", "toml", False),
    ("127.0.0.1", None, None, False),
])
def test_ws_auth_must_be_chosen_beyond_loopback(tmp_path, host, ws_auth, where, refused):
    flags = {"host": host, "api_key": "a-real-key"}
    environ = {}
    if where == "flag":
        flags["ws_auth"] = ws_auth
    elif where == "env":
        environ["MESHD_WS_AUTH"] = ws_auth
    elif where == "toml":
        path = tmp_path / "meshd.toml"
        path.write_text(f'ws_auth = "{ws_auth}"\n')
        flags["config"] = str(path)
    reason = refuse_unsafe(load(flags, environ=environ))
    if refused:
        assert reason and host in reason
        assert all(mode in reason for mode in ("off", "public", "required")), reason
    else:
        assert reason is None
def test_settings_are_the_option_table():
    """One declaration: every option is a Settings field with the table's default."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(config.Settings)}
    assert list(fields) == [opt.name for opt in config.OPTIONS] + ["sources"]
    for opt in config.OPTIONS:
        if opt.name not in ("data_dir", "database"):  # decided by other settings
            assert fields[opt.name].default == opt.default, opt.name
    built = config.Settings(data_dir=Path("/srv/x"))
    assert built.database == Path("/srv/x/mesh.db") and built.port == 4000


def test_meshd_data_dir_wins_over_state_directory():
    env = {"STATE_DIRECTORY": "/var/lib/meshd", "MESHD_DATA_DIR": "/srv/mesh"}
    s = load({}, environ=env)
    assert s.data_dir == Path("/srv/mesh") and s.sources["data_dir"] == "env MESHD_DATA_DIR"
    s = load({}, environ={"STATE_DIRECTORY": "/var/lib/meshd"})
    assert s.sources["data_dir"] == "env STATE_DIRECTORY"


def test_the_baseline_retry_is_a_setting_read_when_loading():
    assert load({}, environ={}).baseline_retry == 10.0
    s = load({}, environ={"MESHD_BASELINE_RETRY": "200ms"})
    assert s.baseline_retry == 0.2 and s.sources["baseline_retry"] == "env MESHD_BASELINE_RETRY"


def test_describe_says_where_each_setting_came_from_and_hides_keys(tmp_path):
    toml = write_toml(tmp_path, 'admin_key = "op-secret"\nprobe_failures = 6\n')
    s = load({"config": toml, "port": "4100"},
             environ={"AGENT_MESH_API_KEY": "agent-secret"})
    rows = {r["setting"]: r for r in config.describe(s)}
    assert list(rows) == [opt.name for opt in config.OPTIONS]
    assert rows["port"] == {"setting": "port", "value": 4100, "source": "flag --port"}
    assert rows["probe_failures"]["source"] == "config file"
    assert rows["api_key"] == {"setting": "api_key", "value": "(set)",
                               "source": "env AGENT_MESH_API_KEY"}
    assert rows["admin_key"]["value"] == "(set)"
    assert "secret" not in repr(rows)
    assert rows["data_dir"]["value"] == "data"


def test_replicas_are_refused_on_postgresql_with_the_reason(tmp_path):
    url = "postgresql://meshd@db.internal/mesh"
    settings = config.load({"database": url, "data_dir": str(tmp_path)}, environ={})
    assert settings.database == url  # a URL stays text, not a folded Path
    with pytest.raises(config.ConfigError, match="SQLite only.*PostgreSQL"):
        config.load({"database": url, "data_dir": str(tmp_path), "replica": "file:///x"},
                    environ={})
    on_sqlite = config.load({"data_dir": str(tmp_path), "replica": "file:///x"}, environ={})
    assert on_sqlite.replica == ("file:///x",)


def test_restore_from_a_replica_refuses_a_postgresql_database(tmp_path, capsys):
    from meshd import cli, cli_replica

    # The command's function, not cli.main, which would point the logs at capsys's stream.
    args = cli.build_parser().parse_args([
        "restore", "--from", "file:///x", "--data-dir", str(tmp_path),
        "--database", "postgresql://meshd@db.internal/mesh"])
    code = cli_replica.restore_from_replica(args)
    assert code == 2
    assert "PostgreSQL" in capsys.readouterr().err
    assert not (tmp_path / "writer.lock").exists()  # refused before touching anything
