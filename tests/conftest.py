"""Shared fixtures: the real PostgreSQL, a clean registry per test, and server-side probes.

Every test that needs the server gets it through ``server_dsn`` or ``django_db``; when the
server is missing the test *fails* with the reason (CI must never pass by skipping).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections
from psycopg.rows import namedtuple_row

from django_poolkit import conf
from django_poolkit.engines import engine_registry
from django_poolkit.stats import reset_counters

#: ``scripts/scratch-cluster``: throwaway clusters that fault tests stop, crash and pause.
SCRATCH_CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "scratch-cluster"


@pytest.fixture(scope="session")
def scratch_clusters() -> Iterator[set[int]]:
    """The ports of the scratch clusters this session started (a fixture that starts one adds
    its port): each is stopped when the session ends, so no run leaves a server behind."""
    ports: set[int] = set()
    yield ports
    for port in sorted(ports):
        # check=False: a cluster already down is fine; one that will not stop is reported by
        # the script's own output, and must not turn a passing session into an error.
        subprocess.run([str(SCRATCH_CLUSTER), "stop", str(port)], capture_output=True,
                       timeout=120, check=False)


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    """Each test starts with no engines, zero counters and the configuration rebuilt from its
    settings and environment, and leaves no pooled connection open behind it."""
    # pytest-django's teardown of a transactional test flushes through the ORM after this
    # fixture's own teardown, and the pooled backend's ORM builds the pool again: drop it.
    engine_registry.dispose()
    conf.reload()
    reset_counters()
    yield
    engine_registry.dispose()
    conf.reload()


def _dsn(alias: str = "default", dbname: str | None = None) -> str:
    settings_dict = connections.settings[alias]
    parts = {
        "host": settings_dict["HOST"] or "127.0.0.1",
        "port": settings_dict["PORT"] or 5432,
        "user": settings_dict["USER"] or "postgres",
        "dbname": dbname or settings_dict["NAME"],
    }
    if settings_dict["PASSWORD"]:
        parts["password"] = settings_dict["PASSWORD"]
    return " ".join(f"{key}={value}" for key, value in parts.items())


@pytest.fixture
def server_dsn() -> str:
    """A libpq DSN of the server's ``postgres`` database; fails loudly when unreachable."""
    dsn = _dsn(dbname="postgres")
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        pytest.fail(f"the test suite needs PostgreSQL (DATABASE_URL): {error}")
    return dsn


@pytest.fixture
def admin(server_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection outside every pool, for asking the server what it sees."""
    with psycopg.connect(server_dsn, autocommit=True, row_factory=namedtuple_row) as connection:
        yield connection


def server_connections(admin: psycopg.Connection[Any], application_name_like: str) -> list[Any]:
    """Rows of ``pg_stat_activity`` whose application_name matches a LIKE pattern."""
    return admin.execute(
        "SELECT pid, datname, application_name, state FROM pg_stat_activity "
        "WHERE application_name LIKE %s", (application_name_like,)
    ).fetchall()
