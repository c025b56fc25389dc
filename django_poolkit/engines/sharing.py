"""One connection per thread: the ORM and ``get_engine()`` share the DB-API connection.

A request that uses the ORM and SQLAlchemy would otherwise hold two connections of the same
pool at once, so a worker with *T* threads could need *2T*, and a pool sized for *T* could
block itself. Instead, per pool and per thread, a :class:`Share` remembers the checkout the
thread holds; the other side checks the *same* fairy out again (SQLAlchemy's reentrant
``_ConnectionFairy._checkout(pool, fairy=...)``, which counts), so the connection goes back to
the pool only when both sides closed it.

- The ORM backend registers its checkout (``attach_orm``) and drops it at close; a SQLAlchemy
  checkout in that thread reuses it.
- A SQLAlchemy checkout made while the ORM holds none is registered too; the ORM's next
  connect in that thread reuses it.
- Never across threads (a thread-local per pool), never inside a running event loop (tasks
  of one loop share its thread: nothing is registered there), never with the async engine
  (its own pool).

Transactions compose through the dialect's ``do_begin``/``do_commit``/``do_rollback``, hooked
per engine (:func:`install_sharing`); on a connection that is not shared they do exactly what
SQLAlchemy does:

- the ORM is in a transaction (``atomic()``, or autocommit off): SQLAlchemy's transaction is a
  savepoint inside it: its commit releases the savepoint, its rollback rolls back to it, and
  the ORM's transaction decides the outcome;
- otherwise SQLAlchemy's transaction is real (autocommit off until it ends), and the ORM
  joins it: Django sees autocommit off, so ``atomic()`` inside it makes savepoints, and ORM
  statements run in it; when it ends the ORM is back in autocommit.

A SQLAlchemy ``Connection`` that sets an isolation level, read-only or deferrable mode
(``execution_options``) would change the ORM's session too: it gets a connection of its own
instead (once its transaction began, that raises :class:`SharingError`). ``unshared()``
makes every SQLAlchemy checkout in a block its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..exceptions import SharingError

__all__ = ["PerThread", "Share", "install_sharing", "unshared"]

_get_ident = threading.get_ident
_running_loop = asyncio._get_running_loop


class Share:
    """The checkout one thread holds of one pool, and who uses it.

    ``orm``: the Django ``DatabaseWrapper`` using it, or None. ``stack``: the SQLAlchemy
    transactions open on it, innermost last: None for a real transaction, a savepoint name
    for one nested in the ORM's (or in an outer SQLAlchemy) transaction.
    """

    __slots__ = ("fairy", "orm", "stack", "thread")

    def __init__(self, fairy: Any, orm: Any = None) -> None:
        self.fairy = fairy
        self.orm = orm
        self.thread = _get_ident()
        self.stack: list[str | None] = []

    def __repr__(self) -> str:
        return (f"<Share thread={self.thread} orm={self.orm is not None} "
                f"transactions={self.stack!r}>")

    @property
    def live(self) -> bool:
        """Still checked out (a fairy that went back to the pool has no record)."""
        fairy = self.fairy
        return fairy._connection_record is not None and fairy.dbapi_connection is not None

    @property
    def sqlalchemy_transaction(self) -> bool:
        """A real transaction begun by SQLAlchemy is open (the ORM joins it)."""
        return bool(self.stack) and self.stack[0] is None


class PerThread(threading.local):
    """A pool's per-thread slot. Class defaults make a thread that never set them read None
    and 0 without the cost of a missing attribute (an exception inside ``getattr``)."""

    share: Share | None = None
    depth: int = 0


def current(pool: Any) -> Share | None:
    """This thread's live share of ``pool``, or None."""
    local: PerThread | None = pool.poolkit_local
    if local is None:
        return None
    share = local.share
    if share is None:
        return None
    if share.thread != _get_ident() or not share.live:
        local.share = None
        return None
    return share


def can_register() -> bool:
    """Whether a checkout made now may be shared: not in a thread running an event loop,
    whose tasks would otherwise share it."""
    return _running_loop() is None


def _share_of(fairy: Any) -> Share | None:
    """The share whose checkout is ``fairy``, when it is this thread's."""
    # SQLAlchemy's first-connect initialisation passes an ad-hoc proxy without a pool.
    local: PerThread | None = getattr(getattr(fairy, "_pool", None), "poolkit_local", None)
    if local is None:
        return None
    share = local.share
    if share is not None and share.fairy is fairy:
        return share
    return None


def _orm_in_transaction(orm: Any) -> bool:
    return bool(orm.in_atomic_block or not orm.autocommit)


def restore_orm_mode(share: Share, driver: Any) -> None:
    """After SQLAlchemy's real transaction: the ORM is back in its own autocommit mode.

    An ``atomic()`` block entered inside that transaction and still open lost its work:
    it is marked for rollback (its queries raise until it ends), and with autocommit back on
    its exit touches no savepoint (Django skips savepoints in autocommit)."""
    orm = share.orm
    if orm is None:
        return
    if orm.in_atomic_block:
        orm.needs_rollback = True
    wanted = bool(orm.settings_dict["AUTOCOMMIT"])
    orm.autocommit = wanted
    if driver.autocommit != wanted:
        driver.autocommit = wanted


def install_sharing(engine: Any) -> None:
    """Hook ``engine``'s dialect so SQLAlchemy's transactions compose with the ORM's on a
    shared connection (see the module docstring). Per engine: each has its own dialect."""
    from django.db import transaction

    dialect = engine.dialect
    default_commit = dialect.do_commit
    default_rollback = dialect.do_rollback
    default_begin = dialect.do_begin

    def do_begin(fairy: Any) -> None:
        share = _share_of(fairy)
        if share is None:
            default_begin(fairy)
            return
        driver = fairy.dbapi_connection
        orm = share.orm
        if share.stack or (orm is not None and _orm_in_transaction(orm)):
            if orm is not None and not share.stack:
                orm.validate_no_broken_transaction()
            name = f"poolkit_sa_{len(share.stack)}"
            driver.execute(f"SAVEPOINT {name}")
            share.stack.append(name)
            return
        if driver.autocommit:
            driver.autocommit = False
        if orm is not None:
            orm.autocommit = False
        share.stack.append(None)

    def do_commit(fairy: Any) -> None:
        share = _share_of(fairy)
        if share is None or not share.stack:
            default_commit(fairy)
            return
        driver = fairy.dbapi_connection
        name = share.stack[-1]
        if name is not None:
            driver.execute(f"RELEASE SAVEPOINT {name}")
            share.stack.pop()
            return
        share.stack.pop()
        orm = share.orm
        if orm is not None and orm.in_atomic_block:
            # Committing would commit half of that block: SQLAlchemy deactivates its
            # transaction when its commit fails, so end it here, rolled back.
            default_rollback(fairy)
            restore_orm_mode(share, driver)
            raise transaction.TransactionManagementError(
                "SQLAlchemy cannot commit its transaction while an atomic() block entered "
                "inside it is open on the same connection: both were rolled back; leave the "
                "atomic() block before committing")
        default_commit(fairy)  # the dialect's (bounded by client_timeout's deadline)
        restore_orm_mode(share, driver)

    def do_rollback(fairy: Any) -> None:
        share = _share_of(fairy)
        if share is None or not share.stack:
            default_rollback(fairy)
            return
        driver = fairy.dbapi_connection
        name = share.stack.pop()
        if name is not None:
            if not driver.closed and not driver.broken:
                driver.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            return
        default_rollback(fairy)
        restore_orm_mode(share, driver)

    default_characteristics = dialect._set_connection_characteristics

    def set_connection_characteristics(connection: Any, characteristics: Any) -> None:
        # isolation_level, postgresql_readonly, postgresql_deferrable: engine-wide (applied
        # right after the checkout) or per Connection. On the connection the ORM shares they
        # would change the ORM's session too, so this Connection gets one of its own.
        fairy = connection._dbapi_connection
        share = _share_of(fairy) if fairy is not None else None
        if share is not None:
            if share.orm is None:
                # SQLAlchemy's own checkout: the ORM must not join a changed session.
                fairy._pool.poolkit_local.share = None
            elif connection.in_transaction():
                raise SharingError(
                    f"cannot set {', '.join(sorted(characteristics))} on a connection the ORM "
                    "shares once its transaction began; set it before the first statement, "
                    "or use a separate connection (django_poolkit.unshared())")
            else:
                with unshared():
                    separate = fairy._pool.connect()
                connection._dbapi_connection = separate
                fairy.close()
        default_characteristics(connection, characteristics)

    dialect.do_begin = do_begin
    dialect.do_commit = do_commit
    dialect.do_rollback = do_rollback
    dialect._set_connection_characteristics = set_connection_characteristics


_unshared = PerThread()


def sharing_disabled() -> bool:
    """Whether :func:`unshared` is active in this thread."""
    return _unshared.depth > 0


@contextmanager
def unshared() -> Iterator[None]:
    """SQLAlchemy checkouts in this block get a connection of their own (counted in the
    pool like any other): for another isolation level, read-only mode, or a connection that
    must not see the ORM's transaction."""
    _unshared.depth += 1
    try:
        yield
    finally:
        _unshared.depth -= 1
