"""SQLAlchemy's ``QueuePool``, timed: the one place a checkout's wait can be measured.

SQLAlchemy's ``checkout`` event fires after the connection is obtained, so it cannot see how
long the caller waited, nor a checkout that timed out. Overriding the public ``connect()``
(the entry point of every checkout, sync or through the async adapter) gives both, and turns
SQLAlchemy's bare ``TimeoutError`` into :class:`~django_poolkit.PoolTimeout`, which names the
alias and the numbers. The checkin's accounting lives here too (``_do_return_conn``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy.exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool

from .. import signals
from ..exceptions import PoolTimeout
from ..stats import Counters, PoolKind
from .recycle import expire_if_due

__all__ = ["CHECKOUT_AT", "CONNECTION_ID", "PoolkitAsyncQueuePool", "PoolkitQueuePool"]

# Key in a checked-out connection's ``info`` dict: perf_counter() at checkout, read at checkin
# to compute the hold time.
CHECKOUT_AT = "poolkit_checkout_at"
# Key in a connection's ``info`` dict: the number poolkit gave it when it was opened.
CONNECTION_ID = "poolkit_id"

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
        connection.info[CHECKOUT_AT] = now
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

