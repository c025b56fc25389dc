"""SQLAlchemy's ``QueuePool``, timed: the one place a checkout's wait can be measured.

SQLAlchemy's ``checkout`` event fires after the connection is obtained, so it cannot see how
long the caller waited, nor a checkout that timed out. Overriding the public ``connect()``
(the entry point of every checkout, sync or through the async adapter) gives both, and turns
SQLAlchemy's bare ``TimeoutError`` into :class:`~django_poolkit.PoolTimeout`, which names the
alias and the numbers.
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

__all__ = ["PoolkitAsyncQueuePool", "PoolkitQueuePool"]

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

    def connect(self) -> PoolProxiedConnection:
        started = time.perf_counter()
        try:
            connection: PoolProxiedConnection = super().connect()  # type: ignore[misc]
        except sqlalchemy.exc.TimeoutError as error:
            self.poolkit_counters.add("timeouts")
            raise self._poolkit_timeout(time.perf_counter() - started) from error
        except Exception:
            self.poolkit_counters.add("connect_errors")
            raise
        now = time.perf_counter()
        # The checkout event already ran inside super().connect(); the wait is only known now.
        connection.info[CHECKOUT_AT] = now
        self.poolkit_counters.checked_out(now - started)
        if signals.pool_checkout.receivers:
            signals.pool_checkout.send_robust(
                sender=self.poolkit_alias, alias=self.poolkit_alias, kind=self.poolkit_kind,
                connection_id=connection.info.get(CONNECTION_ID),
                wait_ms=(now - started) * 1000.0)
        return connection

    def recreate(self) -> Any:
        # Engine.dispose() swaps in a fresh pool built by recreate(): carry poolkit's wiring.
        new = super().recreate()  # type: ignore[misc]
        new.poolkit_alias = self.poolkit_alias
        new.poolkit_kind = self.poolkit_kind
        new.poolkit_counters = self.poolkit_counters
        new.poolkit_max_overflow = self.poolkit_max_overflow
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
