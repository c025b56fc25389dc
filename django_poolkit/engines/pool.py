"""SQLAlchemy's ``QueuePool``, timed: the one place a checkout's wait can be measured.

SQLAlchemy's ``checkout`` event fires after the connection is obtained, so it cannot see how
long the caller waited, nor a checkout that timed out. Overriding the public ``connect()``
(the entry point of every checkout, sync or through the async adapter) gives both, and turns
SQLAlchemy's bare ``TimeoutError`` into :class:`~django_poolkit.PoolTimeout`, which names the
alias and the numbers. The checkin's accounting lives here too (``_do_return_conn``).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy.exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool
from sqlalchemy.pool.base import _ConnectionFairy
from sqlalchemy.util.queue import Queue

from ..exceptions import PoolTimeout
from . import sharing
from .events import PoolEvents
from .recycle import expire_if_due

__all__ = ["ISOLATION_LEVEL", "PoolkitAsyncQueuePool", "PoolkitQueuePool"]

#: Key in a record's ``info``: the isolation level the pool gives the connection (psycopg's
#: value after connect), restored at each checkin by the hygiene.
ISOLATION_LEVEL = "poolkit_isolation_level"
#: Key in a checked-out connection's ``info`` dict: set at checkout, popped by the checkout's
#: first statement, the only one that may be resent (:mod:`.resend`).
FRESH = "poolkit_fresh"


class _FastQueue(Queue[Any]):
    """SQLAlchemy's queue of idle connections with a short path for the common case: a
    checkout that finds an idle connection and a checkin with room for it. Both take the
    queue's lock once and notify a condition only when a thread waits on it, where
    SQLAlchemy's ``get``/``put`` go through ``threading.Condition``'s Python methods and
    five helper calls every time. Anything else (waiting, full) is SQLAlchemy's own code."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self.mutex:
            queue = self.queue
            if queue:
                item = queue.pop() if self.use_lifo else queue.popleft()
                if self.not_full._waiters:  # type: ignore[attr-defined]
                    self.not_full.notify()
                return item
        return super().get(block, timeout)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if self.maxsize <= 0 or len(self.queue) < self.maxsize:
                self.queue.append(item)
                if self.not_empty._waiters:  # type: ignore[attr-defined]
                    self.not_empty.notify()
                return
        super().put(item, block, timeout)


class _TimedCheckout:
    """Mixin for QueuePool classes. The registry sets ``poolkit_events`` and
    ``poolkit_max_overflow`` right after building the pool."""

    poolkit_events: PoolEvents
    poolkit_max_overflow: int = 0
    #: Hand SQLAlchemy users their connection outside autocommit (psycopg pools with
    #: poolkit's checkin hygiene, which leaves the mode as the last user set it).
    poolkit_autocommit_off: bool = False
    #: ``pool_recycle`` in seconds when poolkit spreads it (:mod:`.recycle`), else None.
    poolkit_recycle: float | None = None

    #: Per-thread :class:`~.sharing.Share` of a pool the ORM shares (None: no sharing).
    poolkit_local: sharing.PerThread | None = None
    #: SQLAlchemy's cursor classes, put on a connection SQLAlchemy joins after the ORM.
    poolkit_cursor_classes: tuple[type[Any], type[Any]] | None = None

    def connect(self) -> PoolProxiedConnection:
        """A checkout for SQLAlchemy (``engine.connect()``, ``raw_connection()``).

        On a pool the ORM shares, the connection the ORM holds in this thread, counted once
        more (:mod:`.sharing`); else a checkout of its own, which the ORM's next connect in
        this thread reuses."""
        local = self.poolkit_local
        share = None
        if local is not None:
            share = sharing.current(self)
            if (share is not None and share.orm is not None and share.orm.poolkit_shareable
                    and not sharing.sharing_disabled()):
                return self._poolkit_join(share)
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
        if (local is not None and share is None and sharing.can_register()
                and not sharing.sharing_disabled()):
            local.share = sharing.Share(connection)
        return connection

    def _poolkit_join(self, share: sharing.Share) -> PoolProxiedConnection:
        """Check the shared fairy out once more for SQLAlchemy, with its cursor classes."""
        fairy: PoolProxiedConnection = _ConnectionFairy._checkout(
            self, fairy=share.fairy)  # type: ignore[arg-type]
        classes = self.poolkit_cursor_classes
        driver = fairy.driver_connection
        if classes is not None and driver is not None:
            driver.cursor_factory, driver.server_cursor_factory = classes
        return fairy

    def poolkit_orm_connect(self, orm: Any = None) -> PoolProxiedConnection:
        """A checkout for the pooled ORM backend, which sets the autocommit mode it wants
        itself (Django's ``set_autocommit()``): switching it off here would make two
        driver calls per request that cancel out.

        On a shared pool, ``orm`` (the wrapper) reuses the connection SQLAlchemy holds in
        this thread when its session is as pooled (isolation level, read-only, deferrable),
        and registers its own checkout otherwise."""
        local = self.poolkit_local
        if local is None:
            return self._poolkit_checkout()
        # (The slot is empty in the common case: no call to find that out.)
        share = sharing.current(self) if local.share is not None else None
        if share is not None and share.orm is None and _as_pooled(share.fairy, orm):
            fairy: PoolProxiedConnection = _ConnectionFairy._checkout(
                self, fairy=share.fairy)  # type: ignore[arg-type]
            share.orm = orm
            return fairy
        connection = self._poolkit_checkout()
        if share is None and sharing.can_register():
            local.share = sharing.Share(connection, orm)
        return connection

    def poolkit_orm_release(self, fairy: PoolProxiedConnection) -> sharing.Share | None:
        """The ORM lets go of ``fairy`` (before closing it): returns the share when
        SQLAlchemy still uses it in this thread."""
        local = self.poolkit_local
        if local is None:
            return None
        share = local.share
        if share is None or share.fairy is not fairy:
            return None
        share.orm = None
        if fairy._counter > 1:
            return share
        local.share = None
        return None

    def _poolkit_checkout(self) -> PoolProxiedConnection:
        started = time.perf_counter()
        events = self.poolkit_events
        events.waiting()
        try:
            connection: PoolProxiedConnection = super().connect()  # type: ignore[misc]
        except sqlalchemy.exc.TimeoutError as error:
            events.gave_up("timeouts")
            raise self._poolkit_timeout(time.perf_counter() - started) from error
        except Exception:
            events.gave_up("connect_errors")
            raise
        except BaseException:  # cancelled (asyncio) or interrupted: not a pool failure
            events.gave_up(None)
            raise
        # The checkout event already ran inside super().connect(); the wait is only known now.
        connection.info[FRESH] = True
        events.checked_out(connection, started)
        return connection

    def _do_return_conn(self, record: Any) -> None:
        # The checkin's accounting lives here rather than in a "checkin" listener: with no
        # listener SQLAlchemy skips that event's dispatch on every request. This runs at the
        # same moment (after the reset, before the queue), for invalidated connections too.
        self.poolkit_events.checked_in(record)
        if self.poolkit_recycle is not None and record.dbapi_connection is not None:
            expire_if_due(record, self.poolkit_recycle)
        # A pool the registry retired (settings changed, disposed, test database dropped)
        # must not park the connection in a queue nobody will read again: close it now.
        if getattr(self, "poolkit_retired", False):
            record.close()
            return
        super()._do_return_conn(record)  # type: ignore[misc]

    def recreate(self) -> Any:
        # Engine.dispose() swaps in a fresh pool built by recreate(): carry poolkit's wiring.
        new = super().recreate()  # type: ignore[misc]
        new.poolkit_events = self.poolkit_events
        new.poolkit_max_overflow = self.poolkit_max_overflow
        new.poolkit_autocommit_off = self.poolkit_autocommit_off
        new.poolkit_recycle = self.poolkit_recycle
        new.poolkit_cursor_classes = self.poolkit_cursor_classes
        if self.poolkit_local is not None:
            new.poolkit_local = sharing.PerThread()
        return new

    def _poolkit_timeout(self, waited: float) -> PoolTimeout:
        pool: Any = self
        figures = {"pool_size": pool.size(), "max_overflow": self.poolkit_max_overflow,
                   "timeout": pool.timeout(), "checked_out": pool.checkedout()}
        self.poolkit_events.timed_out(waited, figures)
        return PoolTimeout(self.poolkit_events.alias, **figures)


def _as_pooled(fairy: Any, orm: Any) -> bool:
    """Whether the session SQLAlchemy holds is as the pool hands it out (and as the ORM
    wrapper ``orm`` wants it), so the ORM may use it too."""
    driver = fairy.driver_connection
    if driver is None or driver.read_only is not None or driver.deferrable is not None:
        return False
    level = driver.isolation_level
    if level != fairy.info.get(ISOLATION_LEVEL, level):
        return False
    wanted = getattr(orm, "poolkit_isolation_level", None)
    return wanted is None or wanted == level


class PoolkitQueuePool(_TimedCheckout, QueuePool):
    """The sync pool of every poolkit engine."""

    _queue_class = _FastQueue
    # SQLAlchemy names a pool's logger after its class's module; keep its own messages in
    # its own namespace, where users configure them, not under django_poolkit.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"


class PoolkitAsyncQueuePool(_TimedCheckout, AsyncAdaptedQueuePool):
    """The async engine's pool (same accounting, asyncio-safe queue)."""

    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

