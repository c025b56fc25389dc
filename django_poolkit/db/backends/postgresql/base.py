"""The pooled ``DatabaseWrapper``: Django's PostgreSQL backend whose connections come from,
and go back to, the alias's SQLAlchemy pool.

Everything but where a connection comes from and where it goes is Django's own code:
connection parameters (``get_connection_params()``), autocommit, transactions, savepoints,
time zone, cursors and error wrapping. The differences:

- ``get_new_connection()`` checks a connection out of ``engine_registry.get(alias, "sync")``,
  the pool ``get_engine(alias)`` uses, so the ORM and SQLAlchemy share one budget. The pool's
  pre-ping, timeout (:class:`~django_poolkit.PoolTimeout`) and recycling apply.
- ``_close()`` returns the connection instead of closing it. The pool's checkin rolls back
  and normalises it (``reset_on_return``). A connection closed inside ``atomic()``, broken,
  or belonging to a pool disposed meanwhile is closed instead of returned.
- ``SET ROLE`` for ``OPTIONS["assume_role"]`` is skipped when the session is known pristine:
  the role is then already the session default, sent in the startup ``options``.
- Unfinished server-side cursors (an abandoned ``.iterator()``) are closed before the
  connection goes back, so they cannot outlive the request on someone else's checkout.
- The first statement of a checkout is sent again on a new connection when the server
  provably never ran it (it ended the session first: :mod:`~django_poolkit.engines.resend`).

A wrapper whose ``settings_dict`` is not the alias's configured one (Django's
``_nodb_cursor()`` wrapper with ``NAME=None``, ``connection.copy()``) connects directly, as
the stock backend does: a pool built for other parameters must not serve it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper
from django.db.utils import OperationalError
from django.utils.asyncio import async_unsafe
from django.views.decorators.debug import sensitive_variables
from sqlalchemy.pool import PoolProxiedConnection

from ....conf import get_settings
from ....engines import engine_registry, sharing
from ....engines.hygiene import PRISTINE
from ....engines.resend import answer_tracking, may_resend
from ....exceptions import PoolkitConfigurationError
from ...checks import backend_problems
from .creation import DatabaseCreation

__all__ = ["DatabaseWrapper"]

logger = logging.getLogger(__name__)

# Every wrapper of this process, for the at-fork hook (wrappers are per thread and per alias).
_wrappers: weakref.WeakSet[DatabaseWrapper] = weakref.WeakSet()
# In a forked child: the psycopg connections it inherited and let go of.
_inherited: list[Any] = []
# Django's two cursor classes as the ORM's checkouts use them (resend's answer tracking).
_TRACKED = {cls: answer_tracking(cls) for cls in (base.Cursor, base.ServerBindingCursor)}
_BAD = psycopg.pq.ConnStatus.BAD
_IDLE = psycopg.pq.TransactionStatus.IDLE


def _after_fork_in_child() -> None:
    """Let every wrapper forget the connection it inherited from the parent."""
    for wrapper in list(_wrappers):
        wrapper._poolkit_let_go_after_fork()


class _ThreadEnd:
    """Kept in a thread-local, so reference counting frees it as its thread ends (the cyclic
    GC, which a wrapper needs, may run much later): it gives that thread's open checkouts
    back to their pools (:meth:`DatabaseWrapper._poolkit_thread_ended`)."""

    __slots__ = ("ident", "wrappers")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.wrappers: list[weakref.ref[DatabaseWrapper]] = []

    def __del__(self) -> None:
        for ref in self.wrappers:
            wrapper = ref()
            if wrapper is not None and wrapper._poolkit_thread == self.ident:
                try:
                    wrapper._poolkit_thread_ended()
                except BaseException:  # never out of a thread's teardown
                    logger.warning("database %r: could not return the connection of an "
                                   "ended thread", wrapper.alias, exc_info=True)


_thread_end = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _FirstStatement:
    """Cursor wrapper mixin for the cursors made while a checkout has sent nothing yet: the
    first statement gets one resend when the server ended the connection before running it
    (:func:`~django_poolkit.engines.resend.may_resend`); an ``executemany`` never does.
    Later statements, and every cursor made after the first statement, pay nothing."""

    db: DatabaseWrapper
    cursor: Any

    def _execute(self, *args: Any) -> Any:
        execute = super()._execute  # type: ignore[misc]
        db = self.db
        if not db._poolkit_fresh:
            return execute(*args)
        db._poolkit_fresh = False
        idle = db.get_autocommit() and not db.in_atomic_block
        started = time.perf_counter()
        try:
            return execute(*args)
        except OperationalError as error:
            if not (idle and error.__cause__ is not None
                    and may_resend(error.__cause__, self.cursor, args[0], started)):
                raise
            db._poolkit_replace(self, error.__cause__)
        return execute(*args)

    def _executemany(self, *args: Any) -> Any:
        self.db._poolkit_fresh = False
        return super()._executemany(*args)  # type: ignore[misc]


class _FirstStatementCursor(_FirstStatement, CursorWrapper):
    pass


class _FirstStatementDebugCursor(_FirstStatement, base.CursorDebugWrapper):
    pass


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's PostgreSQL ``DatabaseWrapper`` with pooled connections (psycopg 3 only)."""

    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _wrappers.add(self)
        self._poolkit_fairy: PoolProxiedConnection | None = None
        self._poolkit_pool: Any = None
        self._poolkit_pristine = False
        self._poolkit_pid = 0
        self._poolkit_server_cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        # Whether this checkout made a named cursor (a bool test is cheaper than the set's).
        self._poolkit_named = False
        #: True from a checkout until its first statement through a cursor wrapper.
        self._poolkit_fresh = False
        self._poolkit_cursor_factory: Any = None
        #: The thread whose _ThreadEnd knows this wrapper (its last checkout's thread).
        self._poolkit_thread = 0
        #: The isolation level OPTIONS asks for (None: the pool's), for sharing decisions.
        self.poolkit_isolation_level: Any = None
        # What connect() last checked the settings with (see connect()).
        self._poolkit_checked: tuple[Any, ...] | None = None
        if self.poolkit_pooled and self._poolkit_pgbouncer() == "transaction":
            # Django reads this before it connects (QuerySet.iterator()): a server-side
            # cursor would outlive the transaction's server connection behind PgBouncer.
            self.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True

    def _poolkit_pgbouncer(self) -> str | None:
        """The alias's ``pgbouncer`` mode (None when the configuration is broken: the error
        surfaces when the pool is built)."""
        try:
            pool = get_settings().for_alias(self.alias)
        except PoolkitConfigurationError:
            return None
        return pool.pgbouncer if pool is not None else None

    @property
    def pool(self) -> None:
        """Django's own psycopg pool (Django >= 5.1): never, poolkit's pool replaces it."""
        return None

    def close_pool(self) -> None:
        """Django calls this when a pool must not outlive a change (test database clone or
        destroy, a new time zone): dispose this alias's pools."""
        if self.poolkit_pooled:
            engine_registry.dispose(self.alias)

    @property
    def poolkit_pooled(self) -> bool:
        """Whether this wrapper draws from the alias's pool: only when its settings are the
        alias's configured settings object (the test runner updates that object in place).
        Copies, and Django's ``_nodb_cursor()`` wrapper, connect directly."""
        if self.alias == NO_DB_ALIAS:
            return False
        return self.settings_dict is connections.settings.get(self.alias)

    @property
    def poolkit_checked_out(self) -> bool:
        """Whether this wrapper holds a connection checked out of the pool right now."""
        return self._poolkit_fairy is not None

    def check_settings(self) -> None:
        """Django's checks, plus the pooled backend's rules (``poolkit.E010``/``E011``),
        raised at connect for deployments that never run ``manage.py check``."""
        super().check_settings()
        if self.poolkit_pooled:
            problems = backend_problems(self.alias, self.settings_dict)
            if problems:
                raise PoolkitConfigurationError(problems)

    @sensitive_variables()
    def _stock_connect(self) -> None:
        """Django's ``connect``, with every variable of it and below it hidden from Django's
        error reports (its ``conn_params`` holds the password: an admin e-mail about a failed
        connection must not). A pooled checkout builds no connection parameters at all."""
        super().connect()

    @async_unsafe
    def connect(self) -> None:
        """Django's ``connect()`` for a checkout of the alias's pool, minus the work a pooled
        checkout does not need: the settings checks run again only when the settings they
        read changed, and the connection parameters (the pool has its own) are not built.
        Everything else (the wrapper's state, autocommit, ``init_connection_state()``,
        ``connection_created``) is Django's, in Django's order; switching autocommit on skips
        ``set_autocommit()``'s checks, which a fresh checkout passes by construction."""
        if not self.poolkit_pooled:
            self._stock_connect()
            return
        settings_dict = self.settings_dict
        checked = (settings.USE_TZ, settings_dict["TIME_ZONE"], settings_dict["CONN_MAX_AGE"],
                   bool((settings_dict["OPTIONS"] or {}).get("pool")))
        if checked != self._poolkit_checked:
            self.check_settings()
            self._poolkit_checked = checked
        self.in_atomic_block = False
        self.savepoint_ids = []
        self.atomic_blocks = []
        self.needs_rollback = False
        self.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
        max_age = settings_dict["CONN_MAX_AGE"]
        self.close_at = None if max_age is None else time.monotonic() + max_age
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.health_check_done = True
        cursor_factory = _TRACKED[base.ServerBindingCursor
                                  if settings_dict["OPTIONS"].get("server_side_binding") is True
                                  else base.Cursor]
        autocommit = settings_dict["AUTOCOMMIT"]
        # The entry holds the password: no frame variable may, when the checkout below fails
        # and Django's error report lists this frame's variables.
        del settings_dict
        self.connection = self._poolkit_checkout(cursor_factory)
        if autocommit:
            # Django's set_autocommit(True) without its checks, which a fresh checkout
            # passes by construction (no atomic block, health check done, connected).
            # Joined to SQLAlchemy's open transaction: the mode stays until it ends, and
            # init_connection_state() shows autocommit off to Django (engines.sharing).
            if not self.connection.autocommit and not self._poolkit_sqlalchemy_transaction():
                with self.wrap_database_errors:
                    self.connection.autocommit = True
            self.autocommit = True
            if self.run_commit_hooks_on_set_autocommit_on:
                self.run_and_clear_commit_hooks()
                self.run_commit_hooks_on_set_autocommit_on = False
        else:
            self.set_autocommit(False)
        self.init_connection_state()
        connection_created.send(sender=self.__class__, connection=self)
        self.run_on_commit = []

    # No @async_unsafe on these overrides: Django's connect(), ensure_connection() and
    # create_cursor() that call them (or that they call) already check, once per call.
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.poolkit_pooled:
            return super().get_new_connection(conn_params)
        return self._poolkit_checkout(answer_tracking(conn_params["cursor_factory"]))

    def _poolkit_checkout(self, cursor_factory: Any) -> Any:
        """``get_new_connection()`` of a pooled wrapper: a checkout whose ORM cursors are
        ``cursor_factory`` (a class :func:`~django_poolkit.engines.resend.answer_tracking`
        made)."""
        # As Django: the wrapper's isolation_level is the OPTIONS value or READ COMMITTED.
        options = self.settings_dict["OPTIONS"]
        set_isolation_level = "isolation_level" in options
        level = options.get("isolation_level")
        del options  # it may hold OPTIONS["password"]: not a frame variable of a failed checkout
        if set_isolation_level:
            try:
                self.isolation_level = psycopg.IsolationLevel(level)
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {level} "
                    "specified. Use one of the psycopg.IsolationLevel values."
                ) from None
        else:
            self.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        self.poolkit_isolation_level = self.isolation_level if set_isolation_level else None
        pool = engine_registry.get(self.alias, "sync").pool
        fairy = pool.poolkit_orm_connect(self)
        self._poolkit_cursor_factory = cursor_factory
        connection = fairy.driver_connection
        if fairy._counter == 1:  # not shared with SQLAlchemy
            try:
                # The pool hands out SQLAlchemy's cursor classes; the ORM uses Django's.
                connection.cursor_factory = self._poolkit_cursor_factory
                connection.server_cursor_factory = psycopg.ServerCursor
                if set_isolation_level:
                    connection.isolation_level = self.isolation_level
            except BaseException:
                pool.poolkit_orm_release(fairy)
                fairy.invalidate()
                raise
        self._poolkit_fairy = fairy
        self._poolkit_pool = pool
        self._poolkit_pid = os.getpid()
        self._poolkit_pristine = bool(fairy.info.get(PRISTINE))
        # A connection shared with SQLAlchemy's checkout in this thread may carry its
        # transaction: only an unshared checkout's first statement may be resent.
        self._poolkit_fresh = fairy._counter == 1
        ident = threading.get_ident()
        if self._poolkit_thread != ident:  # once per wrapper and thread
            self._poolkit_thread = ident
            end = getattr(_thread_end, "end", None)
            if end is None:
                end = _thread_end.end = _ThreadEnd(ident)
            end.wrappers.append(weakref.ref(self))
        return connection

    def _poolkit_thread_ended(self) -> None:
        """The thread of this checkout ended without closing it (this runs in the thread's
        teardown): give the slot back now, so a worker's threads hold at most one checkout
        each. An idle session goes back through the pool's checkin (its reset); one with a
        transaction or named cursors open is discarded, which ends its server session and
        rolls the transaction back at once, as the stock backend's closed socket would.
        Not for a connection shared on purpose (``inc_thread_sharing()``), nor one that
        SQLAlchemy's side still counts (a ``Connection`` of that thread returns it)."""
        fairy = self._poolkit_fairy
        if (fairy is None or self._poolkit_pid != os.getpid() or self.allow_thread_sharing
                or fairy._counter != 1):
            return
        pool = self._poolkit_pool
        open_cursors = any(not cursor.closed for cursor in self._poolkit_server_cursors)
        connection = self.connection
        self._poolkit_fairy = self._poolkit_pool = None
        self._poolkit_cursor_factory = None
        self._poolkit_server_cursors = weakref.WeakSet()
        self._poolkit_named = False
        self.connection = None
        if self.in_atomic_block:  # as close() inside atomic()
            self.closed_in_transaction = True
            self.needs_rollback = True
        # (The sharing slot is in the ended thread's locals, gone with them: not read here,
        # where a thread-local would be created anew.)
        if (open_cursors or connection.pgconn.status == _BAD
                or connection.pgconn.transaction_status != _IDLE):
            fairy.invalidate()
            return
        self._poolkit_check_in(fairy, pool)

    def _poolkit_check_in(self, fairy: Any, pool: Any) -> None:
        """Return ``fairy`` to ``pool``; if the pool was disposed while this connection was
        out, nobody would use it: detach it, so the checkin closes it."""
        current = engine_registry.built(self.alias, "sync")
        if current is None or current.pool is not pool:
            fairy.detach()
        fairy.close()

    def make_cursor(self, cursor: Any) -> Any:
        if self._poolkit_fresh and not isinstance(cursor, psycopg.ServerCursor):
            return _FirstStatementCursor(cursor, self)
        return super().make_cursor(cursor)

    def make_debug_cursor(self, cursor: Any) -> Any:
        if self._poolkit_fresh and not isinstance(cursor, psycopg.ServerCursor):
            return _FirstStatementDebugCursor(cursor, self)
        return super().make_debug_cursor(cursor)

    def _poolkit_replace(self, wrapper: Any, error: BaseException) -> None:
        """Swap the connection the server ended for a new one, and ``wrapper``'s driver
        cursor for one on it: Django then sees one statement (one queries-log entry, one
        execute-wrapper call) that succeeded on this wrapper's current connection."""
        logger.warning("database %r: the server ended a pooled connection before its "
                       "checkout's first statement ran (SQLSTATE %s); sending it again on a "
                       "new connection", self.alias, getattr(error, "sqlstate", None))
        self.close()  # broken: invalidated, and the pool's idle connections replaced
        self.ensure_connection()
        self._poolkit_fresh = False
        with self.wrap_database_errors:
            wrapper.cursor = self.create_cursor()

    def _poolkit_let_go_after_fork(self) -> None:
        """In a forked child: forget the parent's connection without touching its socket, so
        Django's next ``ensure_connection()`` checks out of this process's own pool (the stock
        backend would share the parent's server process). Runs from ``os.register_at_fork``."""
        if self._poolkit_fairy is None or self._poolkit_pid == os.getpid():
            return
        self._poolkit_fairy = self._poolkit_pool = None
        self._poolkit_cursor_factory = None
        self._poolkit_server_cursors = weakref.WeakSet()
        self._poolkit_named = False
        # Kept, never closed or collected here: psycopg would warn that an open connection
        # was deleted, and closing would end the parent's session.
        _inherited.append(self.connection)
        self.run_on_commit = []
        if self.in_atomic_block:
            # As close() inside atomic(): the block must fail, not go on elsewhere.
            self.closed_in_transaction = True
            self.needs_rollback = True
        self.connection = None

    def close_if_health_check_failed(self) -> None:
        """Django calls this before each cursor: besides its health check, let go of a
        connection inherited through a fork the at-fork hook did not see (a fork from C)."""
        if self._poolkit_fairy is not None and self._poolkit_pid != os.getpid():
            self._poolkit_let_go_after_fork()
        # Django's own early return (a checkout counts as health-checked: connect()), before
        # the calls its PostgreSQL version makes to get there.
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        super().close_if_health_check_failed()

    def _set_autocommit(self, autocommit: bool) -> None:
        # A pooled connection often already is in the wanted mode; psycopg's setter takes
        # its lock and runs a (no-op) generator even then, on every request.
        if self._poolkit_fairy is not None and self.connection.autocommit == autocommit:
            return
        if self._poolkit_sqlalchemy_transaction():
            return  # SQLAlchemy's transaction owns the mode until it ends (see connect())
        super()._set_autocommit(autocommit)  # type: ignore[misc]

    def _poolkit_sqlalchemy_transaction(self) -> bool:
        """Whether this connection is shared and SQLAlchemy's real transaction is open."""
        fairy = self._poolkit_fairy
        if fairy is None or fairy._counter == 1:
            return False
        share = sharing.current(self._poolkit_pool)
        return share is not None and share.fairy is fairy and share.sqlalchemy_transaction

    def init_connection_state(self) -> None:
        super().init_connection_state()
        if self._poolkit_sqlalchemy_transaction():
            # Joined SQLAlchemy's open transaction: Django must see autocommit off, so
            # atomic() makes savepoints in it and never commits it.
            self.autocommit = False

    @property
    def poolkit_shareable(self) -> bool:
        """Whether SQLAlchemy may use this wrapper's connection now: not while an ORM
        server-side cursor is open on it (a commit on the other side would end it)."""
        cursors = self._poolkit_server_cursors
        return not cursors or all(cursor.closed for cursor in cursors)

    def _configure_timezone(self, connection: Any) -> bool:  # Django >= 5.1
        # Django reads the session's TimeZone through psycopg's decoding helpers on every
        # checkout; the raw bytes libpq keeps (updated by every ParameterStatus the server
        # sends, so a SET TIME ZONE by the last user shows) answer the common case for less.
        # Any difference goes to Django's own code, which decides and sets.
        if self._poolkit_fairy is not None:
            name = self.timezone_name
            if name and connection.pgconn.parameter_status(b"TimeZone") == name.encode():
                return False
        result: bool = super()._configure_timezone(connection)  # type: ignore[misc]
        return result

    def _poolkit_role_is_default(self) -> bool:
        """``SET ROLE`` would change nothing: the role travelled in the startup options (not
        behind PgBouncer, which drops them) and no one has used the session since it was
        opened or fully reset."""
        return (self._poolkit_fairy is not None and self._poolkit_pristine
                and self._poolkit_pgbouncer() is None)

    def _configure_role(self, connection: Any) -> bool:
        # No role asked for (the common case): Django would send nothing either.
        if not self.settings_dict["OPTIONS"].get("assume_role") or \
                self._poolkit_role_is_default():
            return False
        result: bool = super()._configure_role(connection)  # type: ignore[misc]
        return result

    def create_cursor(self, name: str | None = None) -> Any:
        connection = self.connection
        factory = self._poolkit_cursor_factory
        if factory is not None and connection.cursor_factory is not factory:
            # Shared with SQLAlchemy, whose cursor classes are on the connection.
            saved = connection.cursor_factory, connection.server_cursor_factory
            connection.cursor_factory = factory
            connection.server_cursor_factory = psycopg.ServerCursor
            try:
                cursor = super().create_cursor(name)
            finally:
                connection.cursor_factory, connection.server_cursor_factory = saved
        else:
            cursor = super().create_cursor(name)
        if name is not None and self._poolkit_fairy is not None:
            self._poolkit_server_cursors.add(cursor)
            self._poolkit_named = True
        return cursor

    def _close(self) -> None:
        fairy = self._poolkit_fairy
        if fairy is None:
            super()._close()  # type: ignore[misc]
            return
        pool, self._poolkit_fairy, self._poolkit_pool = self._poolkit_pool, None, None
        self._poolkit_cursor_factory = None
        connection = self.connection
        if self._poolkit_pid != os.getpid():
            # Inherited through fork: the socket is the parent's. Closing it would end the
            # parent's session; just let go (psycopg never closes it from another process).
            _inherited.append(connection)
            self.connection = None
            return
        share = pool.poolkit_orm_release(fairy)
        if share is not None:
            # SQLAlchemy still uses it in this thread: it goes back when SQLAlchemy is done.
            self._poolkit_leave_shared(fairy, share, connection)
            if not self.in_atomic_block:
                self.connection = None  # no longer the ORM's: is_usable() is False
            return
        with self.wrap_database_errors:
            # psycopg's ``closed`` and ``broken`` are both this status (read once).
            bad = connection.pgconn.status == _BAD
            if bad and connection.broken:
                # The server went away (killed, restarted, network): the pool's idle
                # connections are most likely gone too, so replace them all, as SQLAlchemy
                # does on a disconnect. Without pre-ping, only this use failed.
                fairy.invalidate()
                current = engine_registry.built(self.alias, "sync")
                if current is not None and current.pool is pool:
                    logger.warning("database %r: connection lost; replacing the pool's idle "
                                   "connections", self.alias)
                    current.dispose()
                return
            if self.in_atomic_block or bad:  # closed
                # Closed mid-transaction (the stock backend closes the socket, so the
                # server rolls back) or closed under us: never hand it out again.
                fairy.invalidate()
                return
            if self._poolkit_named:
                try:
                    self._close_server_cursors()
                except BaseException:
                    fairy.invalidate()
                    raise
            self._poolkit_check_in(fairy, pool)
            # As Django's own pool does: the connection is no longer ours, so is_usable() and
            # any other use must not reach a session another checkout may hold now.
            self.connection = None

    def _poolkit_leave_shared(self, fairy: Any, share: Any, connection: Any) -> None:
        """Let go of a connection SQLAlchemy still holds: close this side's server cursors,
        end the ORM's own transaction when it is closed inside one (the stock backend would
        close the socket, so the server rolls back), and hand the mode back to SQLAlchemy."""
        try:
            with self.wrap_database_errors:
                if self._poolkit_named:
                    self._close_server_cursors()
                if not connection.closed and not connection.broken:
                    if self.in_atomic_block and not share.sqlalchemy_transaction:
                        connection.rollback()  # SQLAlchemy's savepoints in it went too
                        share.stack.clear()
                    if not share.stack and connection.autocommit:
                        connection.autocommit = False  # SQLAlchemy's mode
        finally:
            fairy.close()

    def _close_server_cursors(self) -> None:
        """Close the named cursors this checkout left open (``WITH HOLD`` ones outlive the
        transaction), while the connection is still ours."""
        cursors = [cursor for cursor in self._poolkit_server_cursors if not cursor.closed]
        self._poolkit_server_cursors.clear()
        self._poolkit_named = False
        for cursor in cursors:
            cursor.close()
