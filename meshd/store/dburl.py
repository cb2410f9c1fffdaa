"""Which backend a `database` setting names, answered without importing one.

The worker on SQLite never loads psycopg (about 12 MB of its resident memory): modules that
only need to tell a PostgreSQL URL from a path ask here, and import `store.postgres` only on
the PostgreSQL path.
"""

from __future__ import annotations


def is_url(database: object) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))
