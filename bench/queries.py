"""The SQL both servers run, so the Django views and the plain WSGI app do the same work.

The Django views use the ORM (what users run); the plain app runs the SQL the ORM generates
for them, written out here once. No Django import here: the harness and the plain app use it.
"""

from __future__ import annotations

import random

__all__ = ["GROUP_SIZE", "GROUP_SQL", "PK_SQL", "RANGE_SQL", "ROWS", "pick_group", "pick_pk"]

#: Rows in the bench table; ``group`` takes ``ROWS // GROUP_SIZE`` values.
ROWS = 10_000
GROUP_SIZE = 100

PK_SQL = 'SELECT "id", "name", "group" FROM "bench_item" WHERE "id" = %s LIMIT 21'
RANGE_SQL = 'SELECT "id", "name", "group" FROM "bench_item" WHERE "id" >= %s ORDER BY "id" LIMIT 10'
GROUP_SQL = 'SELECT COUNT(*) AS "__count" FROM "bench_item" WHERE "group" = %s'


def pick_pk() -> int:
    """A random existing primary key (not cryptographic: load spreading)."""
    return random.randint(1, ROWS)  # noqa: S311


def pick_group() -> int:
    """A random existing group."""
    return random.randint(0, ROWS // GROUP_SIZE - 1)  # noqa: S311
