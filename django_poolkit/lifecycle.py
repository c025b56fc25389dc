"""Process lifecycle: warm the pools up at start, drain and close them at the end.

``AppConfig.ready()`` already closes every pool at interpreter exit (``atexit``) and drops
inherited ones in a forked child. What servers need on top:

- :func:`shutdown` / :func:`ashutdown`: wait a *bounded* time for checked-out connections to
  come back (a request still finishing, a task committing), then close every pool, sync and
  async. Called by gunicorn's ``worker_exit`` hook (:mod:`django_poolkit.gunicorn`) and the
  ASGI lifespan shutdown (:mod:`django_poolkit.asgi`). A connection still checked out when
  the time is up is left to its holder, which may be mid-query: SQLAlchemy's ``dispose()``
  never closes checked-out connections, so it closes when the holder drops it (garbage
  collection) or when the process exits.
- :func:`handle_sigterm`: the same drain for a process no server manages (a long-running
  management command, a queue consumer): SIGTERM's default action ends a process without
  running ``atexit``.
- :func:`warm_up` / :func:`awarm_up`: open ``pool_size`` connections now, so the first
  requests after a deploy do not each pay for a connect (TLS and authentication included).

Nothing here runs by itself: servers call it from their hooks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import text

from .api import all_pool_stats, get_async_engine, get_engine
from .conf import get_settings
from .engines import engine_registry
from .exceptions import PoolkitConfigurationError
from .ops.deployment import server_of

__all__ = [
    "ShutdownReport",
    "ashutdown",
    "awarm_up",
    "checked_out",
    "handle_sigterm",
    "shutdown",
    "validate_configuration",
    "warm_up",
]

logger = logging.getLogger(__name__)

#: How often :func:`shutdown` looks at the pools while it waits, seconds.
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did. ``drained`` is False when connections were still checked out at
    the deadline (``checked_out`` of them); ``pools`` names the pools closed (``alias:kind``)."""

    drained: bool
    waited_s: float
    checked_out: int
    pools: tuple[str, ...]

    def __str__(self) -> str:
        closed = ", ".join(self.pools) or "none"
        if self.drained:
            return f"closed pools {closed} after {self.waited_s:.2f} s"
        return (f"closed pools {closed} after {self.waited_s:.2f} s with {self.checked_out} "
                "connection(s) still checked out (left to their holders)")


def validate_configuration() -> None:
    """Fail fast: raise :class:`~django_poolkit.PoolkitConfigurationError` listing every
    problem of ``POOLKIT``, the pool parameters of ``DATABASE_URL`` and the pooled backend's
    rules, now, instead of at each worker's first request (which would answer 500).

    No I/O: it reads settings only. The gunicorn hooks and the ASGI lifespan call it at
    start; call it yourself at the end of ``wsgi.py`` for other servers."""
    from django.conf import settings

    from .db.checks import backend_problems
    from .engines.params import POOLED_BACKEND

    get_settings()
    problems = [
        problem
        for alias, database in settings.DATABASES.items()
        if database.get("ENGINE") == POOLED_BACKEND
        for problem in backend_problems(alias, database)
    ]
    if problems:
        raise PoolkitConfigurationError(problems)


def _built() -> list[tuple[str, int]]:
    """``("alias:kind", checked out)`` of every pool this process built."""
    try:
        return [(f"{stats.alias}:{stats.kind}", stats.pool_checked_out)
                for stats in all_pool_stats() if stats.built]
    except PoolkitConfigurationError:
        return []  # a broken configuration built no pool


def checked_out() -> int:
    """Connections checked out of this process's pools right now."""
    return sum(count for _, count in _built())


def shutdown(timeout: float = 10.0) -> ShutdownReport:
    """Wait up to ``timeout`` seconds for every checked-out connection to come back, then
    close every pool (sync and async) and its idle connections. Never waits longer than
    ``timeout``; safe to call twice (the second call finds nothing to close)."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    while checked_out() and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    built = _built()
    left = sum(count for _, count in built)
    engine_registry.dispose()
    report = ShutdownReport(left == 0, time.monotonic() - started, left,
                            tuple(name for name, _ in built))
    (logger.info if report.drained else logger.warning)("poolkit shutdown: %s", report)
    return report


async def ashutdown(timeout: float = 10.0) -> ShutdownReport:
    """:func:`shutdown` for an event loop: waits without blocking it, and awaits the async
    pools' connections as they close."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    while checked_out() and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL)
    built = _built()
    left = sum(count for _, count in built)
    await engine_registry.adispose()
    report = ShutdownReport(left == 0, time.monotonic() - started, left,
                            tuple(name for name, _ in built))
    (logger.info if report.drained else logger.warning)("poolkit shutdown: %s", report)
    return report


def handle_sigterm(timeout: float = 10.0) -> None:
    """On SIGTERM, drain and close the pools (:func:`shutdown`), then do what was going to
    happen: call the handler installed before, or exit with status 143 (``SystemExit``, so
    ``finally`` blocks and ``atexit`` still run). Call it from the main thread, after the
    framework installed its own handler, if any."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        shutdown(timeout)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _pooled_aliases(aliases: Iterable[str] | None) -> list[str]:
    config = get_settings()
    names = list(aliases) if aliases is not None else list(config.pools)
    # Only server pools are worth warming: an SQLite "connection" costs nothing.
    return [name for name in names if server_of(name, config.pools[name]) is not None]


def warm_up(aliases: Sequence[str] | None = None) -> dict[str, int]:
    """Open ``pool_size`` connections in the sync pool of each alias (all PostgreSQL pools by
    default) and leave them idle in the pool. Returns the connections opened per alias.

    Checks them out all at once, so the pool really opens ``pool_size`` distinct
    connections, then returns them; a failure propagates (a worker that cannot reach its
    database should not report itself started).
    """
    opened: dict[str, int] = {}
    for alias in _pooled_aliases(aliases):
        engine = get_engine(alias)
        size = get_settings().pools[alias].pool_size
        connections = []
        try:
            for _ in range(size):
                connection = engine.connect()
                connections.append(connection)
                connection.execute(text("SELECT 1"))
        finally:
            for connection in connections:
                connection.close()
        opened[alias] = len(connections)
    logger.info("poolkit warm-up: %s", opened)
    return opened


async def awarm_up(aliases: Sequence[str] | None = None) -> dict[str, int]:
    """Like :func:`warm_up`, for the async pools (``async_pool_size`` connections each)."""
    opened: dict[str, int] = {}
    for alias in _pooled_aliases(aliases):
        engine = get_async_engine(alias)
        size = get_settings().pools[alias].async_pool_size
        connections = [await engine.connect() for _ in range(size)]
        try:
            for connection in connections:
                await connection.execute(text("SELECT 1"))
        finally:
            for connection in connections:
                await connection.close()
        opened[alias] = len(connections)
    logger.info("poolkit async warm-up: %s", opened)
    return opened
