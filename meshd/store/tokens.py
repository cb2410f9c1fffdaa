"""Agent tokens: one current token per agent, stored only as its SHA-256, with the row kept
after a revocation so that trust on first use applies to agents that never had a token.

A token is 32 random bytes behind the `mat_` prefix: a fast hash is enough for a secret of
that entropy (no password to guess), and the prefix keeps it from ever being taken for the
shared key.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from meshd.store import agents
from meshd.store.base import Reader, Tx, small_read

PREFIX = "mat_"
ACTIVE = "active"
REVOKED = "revoked"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    # surrogateescape: a header with bytes that are not UTF-8 still hashes (to no token).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(value: str | None) -> bool:
    return bool(value) and value.strip().startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class Registration:
    agent_id: str
    existed: bool
    token_issued: bool


@small_read
def agent_for(db: Reader, token_hash: str) -> str | None:
    """The agent an active token belongs to, or None (unknown or revoked)."""
    row = db.one("SELECT agent_id FROM agent_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                 (token_hash,))
    return row["agent_id"] if row else None


@small_read
def state(db: Reader, agent_id: str) -> str | None:
    """ACTIVE, REVOKED, or None for an agent that never had a token."""
    row = db.one("SELECT revoked_at FROM agent_tokens WHERE agent_id = ?", (agent_id,))
    if row is None:
        return None
    return REVOKED if row["revoked_at"] else ACTIVE


def by_name(db: Reader, name: str) -> tuple[str | None, str | None]:
    """(agent id, token state) of the agent registered under `name`; (None, None) if none."""
    row = db.one("SELECT a.id, t.revoked_at, t.agent_id AS has_token FROM agents a"
                 " LEFT JOIN agent_tokens t ON t.agent_id = a.id WHERE a.name = ?", (name,))
    if row is None:
        return None, None
    if row["has_token"] is None:
        return row["id"], None
    return row["id"], REVOKED if row["revoked_at"] else ACTIVE


def issue(tx: Tx, agent_id: str, token_hash: str, now: str, replace: bool) -> bool:
    """Store a new token for the agent. Without `replace` only an agent with no usable token
    gets one (never had one, or its last was revoked); True when stored."""
    if replace:
        sql = ("INSERT INTO agent_tokens (agent_id, token_hash, created_at) VALUES (?, ?, ?)"
               " ON CONFLICT (agent_id) DO UPDATE SET token_hash = excluded.token_hash,"
               " created_at = excluded.created_at, revoked_at = NULL")
    else:
        sql = ("INSERT INTO agent_tokens (agent_id, token_hash, created_at) VALUES (?, ?, ?)"
               " ON CONFLICT (agent_id) DO UPDATE SET token_hash = excluded.token_hash,"
               " created_at = excluded.created_at, revoked_at = NULL"
               " WHERE agent_tokens.revoked_at IS NOT NULL")
    return tx.execute(sql, (agent_id, token_hash, now)) > 0


def first_token(tx: Tx, agent_id: str, token_hash: str, now: str) -> bool:
    """Trust on first use: a token only for an agent that never had one."""
    return tx.execute(
        "INSERT INTO agent_tokens (agent_id, token_hash, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (agent_id) DO NOTHING", (agent_id, token_hash, now)) > 0


def revoke(tx: Tx, agent_id: str, now: str) -> bool:
    """Revoke the agent's token; False when it had no active one."""
    return tx.execute("UPDATE agent_tokens SET revoked_at = ? WHERE agent_id = ?"
                      " AND revoked_at IS NULL", (now, agent_id)) > 0


def register(tx: Tx, name: str, endpoint, capabilities: str | None, now: str,
             token_hash: str, grant: Callable[[str | None, str | None], str | None]
             ) -> Registration:
    """Register by name and, when `grant` allows, store the token in the same transaction.

    `grant(existing agent id or None, its token state)` is the caller's policy: it raises to
    refuse the registration, or returns None (no token), "new" or "first" (a token only if
    the agent never had one: trust on first use), or "reissue" (only if it has no active
    one). Deciding inside the transaction keeps concurrent registrations of one name from
    acting on a state that has changed under them."""
    existing, token_state = by_name(tx, name)
    decision = grant(existing, token_state)
    agent_id, existed = agents.register(tx, name, endpoint, capabilities, now)
    issued = False
    if decision in ("first", "new"):
        issued = first_token(tx, agent_id, token_hash, now)
    elif decision == "reissue":
        issued = issue(tx, agent_id, token_hash, now, False)
    return Registration(agent_id, existed, issued)
