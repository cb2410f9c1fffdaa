"""Per-table write counters: what lets a reader keep a result until a write could change it.

The worker is the only writer, so an in-memory counter per table, bumped after each COMMIT
that wrote to the table, tells a cache exactly when its result may be stale. The tables a
write touched come from the statements the journal records (`INSERT INTO t`, `UPDATE t`,
`DELETE FROM t`); a statement of any other shape (DDL, a migration) bumps every table. A
cascade (deleting an agent deletes its health row) is covered because the cache of a
child table also names the parent table it depends on.

Ordering makes the counters safe without locks: a cache reads the counter before it
queries, and the counter moves only after the COMMIT. A result built from data older than the
counter it was filed under can therefore not exist: at worst a result built just after a
COMMIT is filed under the counter before the bump and rebuilt once more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_WRITE = re.compile(
    r"\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)"
    r"\s+[\"`\[]?(\w+)", re.IGNORECASE)
EVERY_TABLE = "*"


@lru_cache(maxsize=2048)
def written_table(sql: str) -> str:
    """The table a statement writes, lower case; EVERY_TABLE when it cannot tell."""
    match = _WRITE.match(sql)
    return match.group(1).lower() if match else EVERY_TABLE


class TableVersions:
    """Write counters by table name. Bumped on the writer thread, read on the event loop:
    each is a plain int replaced in one step, so a reader sees an old or a new value."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def bump(self, statements: Iterable[str]) -> None:
        for table in {written_table(sql) for sql in statements}:
            self._counts[table] = self._counts.get(table, 0) + 1

    def of(self, tables: Iterable[str]) -> int:
        """One number that changes whenever any of `tables` (or every table) is written:
        the counters only grow, so their sum moves exactly when one of them does."""
        counts = self._counts
        return counts.get(EVERY_TABLE, 0) + sum(counts.get(t, 0) for t in tables)
