"""Pool accounting: counters, Django signals and log lines for every pool, from one place.

:class:`PoolEvents` is the only writer of a pool's :class:`~django_poolkit.stats.Counters`
and the only sender of the ``pool_*`` signals. Poolkit's pool class reports checkouts,
timeouts and checkins to it (it alone knows the wait), the checkin hygiene reports resets,
and :func:`attach_listeners` wires SQLAlchemy's other pool events (connect, invalidate, soft
invalidate, reset, close) to it. Listeners are attached to the *engine* (SQLAlchemy carries
engine-level pool listeners over to the new pool after ``dispose()``). No handler raises: an
exception inside a pool event would break the checkout or checkin it reports.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.pool import ConnectionPoolEntry

from .. import signals
from ..exceptions import describe_error
from ..stats import Counters, PoolKind

__all__ = ["CHECKOUT_AT", "CONNECTION_ID", "PING_ERROR", "PoolEvents", "attach_listeners",
           "connection_id"]

logger = logging.getLogger(__name__)

# Key in a checked-out connection's ``info`` dict: perf_counter() at checkout, read at checkin
# to compute the hold time.
CHECKOUT_AT = "poolkit_checkout_at"
# Key in a connection's ``info`` dict: the number poolkit gave it when it was opened.
CONNECTION_ID = "poolkit_id"
# Attribute of a DB-API connection: the error of its failed pre-ping. SQLAlchemy turns a failed
# ping into a bare ``InvalidatePoolError()``; the log line names the ping's error instead.
PING_ERROR = "poolkit_ping_error"

_ids = itertools.count(1)


def connection_id(record: ConnectionPoolEntry) -> int | None:
    """The process-unique number poolkit gave this pooled connection when it was opened."""
    value = record.info.get(CONNECTION_ID)
    return value if isinstance(value, int) else None


class PoolEvents:
    """Everything that happens to one pool (an alias's sync or async pool): counted, signalled
    and logged here. The registry makes one per engine it builds."""

    def __init__(self, alias: str, kind: PoolKind, counters: Counters) -> None:
        self.alias = alias
        self.kind = kind
        self.counters = counters
        #: A caller entered a checkout: the counters' own method, one call on the hot path.
        self.waiting: Callable[[], None] = counters.waiting

    def __repr__(self) -> str:
        return f"<PoolEvents {self.alias!r} ({self.kind})>"

    def _send(self, signal: Any, record: Any, **extra: Any) -> None:
        if signal.receivers:
            signal.send_robust(sender=self.alias, alias=self.alias, kind=self.kind,
                               connection_id=record.info.get(CONNECTION_ID)
                               if record is not None else None, **extra)

    # Reported by the pool class (the hot path: no extra frames when nobody listens) ---------

    def gave_up(self, key: str | None) -> None:
        """A caller left a checkout without a connection (``timeouts``, ``connect_errors``,
        or None when interrupted)."""
        self.counters.gave_up(key)

    def checked_out(self, connection: Any, started: float) -> None:
        """A checkout succeeded after waiting since ``started`` (``perf_counter()``)."""
        now = time.perf_counter()
        connection.info[CHECKOUT_AT] = now
        self.counters.checked_out(now - started)  # and no longer waiting
        if signals.pool_checkout.receivers:
            self._send(signals.pool_checkout, connection, wait_ms=(now - started) * 1000.0)

    def checked_in(self, record: Any) -> None:
        """A connection came back (before it is queued again; invalidated ones too)."""
        try:
            started = record.info.pop(CHECKOUT_AT, None)
            hold = time.perf_counter() - started if started is not None else None
            self.counters.checked_in(hold)
            # No log line: SQLAlchemy's pool logger ("sqlalchemy.pool") logs every checkin
            # at DEBUG, and a level check here would cost a call on every request.
            if signals.pool_checkin.receivers:
                self._send(signals.pool_checkin, record,
                           hold_ms=hold * 1000.0 if hold is not None else None)
        except Exception:  # accounting must never break a checkin
            logger.exception("poolkit checkin accounting failed")

    def timed_out(self, waited: float, figures: dict[str, Any]) -> None:
        """A checkout gave up after ``pool_timeout`` (already counted by :meth:`gave_up`)."""
        self._send(signals.pool_timeout, None, **figures)
        logger.warning("pool %r (%s) timed out after %.3f s: pool_size=%s max_overflow=%s "
                       "checked out=%s", self.alias, self.kind, waited, figures["pool_size"],
                       figures["max_overflow"], figures["checked_out"])

    def reset(self, record: Any) -> None:
        """A returned connection is being reset."""
        self.counters.add("resets")
        if signals.pool_reset.receivers:
            self._send(signals.pool_reset, record)

    # Reported by SQLAlchemy's pool events ---------------------------------------------------

    def opened(self, record: Any) -> None:
        record.info[CONNECTION_ID] = next(_ids)
        self.counters.add("connections_opened")
        logger.debug("pool %r (%s) opened connection #%s", self.alias, self.kind,
                     record.info[CONNECTION_ID])
        self._send(signals.pool_connect, record)

    def invalidated(self, record: Any, error: BaseException | None,
                    dbapi_connection: Any = None) -> None:
        self.counters.add("invalidations")
        if isinstance(error, InvalidatePoolError):
            # Found dead at checkout: SQLAlchemy replaces it now, and every connection opened
            # before it at its own next checkout (they most likely died with it).
            ping_error = getattr(dbapi_connection, PING_ERROR, None)
            cause = (f"the pre-ping found it dead at checkout "
                     f"({describe_error(ping_error, quote=True)})" if ping_error is not None
                     else "the pre-ping or a checkout listener found it disconnected at "
                          "checkout")  # SQLAlchemy's own ping (async, SQLite) keeps no error
            logger.warning("pool %r (%s) invalidated connection #%s: %s; replacing it, and the "
                           "pool's older connections at their next checkout", self.alias,
                           self.kind, record.info.get(CONNECTION_ID), cause)
        else:
            logger.warning("pool %r (%s) invalidated connection #%s: %s", self.alias,
                           self.kind, record.info.get(CONNECTION_ID),
                           describe_error(error, quote=True))
        self._send(signals.pool_invalidate, record, error=error)

    def soft_invalidated(self, record: Any, error: BaseException | None) -> None:
        self.counters.add("soft_invalidations")
        logger.info("pool %r (%s) will replace connection #%s at its next checkout: %s",
                    self.alias, self.kind, record.info.get(CONNECTION_ID),
                    describe_error(error, quote=True))
        self._send(signals.pool_soft_invalidate, record, error=error)

    def closed(self, record: Any) -> None:
        self.counters.add("connections_closed")
        if record is not None:
            logger.debug("pool %r (%s) closed connection #%s", self.alias, self.kind,
                         record.info.get(CONNECTION_ID))
            self._send(signals.pool_close, record)


def _guarded(handler: Callable[..., None]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            logger.exception("poolkit pool event handler %s failed", handler.__name__)

    run.__name__ = handler.__name__
    return run


def attach_listeners(engine: Engine, events: PoolEvents, *, checkin: bool,
                     reset: bool) -> None:
    """Wire ``engine``'s pool events to ``events``.

    ``checkin``: listen for checkins (pools other than poolkit's, which report them from
    ``_do_return_conn`` without an event dispatch). ``reset``: listen for resets (unless the
    checkin hygiene's own reset listener reports them: one listener on the hot path, not
    two)."""

    @_guarded
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        events.opened(record)

    @_guarded
    def on_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry,
                      error: BaseException | None) -> None:
        events.invalidated(record, error, dbapi_connection)

    @_guarded
    def on_soft_invalidate(dbapi_connection: Any, record: ConnectionPoolEntry,
                           error: BaseException | None) -> None:
        events.soft_invalidated(record, error)

    @_guarded
    def on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
        events.reset(record)

    @_guarded
    def on_close(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        events.closed(record)

    @_guarded
    def on_close_detached(dbapi_connection: Any) -> None:
        events.closed(None)

    def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        events.checked_in(record)  # guarded inside: the hottest handler

    # No checkout listener: the pool class reports checkouts (it alone knows the wait), and
    # an event nobody listens to costs SQLAlchemy nothing to dispatch.
    event.listen(engine, "connect", on_connect)
    if checkin:
        event.listen(engine, "checkin", on_checkin)
    event.listen(engine, "invalidate", on_invalidate)
    event.listen(engine, "soft_invalidate", on_soft_invalidate)
    if reset:
        event.listen(engine, "reset", on_reset)
    event.listen(engine, "close", on_close)
    event.listen(engine, "close_detached", on_close_detached)
