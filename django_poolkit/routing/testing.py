"""Django test databases with a real streaming replica.

A physical replica is read-only and copies the whole primary cluster, so the test database
must be created on the primary only and reach the replica by replication. Django's
``TEST["MIRROR"]`` does the first half: a mirror alias gets the test database's ``NAME`` and
nothing is created for it, while its ``HOST`` and ``PORT`` still point at the real replica.
What is left is waiting for replication, which this module does:

- :func:`replica_database` writes the ``DATABASES`` entry of a replica (``TEST["MIRROR"]``
  set to its primary);
- :func:`wait_for_replicas` blocks until every replica has replayed everything the primary
  had written when it was called: the test database, its tables, committed rows;
- :class:`ReplicaTestRunner` (``TEST_RUNNER``) creates the test databases with reads pinned
  to the primary, then waits for the replicas;
- for pytest-django, extend ``django_db_setup`` (see the README, "Read replicas").

Inside Django's ``TestCase`` every test runs in a transaction on the primary, which no
replica can see; the router keeps such reads on the primary (``in_atomic_block``). Tests that
must really read from the replica use ``TransactionTestCase`` (pytest:
``@pytest.mark.django_db(transaction=True, databases=[...])``) and call
:func:`wait_for_replicas` after their writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test.runner import DiscoverRunner
from sqlalchemy import text

from ..api import get_engine
from ..exceptions import PoolkitError, describe_error
from ..pinning import format_lsn, parse_lsn, use_primary
from .settings import routing_settings
from .state import replica_state

__all__ = [
    "ReplicaNotCaughtUp",
    "ReplicaTestRunner",
    "check_replica_aliases",
    "replica_database",
    "wait_for_replicas",
]


class ReplicaNotCaughtUp(PoolkitError, TimeoutError):
    """A replica did not replay the primary's writes within the timeout."""

    __module__ = "django_poolkit.testing"


def replica_database(url: str, *, mirror: str = "default", **overrides: Any) -> dict[str, Any]:
    """The ``DATABASES`` entry of a real replica of ``mirror`` from its URL.

    ``overrides`` replace keys of the entry (``ENGINE``, ``OPTIONS``...). ``TEST["MIRROR"]``
    makes Django's test runner create nothing on the replica and give the alias the test
    database's name.
    """
    entry: dict[str, Any] = dict(environ.Env.db_url_config(url))
    entry.update(overrides)
    entry["TEST"] = {**entry.get("TEST", {}), "MIRROR": mirror}
    return entry


def _server(settings_dict: Mapping[str, Any]) -> tuple[str, str]:
    return str(settings_dict.get("HOST") or ""), str(settings_dict.get("PORT") or "")


def _replicas_and_primaries(aliases: Iterable[str] | None) -> dict[str, str]:
    """Replica alias -> primary alias: the replicas of ``POOLKIT["ROUTING"]``, plus every
    ``TEST["MIRROR"]`` alias on another server than its mirror (a real replica, not a second
    alias of the same database)."""
    routing = routing_settings()
    owners: dict[str, str] = {}
    if routing is not None:
        for cluster in routing.clusters.values():
            for replica in cluster.replicas:
                owners[replica.alias] = cluster.primary
    if aliases is None:
        for alias, settings_dict in connections.settings.items():
            mirror = settings_dict.get("TEST", {}).get("MIRROR")
            if (mirror and mirror in connections.settings and alias not in owners
                    and _server(settings_dict) != _server(connections.settings[mirror])):
                owners[alias] = mirror
        return owners
    found = {}
    for alias in aliases:
        primary = owners.get(alias) or connections.settings[alias].get("TEST", {}).get("MIRROR")
        if not primary:
            raise ImproperlyConfigured(
                f"{alias!r} is in no POOLKIT[\"ROUTING\"] cluster and has no TEST[\"MIRROR\"]: "
                "cannot tell which primary it replicates")
        found[alias] = primary
    return found


def check_replica_aliases(aliases: Iterable[str] | None = None) -> None:
    """Raise ``ImproperlyConfigured`` when a replica alias is not ``TEST["MIRROR"]`` of its
    primary: Django's test runner would then try to create a test database on a read-only
    server, or read a database the primary never wrote."""
    for alias, primary in _replicas_and_primaries(aliases).items():
        mirror = connections.settings[alias].get("TEST", {}).get("MIRROR")
        if mirror != primary:
            raise ImproperlyConfigured(
                f'DATABASES["{alias}"]["TEST"]["MIRROR"] must be "{primary}" (its primary), got '
                f"{mirror!r}; write the entry with django_poolkit.testing."
                "replica_database()")


def _lsn(alias: str, sql: str) -> int | None:
    with get_engine(alias).connect() as connection:
        value = connection.execute(text(sql)).scalar()
    return parse_lsn(value) if value else None


def wait_for_replicas(aliases: Iterable[str] | None = None, *, timeout: float = 30.0,
                      interval: float = 0.05, refresh: bool = True) -> None:
    """Block until every replica (default: the replicas of ``POOLKIT["ROUTING"]`` and the
    ``TEST["MIRROR"]`` aliases on another server than their mirror) has
    replayed the primary's WAL position at the time of the call, so everything committed
    before is readable there. Then, with ``refresh``, probe the replicas so routing sees them
    caught up at once. Raises :class:`ReplicaNotCaughtUp` after ``timeout`` seconds (saying
    whether replay is paused)."""
    targets: dict[str, int | None] = {}
    for alias, primary in _replicas_and_primaries(aliases).items():
        if primary not in targets:
            targets[primary] = _lsn(primary, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        target = targets[primary]
        last = "never connected"
        while True:
            try:
                replayed = _lsn(alias, "SELECT pg_last_wal_replay_lsn()::text")
                if replayed is not None and target is not None and replayed >= target:
                    break
                last = f"replayed {format_lsn(replayed) if replayed else 'nothing'}"
            except Exception as error:  # the test database may not exist there yet
                last = describe_error(error, quote=True)
            if time.monotonic() > deadline:
                paused = _paused(alias)
                raise ReplicaNotCaughtUp(
                    f"replica {alias!r} has not replayed {format_lsn(target or 0)} of "
                    f"{primary!r} within {timeout:g} s ({last}){paused}")
            time.sleep(interval)
    if refresh and routing_settings() is not None:
        replica_state.refresh()


def _paused(alias: str) -> str:
    try:
        with get_engine(alias).connect() as connection:
            paused = connection.execute(text("SELECT pg_is_wal_replay_paused()")).scalar()
    except Exception:
        return ""
    return "; replay is paused (pg_wal_replay_resume())" if paused else ""


class ReplicaTestRunner(DiscoverRunner):
    """``TEST_RUNNER = "django_poolkit.testing.ReplicaTestRunner"``: creates the test
    databases on the primaries (reads pinned there, so serialising a database never reads a
    replica that has not caught up), then waits for every replica."""

    def setup_databases(self, **kwargs: Any) -> Any:
        """Create the test databases, then wait for replication."""
        check_replica_aliases()
        with use_primary():
            result = super().setup_databases(**kwargs)
        replica_state.reset()
        wait_for_replicas()
        return result
