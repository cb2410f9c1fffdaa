"""File-based coordination between agents on one host: maildir-style mailboxes under a shared
spool directory, `<spool_dir>/<agentId>/{tmp,new}`, used while the server is unreachable.

A sender writes a message to `tmp/` under a unique name, fsyncs it and renames it into `new/`:
the rename is atomic, so a reader sees a whole message or none. The reader deletes a file once
its message was delivered (or recognized as a duplicate).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from meshd import log as logging
from meshd.client.records import Outgoing

log = logging.get("meshd.client.spool")

FORMAT = 1
STALE_TMP = 36 * 3600.0  # seconds after which a tmp file is a crashed writer's leftover


@dataclass(frozen=True, slots=True)
class SpoolFile:
    path: Path
    message: Outgoing | None  # None: the file could not be read as a message


def encode(message: Outgoing) -> bytes:
    return json.dumps({
        "format": FORMAT, "clientId": message.client_id, "from": message.from_agent,
        "to": message.to_agent, "content": message.content,
        "messageType": message.message_type, "createdAt": message.created_at,
        "prev": message.prev,
    }).encode()


def decode(data: bytes) -> Outgoing:
    """The message of a spool file; ValueError when it is not one."""
    try:
        record = json.loads(data)
        fields = {"client_id": record["clientId"], "from_agent": record["from"],
                  "to_agent": record["to"], "content": record["content"],
                  "message_type": record["messageType"], "created_at": record["createdAt"]}
        prev = record.get("prev")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a spool message: {exc!r}") from None
    if not all(isinstance(v, str) for v in fields.values()) or not (
            prev is None or isinstance(prev, str)):
        raise ValueError("not a spool message: a field has the wrong type")
    return Outgoing(**fields, prev=prev)


class Spool:
    """The shared spool directory: post into another agent's mailbox, read one's own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mailbox(self, agent_id: str) -> Path:
        if not agent_id or "/" in agent_id or agent_id in (".", ".."):
            raise ValueError(f"agent id {agent_id!r} cannot name a mailbox")
        return self.root / agent_id

    def open_mailbox(self, agent_id: str) -> None:
        """Create this agent's mailbox (so that others start posting to it) and remove what
        crashed writers left in its tmp/."""
        box = self.mailbox(agent_id)
        for sub in ("tmp", "new"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP
        for leftover in (box / "tmp").iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except FileNotFoundError:
                continue

    def has_mailbox(self, agent_id: str) -> bool:
        return (self.mailbox(agent_id) / "new").is_dir()

    def post(self, message: Outgoing) -> Path | None:
        """Deliver a message into its recipient's mailbox; the file, or None when the
        recipient has no mailbox here (it is not on this host, or never ran)."""
        box = self.mailbox(message.to_agent)
        if not (box / "new").is_dir():
            return None
        # Names sort in writing order; the client id keeps them unique across senders.
        name = f"{time.time_ns():020d}.{message.client_id}.json"
        tmp = box / "tmp" / f"{name}.{os.getpid()}"
        final = box / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encode(message))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(box / "new")
        return final

    def pending(self, agent_id: str, skip: set[Path] | frozenset[Path] = frozenset()
                ) -> list[SpoolFile]:
        """The messages in this agent's new/, oldest first, except the paths in `skip`."""
        new = self.mailbox(agent_id) / "new"
        found = []
        for name in sorted(os.listdir(new)):
            path = new / name
            if path in skip:
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                found.append(SpoolFile(path, decode(data)))
            except ValueError as exc:
                log.warning("spool.unreadable", path=str(path), error=str(exc))
                found.append(SpoolFile(path, None))
        return found

    @staticmethod
    def discard(path: Path) -> None:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry is what changed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
