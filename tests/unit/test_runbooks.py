"""The operator runbooks name exactly the states of their state machines, in order."""

from __future__ import annotations

import re

import pytest

from meshd.recovery.protocols import PROTOCOLS, RUNBOOK_DIR, catalog


def runbook_states(name: str) -> list[str]:
    text = (RUNBOOK_DIR / f"{name}.md").read_text()
    section = text.split("## States", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([a-z_]+)`", section, flags=re.MULTILINE)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_runbook_matches_state_machine(name):
    assert runbook_states(name) == list(PROTOCOLS[name].states)


def test_every_runbook_file_belongs_to_a_protocol():
    assert {p.stem for p in RUNBOOK_DIR.glob("*.md")} == set(PROTOCOLS)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_state_has_a_step_or_is_final(name):
    spec = PROTOCOLS[name]
    assert set(spec.table) == set(spec.states[:-1])
    assert set(spec.summaries) == set(spec.states)
    for state, transition in spec.table.items():
        assert spec.states.index(transition.next) == spec.states.index(state) + 1


def test_catalog_keeps_the_node_shape():
    data = catalog()
    assert list(data) == ["server_crash_recovery", "database_corruption", "network_partition",
                          "breaking_api_update"]
    for entry in data.values():
        assert entry["steps"][0].startswith("1. ")
