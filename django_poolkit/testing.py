"""Helpers for your tests: assert that no pooled connection is left checked out.

A leaked connection (a ``get_engine().connect()`` never closed, a session never ended, a
thread that kept its ORM connection) passes silently in a test and exhausts the pool in
production. Call :func:`assert_no_checked_out_connections` at the end of a test, or wrap the
test in a fixture::

    import pytest
    from django_poolkit.testing import assert_no_checked_out_connections

    @pytest.fixture(autouse=True)
    def _no_leaks():
        yield
        assert_no_checked_out_connections()

With ``leak_detection_threshold`` set for the alias, the failure message also shows where each
connection still out was checked out.

Test databases with a real streaming replica (``ReplicaTestRunner``, ``wait_for_replicas``,
``replica_database``) live in :mod:`django_poolkit.routing.testing` and are importable from
here too.
"""

from __future__ import annotations

from django.db import connections

from .conf import get_settings
from .engines import engine_registry
from .engines.leaks import leak_detector
from .routing.testing import (
    ReplicaNotCaughtUp,
    ReplicaTestRunner,
    check_replica_aliases,
    replica_database,
    wait_for_replicas,
)
from .stats import PoolKind

__all__ = [
    "ReplicaNotCaughtUp",
    "ReplicaTestRunner",
    "assert_no_checked_out_connections",
    "check_replica_aliases",
    "checked_out_connections",
    "replica_database",
    "wait_for_replicas",
]


def _orm_holds(alias: str) -> int:
    """1 when this thread's ORM connection of ``alias`` is a pooled checkout that only the
    ORM uses, else 0."""
    if alias not in {wrapper.alias for wrapper in connections.all(initialized_only=True)}:
        return 0
    wrapper = connections[alias]
    fairy = getattr(wrapper, "_poolkit_fairy", None)
    # Shared with a SQLAlchemy connection still open in this thread: that one counts.
    return 1 if fairy is not None and fairy._counter == 1 else 0


def checked_out_connections(
    alias: str | None = None, *, include_orm: bool = False
) -> dict[tuple[str, PoolKind], int]:
    """Connections checked out now, per pool of this process that has any (never builds a
    pool). The calling thread's own ORM connection is not counted unless ``include_orm``:
    Django's ``TestCase`` keeps it open for the whole test, and it goes back when Django
    closes it."""
    found: dict[tuple[str, PoolKind], int] = {}
    aliases = [alias] if alias is not None else list(get_settings().pools)
    kinds: tuple[PoolKind, ...] = ("sync", "async")
    for name in aliases:
        for kind in kinds:
            engine = engine_registry.built(name, kind)
            if engine is None:
                continue
            pool = engine.sync_engine.pool if kind == "async" else engine.pool
            count = int(pool.checkedout())
            if kind == "sync" and not include_orm:
                count -= _orm_holds(name)
            if count > 0:
                found[(name, kind)] = count
    return found


def assert_no_checked_out_connections(
    alias: str | None = None, *, include_orm: bool = False
) -> None:
    """Fail (``AssertionError``) when a pool of ``alias`` (every pool when None) still has a
    connection checked out, naming the pools and, when leak detection is on, the stacks that
    checked them out."""
    found = checked_out_connections(alias, include_orm=include_orm)
    if not found:
        return
    lines = [f"{count} connection(s) still checked out of pool {name!r} ({kind})"
             for (name, kind), count in sorted(found.items())]
    stacks = [held for held in leak_detector.held() if (held.alias, held.kind) in found]
    for held in stacks:
        lines.append(f"connection #{held.connection_id} of {held.alias!r} was checked out at:"
                     f"\n{held.stack}")
    if not stacks:
        lines.append("Set leak_detection_threshold for the alias to see where they were "
                     "checked out.")
    raise AssertionError("\n".join(lines))
