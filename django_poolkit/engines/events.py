"""Pool event listeners: counters, Django signals and log lines for every pool.

Listeners are attached to the *engine* (SQLAlchemy carries engine-level pool listeners over to
the new pool after ``dispose()``). Each handler is a few attribute updates; it never raises,
because an exception inside a pool event would break the checkout or checkin it reports.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .. import signals
from ..exceptions import describe_error
from ..stats import Counters, PoolKind
from .pool import CHECKOUT_AT, CONNECTION_ID, PoolkitAsyncQueuePool, PoolkitQueuePool

__all__ = ["attach_listeners", "connection_id"]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)
_ID = CONNECTION_ID


def connection_id(record: ConnectionPoolEntry) -> int | None:
    """The process-unique number poolkit gave this pooled connection when it was opened."""
    value = record.info.get(_ID)
    return value if isinstance(value, int) else None


def _guarded(handler: Callable[..., None]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            logger.exception("poolkit pool event handler %s failed", handler.__name__)

    run.__name__ = handler.__name__
    return run


def attach_listeners(engine: Engine, alias: str, kind: PoolKind, counters: Counters, *,
                     count_resets: bool = True) -> None:
    """Wire connect, checkout, checkin, invalidate, soft invalidate, reset and close of
    ``engine``'s pool to ``counters``, the ``django_poolkit.signals`` and the logger.

    ``count_resets=False`` when the pool's own reset listener (the checkin hygiene) counts
    and signals resets: one listener on the hot path instead of two."""

    def send(signal: Any, record: ConnectionPoolEntry | None, **extra: Any) -> None:
        if signal.receivers:
            signal.send_robust(sender=alias, alias=alias, kind=kind,
                               connection_id=connection_id(record) if record else None,
                               **extra)

    @_guarded
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_ID] = next(_ids)
        counters.add("connections_opened")
        logger.debug("pool %r (%s) opened connection #%s", alias, kind, record.info[_ID])
        send(signals.pool_connect, record)

    # No checkout listener: PoolkitQueuePool.connect() counts, times and signals a checkout
    # (it alone knows the wait), and an empty event costs SQLAlchemy nothing to dispatch.

    def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # The hottest handler (every request): guarded inline rather than by _guarded's
        # extra frame, and its debug line built only when someone reads it.
        try:
            started = record.info.pop(CHECKOUT_AT, None)
            hold = time.perf_counter() - started if started is not None else None
            counters.checked_in(hold)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pool %r (%s) checked in connection #%s", alias, kind,
                             record.info.get(_ID))
            if signals.pool_checkin.receivers:
                send(signals.pool_checkin, record,
                     hold_ms=hold * 1000.0 if hold is not None else None)
        except Exception:
            logger.exception("poolkit pool event handler on_checkin failed")

    @_guarded
    def on_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry,
                      error: BaseException | None) -> None:
        counters.add("invalidations")
        logger.warning("pool %r (%s) invalidated connection #%s: %s", alias, kind,
                       record.info.get(_ID), describe_error(error, quote=True))
        send(signals.pool_invalidate, record, error=error)

    @_guarded
    def on_soft_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry,
                           error: BaseException | None) -> None:
        counters.add("soft_invalidations")
        logger.info("pool %r (%s) will replace connection #%s at its next checkout: %s",
                    alias, kind, record.info.get(_ID), describe_error(error, quote=True))
        send(signals.pool_soft_invalidate, record, error=error)

    @_guarded
    def on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
        counters.add("resets")
        send(signals.pool_reset, record)

    @_guarded
    def on_close(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        counters.add("connections_closed")
        logger.debug("pool %r (%s) closed connection #%s", alias, kind, record.info.get(_ID))
        send(signals.pool_close, record)

    @_guarded
    def on_close_detached(dbapi_connection: Any) -> None:
        counters.add("connections_closed")

    event.listen(engine, "connect", on_connect)
    if not isinstance(engine.pool, (PoolkitQueuePool, PoolkitAsyncQueuePool)):
        # Poolkit's own pools account for checkins in _do_return_conn (no event dispatch).
        event.listen(engine, "checkin", on_checkin)
    event.listen(engine, "invalidate", on_invalidate)
    event.listen(engine, "soft_invalidate", on_soft_invalidate)
    if count_resets:
        event.listen(engine, "reset", on_reset)
    event.listen(engine, "close", on_close)
    event.listen(engine, "close_detached", on_close_detached)
