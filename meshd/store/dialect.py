"""The portable SQL the store functions write, translated for PostgreSQL.

Store functions are written once, in the SQL both engines accept, with SQLite's `?` placeholders.
The few SQLite-only spellings they rely on are rewritten here, once per distinct statement
(cached), so the functions stay backend-neutral:

- `?` becomes `%s` and a literal `%` becomes `%%` (psycopg's placeholder syntax);
- `LIMIT ?` with SQLite's "-1 means all" becomes `LIMIT NULLIF(GREATEST(%s, -1), -1)`: NULL
  is PostgreSQL's "all" and a negative limit is an error there;
- `julianday(x)` becomes the same Julian day number computed from the DB-format text.

`rowid` needs no rewrite: the PostgreSQL schema gives every table an identity column of that
name, increasing in insertion order like SQLite's, so `ORDER BY x, rowid` orders ties the same.
It is dropped from rows selected with `*`, where SQLite never shows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_JULIANDAY = re.compile(r"julianday\(([^()]*)\)", re.IGNORECASE)
_LIMIT = re.compile(r"\bLIMIT\s+\?", re.IGNORECASE)
_STAR = re.compile(r"\bSELECT\s+(?:\w+\.)?\*", re.IGNORECASE)
# SQLite's julianday() is a double: (milliseconds since the Julian epoch) / 86400000.0, where
# 210866760000000 ms separate that epoch from 1970-01-01. The same double here, so date
# arithmetic compares equal at the same boundaries on both engines.
_JULIAN_EXPR = (r"(CAST(EXTRACT(EPOCH FROM CAST(\1 AS timestamp)) * 1000 + 210866760000000"
                r" AS double precision) / 86400000.0)")


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    strip_rowid: bool  # the statement selects `*`, which includes PostgreSQL's rowid column


def _placeholders(sql: str) -> str:
    """`?` -> `%s` and `%` -> `%%`, outside quoted literals and identifiers only."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
            continue
        if ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=2048)
def translate(sql: str) -> Statement:
    text = _LIMIT.sub("LIMIT NULLIF(GREATEST(?, -1), -1)", sql)
    text = _JULIANDAY.sub(_JULIAN_EXPR, text)
    return Statement(_placeholders(text), bool(_STAR.search(sql)))


def params(values: Sequence[Any]) -> tuple[Any, ...]:
    """SQLite stores Python booleans as 0/1 in its INTEGER-affinity columns; so does the
    PostgreSQL schema (its flag columns are integers), so booleans are sent as integers."""
    return tuple(int(v) if isinstance(v, bool) else v for v in values)
