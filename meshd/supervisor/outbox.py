"""The records outbox: what the supervisor needs written to the database (catastrophe events,
protocol runs and steps, update completions) while the worker is the only SQL writer.

Records wait in `data/supervisor-records.json` (so a supervisor restart loses none) until a
healthy worker takes them on `/internal/records`. Each carries its own id and is applied as an
upsert, so queueing a newer version of a record replaces the older one, and sending twice is
harmless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from meshd import log as logging
from meshd.locks import write_atomic

log = logging.get("meshd.supervisor")

Record = dict[str, Any]


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[Record] = []

    def __len__(self) -> int:
        return len(self.pending)

    def load(self) -> None:
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            self.pending = orjson.loads(self.path.read_bytes())

    def put(self, record: Record) -> None:
        """Queue a copy of `record`, replacing a queued one with the same id."""
        self.pending = [r for r in self.pending if r["id"] != record["id"]] + [dict(record)]
        self.save()

    def open_events(self) -> int:
        return sum(1 for r in self.pending if r.get("status") != "resolved")

    def save(self) -> None:
        try:
            write_atomic(self.path, orjson.dumps(self.pending))
        except OSError as exc:  # a full disk: kept in memory, saved with the next record
            log.warning("supervisor.records_not_saved", error=str(exc),
                        pending=len(self.pending))

    async def flush(self, send: Callable[[list[Record]], Awaitable[Any]]) -> int:
        """Hand every queued record to `send`; those sent are dropped (records queued while
        sending stay). Returns how many were sent; raises what `send` raises."""
        if not self.pending:
            return 0
        batch = list(self.pending)
        await send(batch)
        sent = {id(r) for r in batch}
        self.pending = [r for r in self.pending if id(r) not in sent]
        self.save()
        return len(batch)
