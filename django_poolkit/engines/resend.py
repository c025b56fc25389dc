"""Resend the first statement of a checkout when the server provably never ran it.

A pooled connection can be ended by the server (``pg_terminate_backend``, a restart, a
failover, PgBouncer's ``RECONNECT``) in the instant between the pool's pre-ping and the first
statement: the ping saw a quiet socket, the server's goodbye was still on its way. The first
statement then fails with ``57P01``. Replacing the connection and sending the statement again
is safe only when the statement cannot have done anything; :func:`may_resend` decides that
(the rule and its proof from PostgreSQL's and psycopg's source: ``docs/resend.rst``). In
short: one statement that cannot commit by itself, sent alone (never ``executemany``), first
of its checkout with no transaction open, answered first by ``57P01``/``57P05`` within
:data:`RESEND_WINDOW_S` of being sent. Anything else surfaces as before.

The check costs no round trip: the pre-ping stays a look at the socket, the first statement
reads the clock once, and the rest happens only on the failure path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool.base import _ConnectionFairy

from .events import CHECKOUT_AT
from .pool import FRESH

__all__ = ["RESEND_SQLSTATES", "RESEND_WINDOW_S", "answer_tracking", "install_resend",
           "may_resend", "resendable_statement"]

logger = logging.getLogger(__name__)

#: SQLSTATEs a backend sends when it ends the session from an interrupt check: the statement
#: it answered with one of them was never run, or was rolled back (if it cannot commit).
RESEND_SQLSTATES = frozenset({"57P01", "57P05"})

#: The longest a statement may have been under way (sent to error, on the client's clock) for
#: its ``57P01`` to count as the race with the pre-ping rather than an operator's kill of a
#: running statement, which must surface. An idle session's goodbye is already on the wire
#: when the statement leaves: in that race (47 resends, twelve threads, two busy cores) the
#: error came 0.2-15 ms after the send, median 5 ms (docs/resend.rst).
RESEND_WINDOW_S = 0.1

#: The first keywords of statements that run inside one implicit transaction and cannot end
#: it: no ``COMMIT`` can run inside them (a function called from one may not commit; only
#: ``CALL`` and ``DO`` may), so the server's FATAL rolls back everything they did.
_RESENDABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES",
                         "TABLE"})

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


def resendable_statement(statement: object) -> bool:
    """Whether ``statement`` is one statement of a kind that cannot commit by itself.

    Leading blanks, comments and parentheses are skipped; the first keyword must be one of
    :data:`_RESENDABLE`, and no ``;`` may follow but at the end (one inside a string literal
    refuses too: a refusal only surfaces the error). Anything but text (psycopg's
    ``sql.Composed``) is refused."""
    if isinstance(statement, bytes):
        statement = statement.decode("latin-1")
    if not isinstance(statement, str):
        return False
    text = statement.rstrip(" \t\r\n\f;")
    if ";" in text:
        return False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n\f(":
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            i = _comment_end(text, i)
        else:
            break
    j = i
    while j < n and (text[j].isalnum() or text[j] in "_$" or not text[j].isascii()):
        j += 1  # the whole identifier: SELECTÉ is not SELECT
    return text[i:j].upper() in _RESENDABLE


def _comment_end(text: str, i: int) -> int:
    """The index after the ``/* */`` comment at ``i`` (PostgreSQL's comments nest)."""
    depth, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def may_resend(error: BaseException, cursor: Any, statement: object, started: float) -> bool:
    """Whether ``error``, raised by ``cursor``'s first statement of a checkout sent at
    ``started`` (``time.perf_counter()``), proves that the server did not run ``statement``
    or rolled all of it back, and that no operator ended it while it ran: the server's
    ``57P01``/``57P05`` was its first answer, within :data:`RESEND_WINDOW_S`, to a statement
    that cannot commit by itself. The caller checks that no transaction was open before it
    and that the statement was sent alone (not ``executemany``)."""
    if getattr(error, "sqlstate", None) not in RESEND_SQLSTATES:
        return False
    if time.perf_counter() - started > RESEND_WINDOW_S:
        return False
    driver_cursor = getattr(cursor, "_cursor", cursor)  # SQLAlchemy's async adapter
    if not getattr(type(driver_cursor), "_poolkit_tracks_answers", False):
        return False
    return not driver_cursor.poolkit_answered and resendable_statement(statement)


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
    """Resend a SQLAlchemy checkout's first statement when :func:`may_resend` proves it safe
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
        started = time.perf_counter()
        try:
            _execute(cursor, statement, parameters)
            return True
        except Exception as error:
            if not (idle and may_resend(error, cursor, statement, started)):
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

    def on_do_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        # Never resent (without libpq's pipeline psycopg commits row by row in autocommit);
        # what follows it is not the checkout's first statement.
        fairy: Any = context.root_connection._dbapi_connection
        if type(fairy) is _ConnectionFairy:
            fairy.info.pop(FRESH, None)
        return False

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "do_execute", on_do_execute)
    event.listen(engine, "do_execute_no_params", on_do_execute_no_params)
    event.listen(engine, "do_executemany", on_do_executemany)


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
