"""The Python API: engines and pool statistics by alias."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .conf import get_settings
from .engines import engine_registry as registry
from .exceptions import UnknownAlias
from .stats import PoolKind, PoolStats, counters_for

__all__ = [
    "adispose_all",
    "all_pool_stats",
    "dispose_all",
    "get_async_engine",
    "get_engine",
    "pool_stats",
]


def get_engine(alias: str = "default") -> Engine:
    """The sync SQLAlchemy engine of a ``DATABASES`` alias or a ``POOLKIT["ENGINES"]`` name.

    Built on first use in this process with the alias's pool settings; its connections are
    opened with exactly the parameters Django uses for that alias. Raises
    :class:`~django_poolkit.UnknownAlias` for a name nobody configured and
    :class:`~django_poolkit.PoolkitConfigurationError` when ``POOLKIT`` is wrong.
    """
    engine: Engine = registry.get(alias, "sync")
    return engine


def get_async_engine(alias: str = "default") -> AsyncEngine:
    """The async engine of ``alias``: a separate pool (``async_pool_size`` +
    ``async_max_overflow``, counted in the connection budget), built only when asked for."""
    engine: AsyncEngine = registry.get(alias, "async")
    return engine


def pool_stats(alias: str = "default", *, kind: PoolKind = "sync") -> PoolStats:
    """A snapshot of one pool of this process: gauges now and counters since start.

    Never builds a pool: for one not used yet, ``built`` is False and the gauges are zero.
    """
    pool_settings = get_settings().for_alias(alias)
    if pool_settings is None:
        raise UnknownAlias(f"no database or engine named {alias!r}")
    engine = registry.built(alias, kind)
    size = pool_settings.pool_size if kind == "sync" else pool_settings.async_pool_size
    overflow = pool_settings.max_overflow if kind == "sync" else pool_settings.async_max_overflow
    gauges: dict[str, Any] = {
        "pool_size": size, "pool_checked_in": 0, "pool_checked_out": 0, "pool_overflow": 0,
        "pool_capacity": None if overflow < 0 else size + overflow,
    }
    if engine is not None:
        pool: Any = engine.sync_engine.pool if kind == "async" else engine.pool
        if hasattr(pool, "checkedout"):
            gauges.update(
                pool_size=pool.size(), pool_checked_in=pool.checkedin(),
                pool_checked_out=pool.checkedout(),
                # QueuePool.overflow() counts up from -pool_size; report connections beyond it.
                pool_overflow=max(0, pool.overflow()),
            )
    counters: dict[str, Any] = counters_for(alias, kind).snapshot()
    return PoolStats(alias=alias, kind=kind, built=engine is not None, **gauges,
                     pool_waiting=counters.pop("pool_waiting"), counters=counters)


def all_pool_stats() -> list[PoolStats]:
    """Snapshots of every configured pool: the sync pool of each alias, plus the async pool
    of each alias that built one."""
    found = []
    for alias in get_settings().pools:
        found.append(pool_stats(alias))
        if registry.built(alias, "async") is not None:
            found.append(pool_stats(alias, kind="async"))
    return found


def dispose_all() -> None:
    """Close every pool's idle connections and forget the engines (for servers' shutdown
    hooks). Connections still checked out are closed as they come back."""
    registry.dispose()


async def adispose_all() -> None:
    """:func:`dispose_all` for async servers: awaits the async pools' connections."""
    await registry.adispose()
