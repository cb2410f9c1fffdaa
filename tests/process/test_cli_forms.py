"""Each operator subcommand in both forms: the table a person reads on a terminal (run under a
pseudo-terminal) and the stable `--json`; shell completion scripts that the shells accept."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from meshd import cli
from tests.process.harness import clean_env
from tests.process.harness import meshd_on_tty as on_tty

pytestmark = pytest.mark.process


def test_each_subcommand_prints_a_table_on_a_terminal_and_json_with_json(meshd_proc):
    proc = meshd_proc()
    proc.start(("--access-log", "false", "--backup-interval", "1h",
                "--quick-check-interval", "1h"))
    proc.wait_healthy(20)
    proc.wait_serving()
    where = ["--data-dir", str(proc.data_dir), "--backup-dir", str(proc.backup_dir)]
    forms = {
        ("config",): "SETTING",
        ("status",): "FIELD",
        ("backup",): "FIELD",
        ("backups",): "FILE",
        ("check",): "FIELD",
        ("mode", "read-write"): "mode: read-write",
        ("protocol", "list"): "PROTOCOL",
        ("protocol", "run", "database_corruption", "--dry-run"): "STATE",
        ("protocol", "status"): "no protocol runs",
        ("restore", "--output", str(proc.root / "copy-{n}.db")): "output",
    }
    for n, (template, marker) in enumerate(forms.items()):
        args = tuple(a.replace("{n}", f"t{n}") for a in template)
        code, out, err = on_tty([*args, *where])
        assert code == 0, (args, out, err)
        assert marker in out and not out.lstrip().startswith(("{", "[")), (args, out)
        if marker.isupper():
            assert out.splitlines()[0].startswith(marker) or f"\n{marker}" in out, out
        args = tuple(a.replace("{n}", f"j{n}") for a in template)
        done = subprocess.run([sys.executable, "-m", "meshd", *args, *where, "--json"],
                              capture_output=True, text=True, timeout=60, env=clean_env(),
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (args, done.stderr)
        json.loads(done.stdout)
    status = on_tty(["status", *where])[1]
    assert " ago, " in status and "KiB" in status  # ages and sizes for people

    # A long restore shows its progress on a terminal: the journal replay's bar.
    register_one(proc)
    code, out, _err = on_tty(["restore", "--output", str(proc.root / "progress.db"), *where],
                             stderr_too=True)
    assert code == 0 and "replaying journal [" in out and "100%" in out, out

    # On a terminal, restore asks; "n" cancels (exit 2) and nothing moved.
    code, _out, err = on_tty(["restore", *where], answer=b"n\n")
    assert code == 2 and "Proceed?" in err and "cancelled" in err, err
    assert not (proc.data_dir / "quarantine").exists()


def register_one(proc) -> None:
    import urllib.request

    req = urllib.request.Request(proc.url + "/api/agents/register", data=b'{"name": "bar"}',
                                 headers={"Content-Type": "application/json",
                                          "X-API-Key": proc.key})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def test_help_lists_examples_defaults_environment_and_exit_codes():
    parser = cli.build_parser()
    top = parser.format_help()
    assert "SUPPRESS" not in top and "{run,config," in top and ",worker" not in top
    assert not any(line.split()[:1] == ["worker"] for line in top.splitlines())
    assert "exit codes:" in top
    from meshd.cli_help import subcommands

    for name, sub in subcommands(parser).items():
        if name == "worker":
            continue
        text = sub.format_help()
        assert "exit codes:" in text and "environment:" in text, name
        if name in ("run", "config"):
            assert "(default: 4000; env MESHD_PORT, PORT)" in " ".join(text.split()), text
    run_help = subcommands(subcommands(parser)["protocol"])["run"].format_help()
    for protocol in cli.PROTOCOL_NAMES:
        assert protocol in run_help


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_are_valid_and_name_the_subcommands(shell, tmp_path):
    done = subprocess.run([sys.executable, "-m", "meshd", "completion", shell],
                          capture_output=True, text=True, timeout=30, env=clean_env())
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for word in ("status", "restore", "--yes", "--output", "database_corruption", "read-only"):
        assert word in script, word
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed (apt-get install {shell})")
    path = tmp_path / f"meshd.{shell}"
    path.write_text(script)
    checked = subprocess.run([binary, "-n", str(path)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
    if shell == "bash":
        probe = (f"source {path}; COMP_WORDS=(meshd protocol r); COMP_CWORD=2; _meshd; "
                 'echo "${COMPREPLY[@]}"')
        words = subprocess.run([binary, "-c", probe], capture_output=True, text=True,
                               timeout=30).stdout.split()
        assert words == ["run"], words
    else:
        # compadd outside the completion system: print what would be offered.
        probe = ("compadd() { print -l -- ${(P)2}; }; words=(meshd protocol r); CURRENT=3; "
                 f"source {path}")
        words = subprocess.run([binary, "-c", probe], capture_output=True, text=True,
                               timeout=30).stdout.split()
        assert "run" in words and "abort" in words and "backups" not in words, words
    assert "worker" not in script  # the internal subcommand is not offered
