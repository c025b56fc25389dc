"""The private library API poolkit relies on, pinned to the releases it was checked against.

psycopg and SQLAlchemy document no hook for some of what poolkit does: a deadline on every
wait for the server (``client_timeout`` and the bounds on the pool's own round trips), the
bounded rollback and ping of SQLAlchemy's dialect, the checkin's accounting without an event
dispatch, the spread of ``pool_recycle``. Each use is checked here by name and signature, and
the first test fails on a release series nobody has checked yet, so an upgrade can never
silently turn a deadline off: re-read the library's source for the points below, then add
the series to ``CHECKED``. (The checkin reset itself uses SQLAlchemy's documented pool
``reset`` event.)
"""

from __future__ import annotations

import inspect
import time

import psycopg
import sqlalchemy
from psycopg import errors, generators
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from django_poolkit.engines import deadline

#: Release series (major.minor) whose sources were read for the uses below. psycopg 3.2 was
#: read for Cursor._check_results and generators.notifies only: its wait loop takes no
#: deadline, so deadline.py installs nothing there (and refuses client_timeout). Each series
#: here is also the upper bound of its range in pyproject.toml (psycopg<3.4, SQLAlchemy<2.2).
CHECKED = {"psycopg": ("3.2", "3.3"), "sqlalchemy": ("2.0", "2.1")}
#: The first psycopg series whose Connection.wait takes a deadline (engines/deadline.py).
DEADLINE_SINCE = (3, 3)


def _series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_the_installed_releases_are_the_checked_ones() -> None:
    assert _series(psycopg.__version__) in CHECKED["psycopg"], (
        f"psycopg {psycopg.__version__} is not a checked release: re-check "
        "Connection.wait(gen, interval, timeout) and errors._WaitTimeout "
        "(django_poolkit/engines/deadline.py) and Cursor._check_results "
        "(django_poolkit/engines/resend.py), then add it to CHECKED")
    assert _series(sqlalchemy.__version__) in CHECKED["sqlalchemy"], (
        f"SQLAlchemy {sqlalchemy.__version__} is not a checked release: re-check the uses "
        "below (engines/deadline.py, hygiene.py, pool.py, recycle.py), then add it to CHECKED")


def test_psycopg_waits_take_a_deadline_and_raise_the_private_timeout() -> None:
    # engines/deadline.py: PoolkitConnection.wait passes its limit as the deadline and
    # catches errors._WaitTimeout; notifies() waits are recognised by their code object.
    # Before 3.3 there is no deadline: supported() says so, and the deadline tests skip.
    assert inspect.isfunction(generators.notifies)
    series = tuple(int(part) for part in _series(psycopg.__version__).split("."))
    assert deadline.supported() == (series >= DEADLINE_SINCE)
    if series < DEADLINE_SINCE:
        assert not hasattr(errors, "_WaitTimeout")
        return
    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        assert list(inspect.signature(cls.wait).parameters)[:4] == [
            "self", "gen", "interval", "timeout"]
    assert issubclass(errors._WaitTimeout, psycopg.OperationalError)


def test_sqlalchemy_dialect_methods_wrapped_per_engine() -> None:
    # engines/deadline.py replaces connect and do_rollback (and an async engine's do_ping),
    # engines/hygiene.py do_ping, on each engine's own dialect instance.
    assert list(inspect.signature(DefaultDialect.connect).parameters) == [
        "self", "cargs", "cparams"]
    for name in ("do_rollback", "do_ping"):
        assert list(inspect.signature(getattr(DefaultDialect, name)).parameters) == [
            "self", "dbapi_connection"]


def test_sqlalchemy_pool_internals_poolkit_extends() -> None:
    # engines/pool.py: the checkin's accounting in _do_return_conn, carried over by
    # recreate(); SQLAlchemy's logger namespace kept for the pool's own messages;
    # engines/recycle.py reads the pool's _recycle.
    for cls in (QueuePool, AsyncAdaptedQueuePool):
        assert list(inspect.signature(cls._do_return_conn).parameters) == ["self", "record"]
        assert callable(cls.recreate)
    pool = QueuePool(lambda: None, recycle=7)
    assert pool._recycle == 7
    assert "_sqla_logger_namespace" in inspect.getsource(sqlalchemy.log)


def test_sqlalchemy_queue_internals_the_short_path_uses() -> None:
    # engines/pool.py: PoolkitQueuePool sets QueuePool._queue_class to a Queue subclass whose
    # get/put take Queue.mutex, read Queue.queue/use_lifo/maxsize and notify not_empty or
    # not_full only when the Condition's _waiters deque is not empty.
    import threading

    from sqlalchemy.util.queue import Queue

    from django_poolkit.engines.pool import PoolkitQueuePool, _FastQueue

    assert "_queue_class" in inspect.getsource(QueuePool.__init__)
    pool = PoolkitQueuePool(lambda: None, pool_size=2)
    assert isinstance(pool._pool, _FastQueue)
    queue: Queue[int] = _FastQueue(2, use_lifo=True)
    assert isinstance(queue.mutex, type(threading.RLock()))
    assert queue.not_empty._lock is queue.mutex  # type: ignore[attr-defined]
    assert not queue.not_empty._waiters  # type: ignore[attr-defined]
    queue.put(1)
    queue.put(2)
    assert list(queue.queue) == [1, 2]
    assert queue.maxsize == 2
    assert queue.get() == 2  # LIFO, as SQLAlchemy's own queue with use_lifo
    assert QueuePool(lambda: None, pool_size=2)._pool.use_lifo is False
    # A thread waiting on the empty queue (SQLAlchemy's path) is woken by the short put.
    assert queue.get() == 1
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get(timeout=30)))
    waiter.start()
    deadline = time.monotonic() + 30
    while not queue.not_empty._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    queue.put(3)
    waiter.join(30)
    assert got == [3]


def test_psycopg_cursor_result_check_poolkit_observes() -> None:
    # engines/resend.py: answer_tracking() overrides Cursor._check_results(results) to note
    # whether the server's first answer to a statement was an error (proof it never ran).
    for cls in (psycopg.Cursor, psycopg.AsyncCursor, psycopg.ClientCursor):
        assert list(inspect.signature(cls._check_results).parameters) == ["self", "results"]
