"""SQLAlchemy's ``QueuePool``, timed: the one place a checkout's wait can be measured.

SQLAlchemy's ``checkout`` event fires after the connection is obtained, so it cannot see how
long the caller waited, nor a checkout that timed out. Overriding the public ``connect()``
(the entry point of every checkout, sync or through the async adapter) gives both, and turns
SQLAlchemy's bare ``TimeoutError`` into :class:`~django_poolkit.PoolTimeout`, which names the
alias and the numbers.

The rest of the pool's behaviour for psycopg sync pools lives here too, as listeners the
registry installs per engine: the checkin reset (``reset_on_return`` policies), the cheap
transaction-neutral pre-ping (``pre_ping_mode``), SQLAlchemy's cursor classes on connections
shared with the ORM, and leak detection (``leak_detection_threshold``). The pre-ping's and the
reset's round trips are bounded (:mod:`~django_poolkit.engines.deadline`): a server that stops
answering costs them ``connect_timeout`` at most, never the pool's bookkeeping forever.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import traceback
from typing import Any, NamedTuple

import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool

from .. import signals
from ..exceptions import PoolTimeout
from ..stats import Counters, PoolKind
from .deadline import bounded
from .recycle import expire_if_due

__all__ = [
    "PRISTINE",
    "RESET_SQL",
    "LeakDetector",
    "PoolkitAsyncQueuePool",
    "PoolkitQueuePool",
    "UnusableConnection",
    "install_leak_detection",
    "install_pre_ping",
    "install_session_hygiene",
    "leak_detector",
    "sqlalchemy_cursor_classes",
]

# Key in a checked-out connection's ``info`` dict: perf_counter() at checkout, read at checkin
# to compute the hold time.
CHECKOUT_AT = "poolkit_checkout_at"
# Key in a connection's ``info`` dict: the number poolkit gave it when it was opened.
CONNECTION_ID = "poolkit_id"
# Key in a checked-out connection's ``info`` dict: set at checkout, popped by the checkout's
# first statement, the only one that may be resent (:mod:`.resend`).
FRESH = "poolkit_fresh"

logger = logging.getLogger(__name__)


class _TimedCheckout:
    """Mixin for QueuePool classes. The registry sets ``poolkit_alias``, ``poolkit_kind``,
    ``poolkit_counters`` and ``poolkit_max_overflow`` right after building the pool."""

    poolkit_alias: str = "?"
    poolkit_kind: PoolKind = "sync"
    poolkit_counters: Counters
    poolkit_max_overflow: int = 0
    #: Hand SQLAlchemy users their connection outside autocommit (psycopg pools with
    #: poolkit's checkin hygiene, which leaves the mode as the last user set it).
    poolkit_autocommit_off: bool = False
    #: ``pool_recycle`` in seconds when poolkit spreads it (:mod:`.recycle`), else None.
    poolkit_recycle: float | None = None

    def connect(self) -> PoolProxiedConnection:
        """A checkout for SQLAlchemy (``engine.connect()``, ``raw_connection()``)."""
        connection = self._poolkit_checkout()
        if self.poolkit_autocommit_off:
            try:
                driver = connection.driver_connection
                if driver is not None and driver.autocommit:
                    driver.autocommit = False
            except BaseException:
                connection.invalidate()
                connection.close()
                raise
        return connection

    def poolkit_orm_connect(self) -> PoolProxiedConnection:
        """A checkout for the pooled ORM backend, which sets the autocommit mode it wants
        itself (Django's ``set_autocommit()``): switching it off here would make two
        driver calls per request that cancel out."""
        return self._poolkit_checkout()

    def _poolkit_checkout(self) -> PoolProxiedConnection:
        started = time.perf_counter()
        counters = self.poolkit_counters
        counters.add("waiting")
        try:
            connection: PoolProxiedConnection = super().connect()  # type: ignore[misc]
        except sqlalchemy.exc.TimeoutError as error:
            counters.gave_up("timeouts")
            raise self._poolkit_timeout(time.perf_counter() - started) from error
        except Exception:
            counters.gave_up("connect_errors")
            raise
        except BaseException:  # cancelled (asyncio) or interrupted: not a pool failure
            counters.gave_up(None)
            raise
        now = time.perf_counter()
        # The checkout event already ran inside super().connect(); the wait is only known now.
        info = connection.info
        info[CHECKOUT_AT] = now
        info[FRESH] = True
        counters.checked_out(now - started)  # and no longer waiting
        if signals.pool_checkout.receivers:
            signals.pool_checkout.send_robust(
                sender=self.poolkit_alias, alias=self.poolkit_alias, kind=self.poolkit_kind,
                connection_id=connection.info.get(CONNECTION_ID),
                wait_ms=(now - started) * 1000.0)
        return connection

    def _do_return_conn(self, record: Any) -> None:
        # The checkin's accounting lives here rather than in a "checkin" listener: with no
        # listener SQLAlchemy skips that event's dispatch on every request. This runs at the
        # same moment (after the reset, before the queue), for invalidated connections too.
        self._poolkit_checked_in(record)
        if self.poolkit_recycle is not None and record.dbapi_connection is not None:
            expire_if_due(record, self.poolkit_recycle)
        # A pool the registry retired (settings changed, disposed, test database dropped)
        # must not park the connection in a queue nobody will read again: close it now.
        if getattr(self, "poolkit_retired", False):
            record.close()
            return
        super()._do_return_conn(record)  # type: ignore[misc]

    def _poolkit_checked_in(self, record: Any) -> None:
        try:
            started = record.info.pop(CHECKOUT_AT, None)
            hold = time.perf_counter() - started if started is not None else None
            self.poolkit_counters.checked_in(hold)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pool %r (%s) checked in connection #%s", self.poolkit_alias,
                             self.poolkit_kind, record.info.get(CONNECTION_ID))
            if signals.pool_checkin.receivers:
                signals.pool_checkin.send_robust(
                    sender=self.poolkit_alias, alias=self.poolkit_alias,
                    kind=self.poolkit_kind, connection_id=record.info.get(CONNECTION_ID),
                    hold_ms=hold * 1000.0 if hold is not None else None)
        except Exception:  # accounting must never break a checkin
            logger.exception("poolkit checkin accounting failed")

    def recreate(self) -> Any:
        # Engine.dispose() swaps in a fresh pool built by recreate(): carry poolkit's wiring.
        new = super().recreate()  # type: ignore[misc]
        new.poolkit_alias = self.poolkit_alias
        new.poolkit_kind = self.poolkit_kind
        new.poolkit_counters = self.poolkit_counters
        new.poolkit_max_overflow = self.poolkit_max_overflow
        new.poolkit_autocommit_off = self.poolkit_autocommit_off
        new.poolkit_recycle = self.poolkit_recycle
        return new

    def _poolkit_timeout(self, waited: float) -> PoolTimeout:
        pool: Any = self
        figures = {"pool_size": pool.size(), "max_overflow": self.poolkit_max_overflow,
                   "timeout": pool.timeout(), "checked_out": pool.checkedout()}
        signals.pool_timeout.send_robust(
            sender=self.poolkit_alias, alias=self.poolkit_alias, kind=self.poolkit_kind,
            connection_id=None, **figures)
        logger.warning("pool %r (%s) timed out after %.3f s: pool_size=%s max_overflow=%s "
                       "checked out=%s", self.poolkit_alias, self.poolkit_kind, waited,
                       figures["pool_size"], figures["max_overflow"], figures["checked_out"])
        return PoolTimeout(self.poolkit_alias, **figures)


class PoolkitQueuePool(_TimedCheckout, QueuePool):
    """The sync pool of every poolkit engine."""

    # SQLAlchemy names a pool's logger after its class's module; keep its own messages in
    # its own namespace, where users configure them, not under django_poolkit.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"


class PoolkitAsyncQueuePool(_TimedCheckout, AsyncAdaptedQueuePool):
    """The async engine's pool (same accounting, asyncio-safe queue)."""

    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"


# --- Session hygiene of PostgreSQL (psycopg 3) sync pools -------------------------------------

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


class UnusableConnection(Exception):
    """Raised inside a checkin when a connection cannot be made clean; SQLAlchemy then
    invalidates it (closes it) instead of putting it back."""


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
        if mode == "socket" and not dbapi_connection.broken and not dbapi_connection.closed:
            try:
                if not _readable(dbapi_connection):
                    return True
            except (OSError, ValueError):
                pass  # no usable socket: let the round trip fail properly
        if bound is None:
            _empty_query(dbapi_connection)
        else:
            with bounded(dbapi_connection, bound, "the pool's pre-ping"):
                _empty_query(dbapi_connection)
        return True

    # Per engine: every create_engine() has its own dialect instance.
    engine.dialect.do_ping = do_ping


def install_session_hygiene(engine: Any, alias: str, policy: str, *, shared: bool,
                            counters: Counters, bound: float | None = None) -> None:
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
    cursor_classes = sqlalchemy_cursor_classes() if shared else None
    isolation_key = "poolkit_isolation_level"

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Runs after SQLAlchemy's own connect hooks (engine isolation level applied).
        record.info[isolation_key] = dbapi_connection.isolation_level
        record.info[PRISTINE] = True
        if cursor_classes is not None:
            dbapi_connection.cursor_factory, dbapi_connection.server_cursor_factory = (
                cursor_classes)

    idle, active = int(TransactionStatus.IDLE), int(TransactionStatus.ACTIVE)

    def on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        # Counted and signalled here (the events module leaves resets to this listener).
        counters.add("resets")
        if signals.pool_reset.receivers:
            signals.pool_reset.send_robust(
                sender=alias, alias=alias, kind="sync",
                connection_id=record.info.get(CONNECTION_ID) if record is not None else None)
        if state.terminate_only or record is None:
            return
        if dbapi_connection.closed or dbapi_connection.broken:
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


# --- Leak detection (HikariCP's model) -----------------------------------------------------------


class _Held(NamedTuple):
    alias: str
    kind: str
    connection_id: Any
    since: float
    threshold: float
    stack: str


class LeakDetector:
    """Tracks checked-out connections of pools with ``leak_detection_threshold`` and logs,
    once per checkout, each one held longer than its threshold, with the stack that checked
    it out.

    One daemon thread per process wakes a few times per threshold; it is started on the first
    tracked checkout and again in a forked child (threads do not survive a fork).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._reported: set[int] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def track(self, key: int, held: _Held) -> None:
        """Remember one checkout (``key`` identifies its pool record)."""
        with self._lock:
            self._held[key] = held
            self._reported.discard(key)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="poolkit-leak-detector")
                self._thread.start()

    def release(self, key: int) -> None:
        """Forget a checkout that came back (or was detached); say so if it was reported."""
        with self._lock:
            held = self._held.pop(key, None)
            reported = key in self._reported
            self._reported.discard(key)
        if held is not None and reported:
            logger.info("pool %r (%s): connection #%s reported as leaked came back after "
                        "%.1f s", held.alias, held.kind, held.connection_id,
                        time.monotonic() - held.since)

    def held(self) -> list[_Held]:
        """The tracked checkouts now (for :mod:`django_poolkit.testing`)."""
        with self._lock:
            return list(self._held.values())

    def _watch(self) -> None:
        interval = 0.01
        while True:
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                # A few scans per threshold, at least one a second.
                interval = min((held.threshold / 4 for held in self._held.values()),
                               default=1.0)
                interval = min(max(interval, 0.01), 1.0)
                due = [(key, held) for key, held in self._held.items()
                       if key not in self._reported and now - held.since >= held.threshold]
                self._reported.update(key for key, _ in due)
            for _, held in due:
                logger.warning(
                    "pool %r (%s): connection #%s held for %.1f s, longer than "
                    "leak_detection_threshold=%g s; it was checked out at:\n%s",
                    held.alias, held.kind, held.connection_id, now - held.since,
                    held.threshold, held.stack)


#: The process-wide leak detector.
leak_detector = LeakDetector()

# Frames of these packages say nothing about who checked the connection out.
_QUIET_FRAMES = (os.sep + "sqlalchemy" + os.sep, os.sep + "django_poolkit" + os.sep + "engines")


def _checkout_stack() -> str:
    frames = [frame for frame in traceback.extract_stack()[:-1]
              if not any(part in frame.filename for part in _QUIET_FRAMES)]
    return "".join(traceback.format_list(frames[-25:])).rstrip()


def install_leak_detection(engine: Any, alias: str, kind: str, threshold: float) -> None:
    """Track every checkout of ``engine``'s pool in :data:`leak_detector`."""

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        leak_detector.track(id(record), _Held(alias, kind, record.info.get(CONNECTION_ID),
                                              time.monotonic(), threshold, _checkout_stack()))

    def on_return(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            leak_detector.release(id(record))

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_return)
    event.listen(engine, "detach", on_return)
