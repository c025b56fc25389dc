"""Shared fixtures: the real PostgreSQL, a clean registry per test, server-side probes,
aliases added for one test, and the routing set-up (plain helpers are in ``tests/helpers/``).

Every test that needs the server gets it through ``server_dsn`` or ``django_db``; when the
server is missing the test *fails* with the reason (CI must never pass by skipping).
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from psycopg.rows import namedtuple_row

from django_poolkit import conf, pinning
from django_poolkit.engines import engine_registry
from django_poolkit.routing.state import replica_state
from django_poolkit.stats import reset_counters
from django_poolkit.testing import wait_for_replicas

from .helpers.routing import ROUTER, routing_config
from .helpers.server import alias_dsn

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


@pytest.fixture
def orm_connection_returned() -> Iterator[None]:
    """Start and end with this thread's ORM connection back in its pool."""
    connection.close()
    yield
    connection.close()


@pytest.fixture
def server_dsn() -> str:
    """A libpq DSN of the server's ``postgres`` database; fails loudly when unreachable."""
    dsn = alias_dsn(dbname="postgres")
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


@pytest.fixture
def add_alias() -> Iterator[Callable[..., str]]:
    """Add a ``DATABASES`` alias for one test: a copy of ``default`` (already pointing at the
    test database) with some keys changed.

    ``override_settings(DATABASES=...)`` warns (warnings are errors here) and would not reach
    ``connections.settings``, which *is* ``settings.DATABASES`` once configured; so the alias
    is added to that dict and removed afterwards.
    """
    added: list[str] = []

    def add(name: str, **changes: Any) -> str:
        entry = copy.deepcopy(connections.settings["default"])
        # Django's own backend: the ORM never uses these aliases, only poolkit's engines.
        entry.update({"ENGINE": "django.db.backends.postgresql", "TEST": {}, **changes})
        connections.settings[name] = entry
        added.append(name)
        conf.reload()
        return name

    yield add
    for name in added:
        connections.settings.pop(name, None)
    conf.reload()


@pytest.fixture
def route(settings: Any) -> Iterator[Callable[..., None]]:
    """``route(**options)`` sets POOLKIT["ROUTING"] (one cluster, default -> replica) and the
    router, and waits until the replica has the test database's current state; pin state and
    replica state are cleared around the test."""
    pinning.clear()

    def apply(**options: Any) -> None:
        settings.POOLKIT = routing_config(**options)
        settings.DATABASE_ROUTERS = [ROUTER]
        wait_for_replicas(["replica"])

    yield apply
    replica_state.reset()
    pinning.clear()
