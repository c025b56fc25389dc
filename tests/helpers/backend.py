"""What the pooled-backend tests share: extra aliases on the test database,
stock or pooled, added and removed at run time so other tests never see them."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection, connections

from django_poolkit import conf
from django_poolkit.engines import engine_registry

POOLED = "django_poolkit.db.backends.postgresql"
STOCK = "django.db.backends.postgresql"


@contextmanager
def extra_alias(name: str, engine: str = POOLED, **overrides: Any) -> Iterator[str]:
    """``DATABASES[name]``: the test database under ``engine``, with ``overrides`` (keys of a
    DATABASES entry; ``OPTIONS`` is merged). The same dict object sits in
    ``settings.DATABASES`` and ``connections.settings``, as Django's own aliases do."""
    entry = copy.deepcopy(dict(connections.settings["default"]))
    options = {**entry.get("OPTIONS", {}), **overrides.pop("OPTIONS", {})}
    entry.update(ENGINE=engine, OPTIONS=options, **overrides)
    entry["TEST"] = {**entry.get("TEST", {}), "MIRROR": "default"}
    settings.DATABASES[name] = entry
    connections.settings[name] = entry
    conf.reload()
    try:
        yield name
    finally:
        if name in {wrapper.alias for wrapper in connections.all(initialized_only=True)}:
            connections[name].close()
            del connections[name]
        engine_registry.dispose(name)
        # Django rebuilds connections.settings from settings.DATABASES when an override ends.
        connections.settings.pop(name, None)
        settings.DATABASES.pop(name, None)
        conf.reload()


def backend_pid(alias: str) -> int:
    """The server process behind ``alias``'s ORM connection in this thread."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def terminate(admin: Any, pids: list[int]) -> None:
    """pg_terminate_backend every pid and wait until the server has let them all go."""
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                              (pids,)).fetchone()[0]
        if alive == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"server processes {pids} still alive 10 s after termination")


def ensure_role(name: str) -> None:
    """Create the (cluster-wide) role ``name`` unless it exists."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE ROLE {name}")
    connection.close()


def last_statement(admin: Any, pid: int) -> str:
    """The last statement the server process ``pid`` received (pg_stat_activity.query)."""
    return str(admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()[0])
