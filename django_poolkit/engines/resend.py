"""Resend the first statement of a checkout when the server provably never ran it.

A pooled connection can be ended by the server (``pg_terminate_backend``, a restart, a
failover, PgBouncer's ``RECONNECT``) in the instant between the pool's pre-ping and the first
statement: the ping saw a quiet socket, the server's goodbye was still on its way. The first
statement then fails with ``57P01``. Replacing the connection and sending the statement again
is safe only when the statement cannot have done anything, and this module decides that (the
rule and its proof from PostgreSQL's protocol: ``docs/resend.rst``):

- it is the first statement of the checkout, the session holding no transaction before it;
- the error is the server's ErrorResponse with SQLSTATE ``57P01`` (``admin_shutdown``) or
  ``57P05`` (``idle_session_timeout``): the backend ends the session at an interrupt check,
  and a statement ended that way is rolled back (the commit holds interrupts off);
- that error is the first thing the server answered to the statement (no result came before
  it: a ``CommandComplete`` before it could follow a commit).

Anything else surfaces as before. The check costs no round trip: the pre-ping stays a look at
the socket, and the resend happens only on the failure path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool.base import _ConnectionFairy

from .events import CHECKOUT_AT
from .pool import FRESH

__all__ = ["RESEND_SQLSTATES", "answer_tracking", "install_resend", "never_ran"]

logger = logging.getLogger(__name__)

#: SQLSTATEs a backend sends when it ends the session from an interrupt check: the statement
#: it answered with one of them was never run, or was rolled back.
RESEND_SQLSTATES = frozenset({"57P01", "57P05"})

_tracking: dict[type[Any], type[Any]] = {}


def answer_tracking(cursor_class: type[Any]) -> type[Any]:
    """``cursor_class`` that remembers whether the server answered its last statement with
    something other than an error first (``poolkit_answered``).

    psycopg reads every result of a statement before raising for a failed one; a result ahead
    of the error means the statement ran, and may have committed."""
    if getattr(cursor_class, "_poolkit_tracks_answers", False):
        return cursor_class
    tracked = _tracking.get(cursor_class)
    if tracked is None:
        from psycopg.pq import ExecStatus

        fatal = ExecStatus.FATAL_ERROR

        def _check_results(self: Any, results: list[Any]) -> None:
            self.poolkit_answered = bool(results) and results[0].status != fatal
            cursor_class._check_results(self, results)

        tracked = type(cursor_class.__name__, (cursor_class,), {
            "__module__": cursor_class.__module__,
            "__doc__": cursor_class.__doc__,
            "_poolkit_tracks_answers": True,
            "poolkit_answered": False,
            "_check_results": _check_results,
        })
        _tracking[cursor_class] = tracked
    return tracked


def never_ran(error: BaseException, cursor: Any) -> bool:
    """Whether ``error``, raised by ``cursor``'s first statement of a checkout, proves that
    the server did not run the statement (or rolled it back): the server's ``57P01``/``57P05``
    was its first answer. The caller checks that no transaction was open before it."""
    if getattr(error, "sqlstate", None) not in RESEND_SQLSTATES:
        return False
    driver_cursor = getattr(cursor, "_cursor", cursor)  # SQLAlchemy's async adapter
    if not getattr(type(driver_cursor), "_poolkit_tracks_answers", False):
        return False
    return not driver_cursor.poolkit_answered


_SESSION_MODE = ("autocommit", "isolation_level", "read_only", "deferrable")


def _replace(fairy: Any, error: BaseException) -> None:
    """Put a new driver connection under ``fairy`` (still checked out), in the session mode
    the dead one had; mark the pool's older connections stale, as SQLAlchemy does on a
    disconnect (the server most likely ended them too)."""
    old = fairy.driver_connection
    mode = {name: getattr(old, name) for name in _SESSION_MODE}
    record = fairy._connection_record
    checkout_at = record.info.get(CHECKOUT_AT)
    pool = fairy._pool
    pool._invalidate_time = time.time()
    record.invalidate(error)
    fairy.dbapi_connection = record.get_connection()
    if checkout_at is not None:  # a reconnect clears info; the hold time counts from checkout
        record.info[CHECKOUT_AT] = checkout_at
    new_driver = fairy.driver_connection
    for name, value in mode.items():
        if getattr(new_driver, name) != value:
            setter = getattr(fairy.dbapi_connection, "set_" + name, None)
            if setter is not None:
                setter(value)
            else:
                setattr(fairy.dbapi_connection, name, value)


def install_resend(engine: Any, alias: str) -> None:
    """Resend a SQLAlchemy checkout's first statement when :func:`never_ran` proves it safe
    (``do_execute`` listeners: they run only where SQLAlchemy calls the driver, and do nothing
    but pop a flag after the first statement)."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        driver.cursor_factory = answer_tracking(driver.cursor_factory)

    def run(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        fairy: Any = context.root_connection._dbapi_connection
        # Not a pool checkout (the dialect's first-connect probe), or not the checkout's
        # first statement: SQLAlchemy's own do_execute.
        if type(fairy) is not _ConnectionFairy or not fairy.info.pop(FRESH, False):
            return False
        driver: Any = fairy.driver_connection
        idle = driver.autocommit or _idle(driver)
        try:
            _execute(cursor, statement, parameters)
            return True
        except Exception as error:
            if not (idle and never_ran(error, cursor)):
                raise
            logger.warning("database %r: the server ended a pooled connection before its "
                           "checkout's first statement ran (SQLSTATE %s); sending it again on "
                           "a new connection", alias, getattr(error, "sqlstate", None))
            _replace(fairy, error)
        context.cursor = cursor = context.create_cursor()
        _execute(cursor, statement, parameters)
        return True

    def on_do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        return run(cursor, statement, parameters, context)

    def on_do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
        return run(cursor, statement, None, context)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "do_execute", on_do_execute)
    event.listen(engine, "do_execute_no_params", on_do_execute_no_params)


def _idle(driver: Any) -> bool:
    """Whether the statement about to fail began the session's transaction (psycopg's own
    BEGIN): after the failure the status is unknown, so this is read before."""
    from psycopg.pq import TransactionStatus

    status = driver.pgconn.transaction_status if hasattr(driver, "pgconn") else None
    return status == TransactionStatus.IDLE


def _execute(cursor: Any, statement: str, parameters: Any) -> None:
    if parameters is None:
        cursor.execute(statement)
    else:
        cursor.execute(statement, parameters)
