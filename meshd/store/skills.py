"""Skill queries: registration, discovery, and invocation as a message to the skill's owner."""

from __future__ import annotations

from typing import Any

import orjson

from meshd.clock import new_id
from meshd.errors import Invalid, NotFound
from meshd.store.base import Reader, Row, Tx


def register(tx: Tx, agent_id: str, name: str, description: str, endpoint: str,
             now: str) -> str:
    """A new skill of an existing agent (the Node server stored skills of unknown agents and
    then hid them from discovery, RB-11); its id. Names need not be unique."""
    if tx.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is None:
        raise NotFound("Agent not found")
    skill_id = new_id()
    tx.execute(
        "INSERT INTO skills (id, agent_id, name, description, endpoint, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (skill_id, agent_id, name, description, endpoint, now),
    )
    return skill_id


def list_all(db: Reader, limit: int = -1, offset: int = 0) -> list[Row]:
    return db.query(
        "SELECT s.id, s.agent_id, s.name, s.description, s.endpoint, s.created_at,"
        " a.name AS agent_name FROM skills s JOIN agents a ON s.agent_id = a.id"
        " ORDER BY s.created_at DESC, s.rowid LIMIT ? OFFSET ?",
        (limit, offset),
    )


def get(db: Reader, skill_id: str) -> Row | None:
    return db.one("SELECT id, agent_id, name, description, endpoint, created_at FROM skills"
                  " WHERE id = ?", (skill_id,))


def invoke(
    tx: Tx, skill_id: str, from_agent: str | None, payload_field: dict[str, Any], now: str
) -> tuple[str, Row]:
    """Send the skill's owner a `skill_invocation` message; (message id, skill row).

    The content is the JSON text of {type, skillName, payload}; `payload_field` is `{}` when
    the caller sent no payload, so the key is left out as in the Node server. An unknown skill
    is reported before a missing sender, as the Node server did."""
    skill = get(tx, skill_id)
    if skill is None:
        raise NotFound("Skill not found")
    if from_agent is None:
        raise Invalid("from is required")
    content = orjson.dumps({"type": "skill_invocation", "skillName": skill["name"],
                            **payload_field})
    message_id = new_id()
    tx.execute(
        "INSERT INTO messages (id, from_agent, to_agent, content, message_type, read, status,"
        " created_at) VALUES (?, ?, ?, ?, 'skill_invocation', 0, 'pending', ?)",
        (message_id, from_agent, skill["agent_id"], content.decode(), now),
    )
    return message_id, skill
