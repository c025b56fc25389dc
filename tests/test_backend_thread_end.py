"""A thread that ends without closing its ORM connection gives its pool slot back, without
waiting for Python's cyclic garbage collector (django-treebeard's
``test_add_child_concurrent`` does exactly that: threads that query and exit).

A ``DatabaseWrapper`` sits in reference cycles (its ``ops``, ``features``, ``creation``...
point back at it), so only the cyclic GC frees a dead thread's wrapper; with the GC off,
or simply not run yet, every such thread kept a checkout, and after a pool's worth of them
the next checkout raised ``PoolTimeout``. The budget docs/backend.rst gives ("a sync worker
with T threads holds at most T connections") needs the slot back as the thread ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from django.db import connection, connections, transaction

from django_poolkit import get_engine, pool_stats
from django_poolkit.engines import engine_registry

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 25


@pytest.fixture(autouse=True)
def _no_gc(settings) -> Iterator[None]:
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 0,
                                                  "pool_timeout": 2}}}
    connection.close()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        connection.close()


def _in_threads(body, count: int = THREADS) -> list[BaseException]:
    """``body`` in ``count`` threads one after another (each ends before the next starts),
    none of them closing its connection; the errors they raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as error:  # a figure of the test
            errors.append(error)

    for _ in range(count):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    return errors


def _query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _checked_out() -> int:
    return engine_registry.get("default", "sync").pool.checkedout()


def test_threads_that_end_without_closing_give_their_slots_back():
    errors = _in_threads(_query)
    assert errors == []
    _query()  # the next checkout returns what the dead threads held, then takes its own
    assert _checked_out() == 1
    connection.close()
    assert _checked_out() == 0
    stats = pool_stats()
    assert stats.timeouts == 0
    assert stats.checkouts == stats.checkins == THREADS + 1


def test_a_dead_threads_transaction_is_rolled_back_not_committed(db):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS poolkit_thread_end (n int)")
        cursor.execute("TRUNCATE poolkit_thread_end")

    def left_open() -> None:
        transaction.atomic().__enter__()  # never exited: the thread ends inside atomic()
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO poolkit_thread_end VALUES (1)")

    assert _in_threads(left_open, count=3) == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM poolkit_thread_end")
        assert cursor.fetchone()[0] == 0
        cursor.execute("DROP TABLE poolkit_thread_end")
    connection.close()
    assert _checked_out() == 0


def test_sqlalchemy_checkouts_see_the_slots_come_back_too():
    assert _in_threads(_query) == []
    with get_engine().connect() as sa:  # no ORM checkout in between
        sa.exec_driver_sql("SELECT 1")
    assert _checked_out() == 0


def test_a_connection_shared_across_threads_on_purpose_is_left_alone():
    """``inc_thread_sharing()`` (LiveServerTestCase's way): the thread that used the wrapper
    last may end; its owner still holds the checkout."""
    connection.inc_thread_sharing()
    try:
        _query()

        def use_shared() -> None:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")

        shared = connections["default"]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                connections["default"] = shared
                use_shared()
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=30)
        assert errors == []
        assert connection.connection is not None
        _query()
        assert _checked_out() == 1
    finally:
        connection.close()
        connection.dec_thread_sharing()
