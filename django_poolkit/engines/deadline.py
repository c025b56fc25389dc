"""Client-side deadlines on psycopg round trips: ``client_timeout``, and bounds on the pool's
own round trips (pre-ping, checkin reset).

A server process that stops answering while its socket stays open (``SIGSTOP``, a frozen
proxy or middlebox that keeps acknowledging) holds a caller forever: libpq has no read
deadline, the kernel still answers TCP keepalives (so ``keepalives_*`` and
``tcp_user_timeout`` never fire), and ``statement_timeout`` and cancel requests are enforced
by the frozen process itself.

Every round trip of a psycopg 3 connection (execute, fetch, commit, rollback, COPY, pipeline
sync) goes through ``Connection.wait(gen, interval, timeout)``, and psycopg 3.3's wait loop
already takes a deadline: it polls the socket for ``min(interval, time left)`` and raises
``errors._WaitTimeout`` when the time is up. Poolkit's pools open :class:`PoolkitConnection`
(and :class:`PoolkitAsyncConnection`) through the dialect's ``connect``; their ``wait``
passes the connection's current limit as that deadline. When it expires the protocol is
half way through a message exchange and the connection can never be used again, so it is
closed (``PGconn.finish()``, as psycopg itself does when a cancelled query does not end) and
:class:`ClientTimeout`, an ``OperationalError``, is raised. The connection is then
``closed`` and ``broken``: SQLAlchemy's disconnect handling and the ORM backend's ``_close``
invalidate it, and its pool slot comes back.

No thread is involved (nothing to restart after ``fork()``, no file descriptor that could be
reused by another connection before a watchdog acts on it), and a connection without a
limit pays one attribute read per round trip.

``notifies()`` waits are never cut: waiting for a ``NOTIFY`` is waiting for other sessions,
not for an answer, and has its own ``timeout``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors, generators
from psycopg.abc import RV, PQGen

from ..exceptions import ClientTimeout, PoolkitError

__all__ = [
    "OWN_ROUND_TRIP_BOUND",
    "PoolkitAsyncConnection",
    "PoolkitConnection",
    "bounded",
    "install_client_deadline",
    "own_round_trip_bound",
    "supported",
]

logger = logging.getLogger(__name__)

#: Seconds poolkit's own round trips may take when ``connect_timeout`` is 0 (no limit).
OWN_ROUND_TRIP_BOUND = 10.0

# psycopg's own poll interval (``psycopg.connection._WAIT_INTERVAL``): how often its wait
# loop wakes to let Ctrl-C through.
_WAIT_INTERVAL = 0.1

_NOTIFIES = generators.notifies.__code__

# Private in psycopg: the error its wait loop raises when the deadline passes (3.3+). This
# and the other private uses are pinned by tests/test_private_api.py, which fails on an
# unchecked release.
_WaitTimeout: type[Exception] | None = getattr(errors, "_WaitTimeout", None)


def supported() -> bool:
    """Whether this psycopg's ``Connection.wait`` takes a deadline (psycopg >= 3.3)."""
    return _WaitTimeout is not None and all(
        "timeout" in inspect.signature(cls.wait).parameters
        for cls in (psycopg.Connection, psycopg.AsyncConnection))


def _cut(connection: Any, limit: float) -> ClientTimeout:
    """Close a connection whose wait expired and return the error to raise."""
    alias, reason = connection.poolkit_alias, connection.poolkit_reason
    logger.warning("database %r: no answer from the server within %g s (%s); closing the "
                   "connection", alias, limit, reason)
    connection.pgconn.finish()
    return ClientTimeout(f"database {alias!r}: no answer from the server within {limit:g} s "
                         f"({reason}); poolkit closed the connection")


class PoolkitConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server end after ``poolkit_limit`` seconds.

    ``poolkit_limit`` is the connection's ``client_timeout`` (None: no limit), lowered while
    poolkit runs its own round trips (:func:`bounded`)."""

    poolkit_alias: str = "?"
    poolkit_limit: float | None = None
    poolkit_reason: str = "client_timeout"

    def wait(self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL,
             timeout: float | None = None) -> RV:
        limit = self.poolkit_limit
        if (limit is None or (timeout is not None and timeout <= limit)
                or getattr(gen, "gi_code", None) is _NOTIFIES):
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, limit)
        except _WaitTimeout:  # type: ignore[misc]
            raise _cut(self, limit) from None


class PoolkitAsyncConnection(psycopg.AsyncConnection[Any]):
    """The asyncio twin of :class:`PoolkitConnection` (async engines)."""

    poolkit_alias: str = "?"
    poolkit_limit: float | None = None
    poolkit_reason: str = "client_timeout"

    async def wait(self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL,
                   timeout: float | None = None) -> RV:
        limit = self.poolkit_limit
        if (limit is None or (timeout is not None and timeout <= limit)
                or getattr(gen, "gi_code", None) is _NOTIFIES):
            return await super().wait(gen, interval, timeout)
        try:
            return await super().wait(gen, interval, limit)
        except _WaitTimeout:  # type: ignore[misc]
            raise _cut(self, limit) from None


@contextmanager
def bounded(connection: Any, seconds: float, reason: str) -> Iterator[None]:
    """Limit every wait on ``connection`` inside the block to ``seconds`` (its
    ``client_timeout`` stays in force when shorter). For the pool's own round trips, which
    must end even when ``client_timeout`` is off. No-op on other connection classes."""
    if not isinstance(connection, (PoolkitConnection, PoolkitAsyncConnection)):
        yield
        return
    limit, why = connection.poolkit_limit, connection.poolkit_reason
    if limit is None or seconds < limit:
        connection.poolkit_limit, connection.poolkit_reason = seconds, reason
    try:
        yield
    finally:
        connection.poolkit_limit, connection.poolkit_reason = limit, why


def own_round_trip_bound(connect_timeout: int) -> float:
    """How long the pool's own round trips may wait: ``connect_timeout`` (a server that
    cannot answer an empty query in the time it may take to open a session is not one to
    hand out), or :data:`OWN_ROUND_TRIP_BOUND` when that is 0 (no limit)."""
    return float(connect_timeout) if connect_timeout > 0 else OWN_ROUND_TRIP_BOUND


def install_client_deadline(engine: Any, alias: str, client_timeout: float | None, *,
                            bound: float) -> bool:
    """Make a psycopg engine (sync, or an async engine's ``sync_engine``) open poolkit's
    connection classes, with ``client_timeout`` as their limit, and bound the round trips
    SQLAlchemy makes for the pool by ``bound`` seconds.

    The dialect's ``connect`` is replaced, not a ``do_connect`` listener added: the first
    ``do_connect`` listener that returns a connection ends the chain, so it would silence
    every listener added later (a user's, or a test's fault injector). ``connect`` runs after
    all of them, with the arguments they left.

    ``do_rollback`` is bounded: SQLAlchemy rolls back through it when a ``Connection`` closes
    with a transaction open (and an async pool resets its connections with it). A
    ``ROLLBACK`` waits for nothing on a server that runs, so the bound only ever cuts one
    that does not answer. An async engine's pre-ping (SQLAlchemy's own) is bounded too; sync
    engines get poolkit's, see :func:`~django_poolkit.engines.hygiene.install_pre_ping`.

    Returns False (and installs nothing) on a psycopg without wait deadlines; a
    ``client_timeout`` then raises :class:`~django_poolkit.PoolkitError`.
    """
    if not supported():
        if client_timeout is not None:
            raise PoolkitError(
                f"client_timeout of {alias!r} needs psycopg >= 3.3 (found "
                f"{psycopg.__version__}); upgrade psycopg or remove client_timeout")
        logger.debug("psycopg %s has no wait deadline: pool round trips of %r are not "
                     "bounded", psycopg.__version__, alias)
        return False
    dialect = engine.dialect
    connect_ = dialect.connect
    rollback, ping = dialect.do_rollback, dialect.do_ping

    def configure(connection: Any) -> Any:
        connection.poolkit_alias = alias
        connection.poolkit_limit = client_timeout
        return connection

    def driver(dbapi_connection: Any) -> Any:
        # SQLAlchemy passes its pool's proxy (which knows the driver's connection) or, on an
        # async engine, its adapter around psycopg's connection.
        found = getattr(dbapi_connection, "driver_connection", None)
        return found if found is not None else dialect.get_driver_connection(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        with bounded(driver(dbapi_connection), bound, "a rollback"):
            rollback(dbapi_connection)

    if dialect.is_async:
        async def creator(*cargs: Any, **cparams: Any) -> PoolkitAsyncConnection:
            return configure(await PoolkitAsyncConnection.connect(*cargs, **cparams))  # type: ignore[no-any-return]

        def connect(*cargs: Any, **cparams: Any) -> Any:
            # SQLAlchemy's psycopg adapter opens the connection with this coroutine.
            return connect_(*cargs, async_creator_fn=creator, **cparams)

        def do_ping(dbapi_connection: Any) -> bool:
            with bounded(driver(dbapi_connection), bound, "the pool's pre-ping"):
                return bool(ping(dbapi_connection))

        dialect.do_ping = do_ping
    else:
        def connect(*cargs: Any, **cparams: Any) -> Any:
            return configure(PoolkitConnection.connect(*cargs, **cparams))

    dialect.connect = connect
    dialect.do_rollback = do_rollback
    return True
