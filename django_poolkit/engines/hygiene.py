"""Session hygiene of psycopg sync pools: the checkin reset (``reset_on_return`` policies),
the cheap transaction-neutral pre-ping (``pre_ping_mode``) and SQLAlchemy's cursor classes on
connections shared with the ORM. The reset's and the ping's round trips are bounded
(:mod:`~django_poolkit.engines.deadline`): a server that stops answering costs them
``connect_timeout`` at most.
"""

from __future__ import annotations

import logging
import select
from typing import Any

from psycopg.pq import ConnStatus
from sqlalchemy import event

from ..exceptions import UnusableConnection
from .deadline import bounded
from .events import CONNECTION_ID, PING_ERROR, PoolEvents
from .pool import ISOLATION_LEVEL

__all__ = [
    "PRISTINE",
    "RESET_SQL",
    "install_pre_ping",
    "install_session_hygiene",
    "sqlalchemy_cursor_classes",
]

logger = logging.getLogger(__name__)

_BAD = ConnStatus.BAD


#: Key in a record's ``info``: True while the server session is known to hold nothing a user
#: set (just opened, or reset by ``reset_all``/``discard_all`` at the last checkin). The ORM
#: backend reads it to skip a ``SET ROLE`` the startup options already made.
PRISTINE = "poolkit_pristine"

#: The statements each ``reset_on_return`` policy sends at checkin, after the rollback (one
#: round trip; none for ``rollback``). ``RESET ALL`` alone keeps ``SET ROLE`` (``role`` is
#: exempt from it), hence ``RESET SESSION AUTHORIZATION`` and ``RESET ROLE``. psycopg clears
#: its own prepared-statement cache when it sees ``DEALLOCATE ALL`` or ``DISCARD ALL``.
RESET_SQL: dict[str, str | None] = {
    "rollback": None,
    "reset_all": "CLOSE ALL; RESET SESSION AUTHORIZATION; RESET ALL; RESET ROLE; "
                 "DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all()",
    "discard_all": "DISCARD ALL",
}


def _text_loaders() -> list[tuple[int, type[Any]]]:
    """psycopg's own text loaders for the types Django's adapter context loads differently
    (jsonb and inet/cidr as text, timestamptz in a fixed zone)."""
    from psycopg import adapters
    from psycopg.postgres import types
    from psycopg.pq import Format

    found = []
    for name in ("jsonb", "inet", "cidr", "timestamptz"):
        oid = types[name].oid
        loader = adapters.get_loader(oid, Format.TEXT)
        if loader is not None:
            found.append((oid, loader))
    return found


def sqlalchemy_cursor_classes() -> tuple[type[Any], type[Any]]:
    """Cursor classes for SQLAlchemy's use of a connection that Django's code opened.

    Such a connection carries Django's adapter context, which loads ``jsonb`` as ``str``
    (Django's JSONField decodes it itself). SQLAlchemy's psycopg dialect expects psycopg's
    defaults (``jsonb`` -> ``dict``, ``inet`` -> ``ipaddress``). These cursors register those
    defaults on themselves (psycopg's per-cursor adapters are copies, so the ORM's cursors on
    the same connection keep Django's), and psycopg's own range dumper.
    """
    import psycopg
    from psycopg.types.range import Range, RangeDumper

    loaders = _text_loaders()

    class SQLAlchemyCursor(psycopg.Cursor[Any]):
        def __init__(self, connection: Any, *, row_factory: Any = None) -> None:
            super().__init__(connection, row_factory=row_factory)
            for oid, loader in loaders:
                self.adapters.register_loader(oid, loader)
            self.adapters.register_dumper(Range, RangeDumper)

    class SQLAlchemyServerCursor(psycopg.ServerCursor[Any]):
        def __init__(self, connection: Any, name: str, **kwargs: Any) -> None:
            super().__init__(connection, name, **kwargs)
            for oid, loader in loaders:
                self.adapters.register_loader(oid, loader)
            self.adapters.register_dumper(Range, RangeDumper)

    from .resend import answer_tracking

    return answer_tracking(SQLAlchemyCursor), SQLAlchemyServerCursor


def _readable(dbapi_connection: Any) -> bool:
    """Whether the server has sent anything on an idle connection (zero-timeout poll).

    An idle session receives nothing unless the server is ending it (a terminated backend
    sends a FATAL error and closes the socket) or it has asynchronous news (NOTIFY, a NOTICE,
    a ParameterStatus). Either way, a real ping then decides.
    """
    poller = getattr(dbapi_connection, "poolkit_poller", None)
    if poller is None:
        fd = dbapi_connection.pgconn.socket
        if not hasattr(select, "poll"):  # pragma: no cover (Windows)
            readable, _, _ = select.select([fd], [], [], 0)
            return bool(readable)
        # One poller per connection (its socket never changes): registering costs as much as
        # polling, and this runs at every checkout.
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        try:
            dbapi_connection.poolkit_poller = poller
        except AttributeError:  # pragma: no cover (a connection class with __slots__)
            pass
    return bool(poller.poll(0))


def _empty_query(dbapi_connection: Any) -> None:
    """One round trip that changes nothing: an empty query in autocommit."""
    if dbapi_connection.autocommit:
        dbapi_connection.execute("")
        return
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("")
    finally:
        if not dbapi_connection.closed:
            dbapi_connection.autocommit = False


def install_pre_ping(engine: Any, mode: str, *, bound: float | None = None) -> None:
    """Make ``pool_pre_ping`` cheap and transaction-neutral for a psycopg engine.

    SQLAlchemy's ping runs ``SELECT 1`` on a cursor, which on a connection outside autocommit
    opens a transaction and hands the connection out INTRANS. This ping sends an empty query
    in autocommit (as psycopg_pool's ``check_connection`` does: nothing is left behind), and
    in ``"socket"`` mode sends it only when the socket is readable or the connection broken.
    SQLAlchemy still does the rest: on failure it replaces the connection and invalidates
    every older one in the pool.

    ``bound``: seconds the ping may wait for the server (``client_timeout`` when shorter); a
    frozen server then costs the caller that long and a fresh connection, not forever.
    """

    def do_ping(dbapi_connection: Any) -> bool:
        # psycopg's ``closed`` and ``broken`` are both this status (one attribute read).
        if mode == "socket" and dbapi_connection.pgconn.status != _BAD:
            try:
                if not _readable(dbapi_connection):
                    return True
            except (OSError, ValueError):
                pass  # no usable socket: let the round trip fail properly
        try:
            if bound is None:
                _empty_query(dbapi_connection)
            else:
                with bounded(dbapi_connection, bound, "the pool's pre-ping"):
                    _empty_query(dbapi_connection)
        except Exception as error:
            # For the invalidation's log line (SQLAlchemy keeps only a bare
            # InvalidatePoolError); the connection is discarded after this.
            try:
                setattr(dbapi_connection, PING_ERROR, error)
            except AttributeError:  # pragma: no cover (a connection class with __slots__)
                pass
            raise
        return True

    # Per engine: every create_engine() has its own dialect instance.
    engine.dialect.do_ping = do_ping


def install_session_hygiene(engine: Any, alias: str, policy: str, *, shared: bool,
                            events: PoolEvents, bound: float | None = None) -> None:
    """Normalise every connection of a psycopg sync pool at checkin.

    The engine is built with ``pool_reset_on_return=None``; this ``reset`` listener does the
    reset instead (SQLAlchemy documents this pattern for PostgreSQL): roll back (psycopg sends
    nothing when the session is idle), restore the pooled state (the alias's isolation level,
    read-write, SQLAlchemy's cursor classes on a shared pool), then run the policy's
    statements. The autocommit mode is left as it is: each kind of user sets its own at
    checkout (see :meth:`PoolkitQueuePool.connect`). A connection that cannot be cleaned (COPY
    in progress, broken, a failed rollback or reset) makes the listener raise, and SQLAlchemy
    invalidates it.

    ``bound``: seconds each reset round trip may wait for the server (``client_timeout``
    when shorter), so a frozen server cannot hang the checkin. (SQLAlchemy's
    ``Connection.close()`` rolls its own transaction back before the checkin: see
    :func:`~django_poolkit.engines.deadline.install_client_deadline`.)
    """
    from psycopg.pq import TransactionStatus

    sql = RESET_SQL[policy]
    cursor_classes = ((getattr(engine.pool, "poolkit_cursor_classes", None)
                       or sqlalchemy_cursor_classes()) if shared else None)
    isolation_key = ISOLATION_LEVEL

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Runs after SQLAlchemy's own connect hooks (engine isolation level applied).
        record.info[isolation_key] = dbapi_connection.isolation_level
        record.info[PRISTINE] = True
        if cursor_classes is not None:
            dbapi_connection.cursor_factory, dbapi_connection.server_cursor_factory = (
                cursor_classes)

    idle, active = int(TransactionStatus.IDLE), int(TransactionStatus.ACTIVE)

    def on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        events.reset(record)  # the events leave resets to this listener
        if state.terminate_only or record is None:
            return
        if dbapi_connection.pgconn.status == _BAD:  # psycopg's ``closed`` (or ``broken``)
            raise UnusableConnection("the connection is closed or broken")
        # The libpq status as a plain int: psycopg's enum wrapper costs more than the check.
        status = dbapi_connection.pgconn.transaction_status
        if bound is None or (sql is None and status == idle):
            reset(dbapi_connection, record, status)  # nothing will be sent: nothing to bound
            return
        with bounded(dbapi_connection, bound, "the pool's checkin reset"):
            reset(dbapi_connection, record, status)

    def reset(connection: Any, record: Any, status: int) -> None:
        if status == active:
            raise UnusableConnection("returned with a command in progress (COPY or a stream)")
        record.info[PRISTINE] = False
        if status != idle:
            logger.warning("pool %r: connection #%s returned %s; rolling back", alias,
                           record.info.get(CONNECTION_ID), TransactionStatus(status).name)
            connection.rollback()
        # The autocommit mode stays as the last user left it: the ORM switches it on at its
        # checkout, PoolkitQueuePool.connect() off for SQLAlchemy users. Each pays a driver
        # call only when the previous user was of the other kind.
        level = record.info.get(isolation_key)
        if connection.isolation_level != level:
            connection.isolation_level = level
        if connection.read_only is not None:
            connection.read_only = None
        if connection.deferrable is not None:
            connection.deferrable = None
        if cursor_classes is not None:
            connection.cursor_factory, connection.server_cursor_factory = cursor_classes
        if sql is not None:
            if not connection.autocommit:
                connection.autocommit = True  # DISCARD ALL refuses to run in a transaction
            connection.execute(sql)
            record.info[PRISTINE] = True

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "reset", on_reset)

