"""The README's configuration table lists every setting with its flag and variable."""

from __future__ import annotations

from pathlib import Path

from meshd import config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented():
    text = README.read_text()
    for name, flag, env, _default, _help in config.settings_table():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")),
                   None)
        assert row is not None, f"{name} missing from the README's configuration table"
        assert f"`{flag}`" in row
        for var in env.split(", "):
            assert f"`{var}`" in row


def test_no_undocumented_rows():
    names = {row[0] for row in config.settings_table()}
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {line.split("`")[1] for line in rows if "--" in line}
    assert documented <= names
