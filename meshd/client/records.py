"""Records the SDK hands around: a message as delivered, a message on its way out, a file.

Plain frozen dataclasses, so the queue, the spool and the handler all see the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Via(StrEnum):
    """How a message reached this agent; the handler may care (the tests do)."""

    SERVER = "server"  # a `new_message` WebSocket event
    CATCHUP = "catchup"  # the inbox, read after a (re)connection to fill the gap
    SPOOL = "spool"  # a file from a same-host agent, while it could not reach the server


@dataclass(frozen=True, slots=True)
class Message:
    """A message delivered to the handler, exactly once, whichever way it came."""

    client_id: str | None  # the sender's idempotency key; None from senders that set none
    from_agent: str
    to_agent: str
    content: str
    message_type: str | None
    created_at: str | None  # the server's time, or the sender's clock for spooled messages
    via: Via
    id: str | None = None  # the server's message id; None for a message read from the spool

    @property
    def key(self) -> str:
        """What identifies the message among its sender's: the client id when there is one,
        else the server id (the same on the WebSocket and in the inbox)."""
        return self.client_id or f"id:{self.id}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message as sent: its client id is fixed before the first attempt, so every retry,
    replay and spool copy of it is recognizably the same message."""

    client_id: str
    from_agent: str
    to_agent: str
    content: str
    message_type: str
    created_at: str  # ISO-8601 UTC on the sender's clock
    # The client id of the previous message from this sender to this recipient: a receiver
    # holds a spooled message until that one was delivered, so order survives two channels.
    prev: str | None = None
    seq: int | None = None  # the outbox row, once queued

    def body(self) -> dict:
        """The POST /api/messages body."""
        return {"from": self.from_agent, "to": self.to_agent, "content": self.content,
                "messageType": self.message_type, "clientId": self.client_id}


@dataclass(frozen=True, slots=True)
class FileInfo:
    """An uploaded file as the server describes it."""

    id: str
    url: str
    filename: str
    size: int
    sha256: str | None = None
