"""Pool sizing rules as pure functions.

Nothing here reads settings or the environment on its own: every input is an argument, so the
same arithmetic serves ``POOLKIT`` (``preset`` and ``sizing``), ``manage.py poolplan`` and the
tests. All results are ``(pool_size, max_overflow)`` pairs of connections per process.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

__all__ = [
    "PRESETS",
    "SIZING_FORMULAS",
    "PgBouncerSettings",
    "PoolSize",
    "async_pool_size",
    "auto_pool_size",
    "cores_pool_size",
    "default_cores",
    "fleet_connections",
    "pgbouncer_settings",
    "production_pool_size",
    "threaded_pool_size",
]


class PoolSize(NamedTuple):
    """A recommended pool size for one process."""

    pool_size: int
    max_overflow: int


#: The preset table: name -> persistent connections and overflow.
PRESETS: dict[str, PoolSize] = {
    "development": PoolSize(5, 5),
    "small_api": PoolSize(10, 10),
    "high_traffic": PoolSize(20, 30),
    "background_worker": PoolSize(5, 5),
}

#: The accepted values of the ``sizing`` setting, each one sizing formula.
SIZING_FORMULAS: tuple[str, ...] = ("cores", "async", "production", "auto")

#: The production rule adds this many connections to ``cores x 2``.
PRODUCTION_HEADROOM = 4


def default_cores() -> int:
    """CPU cores as the formulas count them: ``os.cpu_count()``, or 4 when it is unknown."""
    return os.cpu_count() or 4


def cores_pool_size(cores: int, spindles: int, max_overflow: int) -> PoolSize:
    """``pool_size = cores x 2 + spindles`` (the usual rule of thumb, after HikariCP).

    ``spindles`` is the number of disks a query can wait on (0 for SSDs and cloud volumes).
    The formula says nothing about overflow, so the caller's ``max_overflow`` is kept.
    """
    return PoolSize(cores * 2 + spindles, max_overflow)


def async_pool_size(concurrency: int, queries_per_request: float, max_overflow: int) -> PoolSize:
    """``pool_size = expected_concurrent_requests / avg_queries_per_request``, at least 1.

    This is the async formula, rounded up so a fractional result never starves a
    request. Overflow is kept from the caller.
    """
    return PoolSize(max(1, math.ceil(concurrency / queries_per_request)), max_overflow)


def production_pool_size(cores: int) -> PoolSize:
    """The production rule: ``pool_size = cores x 2 + 4`` and as much overflow again."""
    size = cores * 2 + PRODUCTION_HEADROOM
    return PoolSize(size, size)


def auto_pool_size(cores: int, environment: str) -> PoolSize:
    """The classic ``calculate_pool_size()``: the production rule when ``environment`` is
    ``"production"``, otherwise the development preset (5 + 5)."""
    if environment == "production":
        return production_pool_size(cores)
    return PRESETS["development"]


def fleet_connections(pool: PoolSize, processes: int, hosts: int = 1) -> int:
    """The most server connections a deployment can open: ``(size + overflow) x processes x
    hosts``. An unlimited overflow (-1) has no bound; callers check for it first."""
    if pool.max_overflow < 0:
        raise ValueError("an unlimited max_overflow (-1) has no connection budget")
    return (pool.pool_size + pool.max_overflow) * processes * hosts


def threaded_pool_size(threads: int, cores: int, spindles: int) -> PoolSize:
    """The sync pool of one process that serves ``threads`` requests at once.

    Each thread holds at most one connection of an alias at a time, so ``threads`` is the
    most a process can use: the cores rule (``cores x 2 + spindles``) caps the persistent
    connections and overflow covers the remaining threads, so no thread ever waits for a
    connection while the process as a whole stays within ``threads``.
    """
    size = max(1, min(threads, cores * 2 + spindles))
    return PoolSize(size, max(0, threads - size))


class PgBouncerSettings(NamedTuple):
    """PgBouncer (transaction mode) settings for one server, and the app pool behind it."""

    default_pool_size: int
    max_db_connections: int
    max_client_conn: int
    app_pool: PoolSize


def pgbouncer_settings(
    available: int, databases: int, client_connections: int, cores: int, spindles: int,
    threads: int,
) -> PgBouncerSettings:
    """Size a transaction-mode PgBouncer in front of a server with ``available`` slots.

    ``max_db_connections`` keeps the server within its slots; ``default_pool_size`` is the
    cores rule applied where it belongs, to the database server, split across the
    ``databases`` (database/user pairs) sharing those slots; ``max_client_conn`` admits every
    app connection (``client_connections``). Behind the bouncer, client connections are
    cheap and server connections are shared per transaction, so each process keeps one
    connection per thread and no overflow.
    """
    max_db = max(1, available)
    per_database = max(1, max_db // max(1, databases))
    return PgBouncerSettings(
        default_pool_size=max(1, min(per_database, cores * 2 + spindles)),
        max_db_connections=max_db,
        max_client_conn=max(client_connections, 1),
        app_pool=PoolSize(max(1, threads), 0),
    )
