"""One connection per thread: the ORM and SQLAlchemy share it, and ``atomic()`` spans both.

Counted on the server (``pg_stat_activity`` rows of this process's pool) and checked from a
separate connection (what is committed), sync and in async code through ``sync_to_async``.
"""

from __future__ import annotations

import asyncio
import os
import threading

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from django_poolkit import SharingError, get_engine, pool_stats, unshared, write_session
from testproject.demo.models import Note

from .helpers.server import alias_dsn

pytestmark = pytest.mark.django_db(transaction=True)

INSERT = text("INSERT INTO demo_note (title, body, created_at) VALUES (:t, '', now())")
TITLES = text("SELECT title FROM demo_note ORDER BY title")


def _pattern() -> str:
    return f"poolkit:default:%:{os.getpid()}"


def server_count() -> int:
    """This process's pooled connections of ``default`` as the server sees them."""
    with psycopg.connect(alias_dsn(), autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                            "LIKE %s", (_pattern(),)).fetchone()
    assert row is not None
    return int(row[0])


def committed_titles() -> list[str]:
    """What another session sees: committed rows only."""
    with psycopg.connect(alias_dsn(), autocommit=True) as other:
        return [row[0] for row in other.execute("SELECT title FROM demo_note ORDER BY title")]


def sa_pid(sa) -> int:
    return int(sa.execute(text("SELECT pg_backend_pid()")).scalar())


def orm_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.fixture(autouse=True)
def _small_pool(settings):
    """One connection, no overflow, a short timeout: a second checkout would fail fast."""
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "max_overflow": 0,
                                                  "pool_timeout": 1}}}
    connection.close()
    yield
    connection.close()


# --- One server connection ---------------------------------------------------------------------


def both_view(request: HttpRequest) -> JsonResponse:
    """A request using the ORM and get_engine() (and a write session) together."""
    Note.objects.create(title="orm")
    with get_engine().connect() as sa:
        sa.execute(INSERT, {"t": "engine"})
        sa.commit()
        seen = sa.execute(text("SELECT count(*) FROM demo_note")).scalar()
        pids = {sa_pid(sa), orm_pid()}
        on_server = sa.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :p"),
            {"p": _pattern()}).scalar()
    with write_session() as session:
        session.execute(INSERT, {"t": "session"})
    return JsonResponse({"seen": seen, "pids": len(pids), "on_server": on_server,
                         "orm_count": Note.objects.count()})


async def async_view(request: HttpRequest) -> JsonResponse:
    """An async view whose database work runs in sync_to_async."""

    def work() -> dict[str, int]:
        try:
            with transaction.atomic():
                Note.objects.create(title="async-orm")
                with get_engine().begin() as sa:
                    seen = sa.execute(text("SELECT count(*) FROM demo_note")).scalar()
                    sa.execute(INSERT, {"t": "async-engine"})
                    pids = {sa_pid(sa), orm_pid()}
            return {"seen": seen, "pids": len(pids),
                    "checked_out": pool_stats().pool_checked_out}
        finally:
            connection.close()  # the test client skips close_old_connections

    return JsonResponse(await sync_to_async(work)())


urlpatterns = [path("both/", both_view), path("async/", async_view)]


@pytest.mark.urls(__name__)
def test_a_request_using_orm_and_engine_holds_one_server_connection():
    # pool_size=1, max_overflow=0: before sharing this request blocked itself (PoolTimeout).
    answer = Client().get("/both/").json()
    assert answer == {"seen": 2, "pids": 1, "on_server": 1, "orm_count": 3}
    assert server_count() == 1
    stats = pool_stats()
    # The test client keeps the ORM connection (it skips close_old_connections).
    assert (stats.connections_opened, stats.timeouts, stats.pool_checked_out) == (1, 0, 1)
    assert committed_titles() == ["engine", "orm", "session"]


@pytest.mark.urls(__name__)
def test_an_async_view_through_sync_to_async_holds_one_connection():
    answer = asyncio.run(AsyncClient().get("/async/")).json()
    assert answer == {"seen": 1, "pids": 1, "checked_out": 1}
    assert committed_titles() == ["async-engine", "async-orm"]
    assert pool_stats().timeouts == 0


def test_threads_each_hold_one_connection(settings):
    threads = 4
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": threads, "max_overflow": 0,
                                                  "pool_timeout": 3}}}
    errors: list[BaseException] = []
    peak = 0
    barrier = threading.Barrier(threads)

    def request(number: int) -> None:
        nonlocal peak
        try:
            for round_ in range(5):
                Note.objects.create(title=f"t{number}-{round_}")
                with get_engine().connect() as sa:
                    assert sa_pid(sa) == orm_pid()
                    sa.execute(text("SELECT pg_sleep(0.01)"))
                    barrier.wait(timeout=10) if round_ == 0 else None
                    peak = max(peak, server_count())
                connection.close()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=request, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert peak <= threads
    stats = pool_stats()
    assert stats.timeouts == 0
    assert stats.connections_opened <= threads
    assert Note.objects.count() == threads * 5


def test_never_shared_across_threads():
    pid = orm_pid()
    found: list[int] = []

    def other_thread() -> None:
        with unshared(), get_engine().connect() as sa:
            found.append(sa_pid(sa))

    # The pool has one connection and this thread's ORM holds it: another thread waits.
    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join(timeout=0.3)
    assert worker.is_alive()  # waiting for the pool, not borrowing this thread's session
    connection.close()
    worker.join(timeout=10)
    assert found == [pid]  # it got the connection only once it went back


def test_sqlalchemy_first_then_the_orm_reuses_it_and_it_goes_back_last():
    with get_engine().connect() as sa:
        pid = sa_pid(sa)
        assert orm_pid() == pid
        assert pool_stats().pool_checked_out == 1
        connection.close()  # the ORM is done; SQLAlchemy still uses it
        assert pool_stats().pool_checked_out == 1
        assert sa_pid(sa) == pid
    assert pool_stats().pool_checked_out == 0
    assert pool_stats().checkouts == 1


def test_orm_first_then_sqlalchemy_and_the_orm_closes_last():
    pid = orm_pid()
    with get_engine().connect() as sa:
        assert sa_pid(sa) == pid
    assert pool_stats().pool_checked_out == 1
    assert orm_pid() == pid
    connection.close()
    assert pool_stats().pool_checked_out == 0


# --- Transactions ------------------------------------------------------------------------------


def test_inside_atomic_sqlalchemy_sees_and_rolls_back_with_the_orm():
    def request() -> None:
        with transaction.atomic():
            Note.objects.create(title="orm")
            with get_engine().begin() as sa:
                assert sa.execute(TITLES).scalars().all() == ["orm"]  # uncommitted, visible
                sa.execute(INSERT, {"t": "engine"})
            # SQLAlchemy's commit released its savepoint; nothing is committed yet.
            assert committed_titles() == []
            assert sorted(Note.objects.values_list("title", flat=True)) == ["engine", "orm"]
            raise RuntimeError

    with pytest.raises(RuntimeError):
        request()
    assert committed_titles() == []
    assert connection.get_autocommit() is True


def test_inside_atomic_both_commit_with_the_orm():
    with transaction.atomic():
        Note.objects.create(title="orm")
        with get_engine().connect() as sa:
            sa.execute(INSERT, {"t": "engine"})
            sa.commit()
            sa.execute(INSERT, {"t": "uncommitted by sqlalchemy"})
            # closed without commit: SQLAlchemy's rollback undoes its own work only
        assert committed_titles() == []
    assert committed_titles() == ["engine", "orm"]


def failing_sqlalchemy_transaction() -> None:
    with get_engine().begin() as sa:
        sa.execute(INSERT, {"t": "lost"})
        sa.execute(text("SELECT 1/0"))


def test_inside_atomic_a_sqlalchemy_error_rolls_back_its_savepoint_only():
    with transaction.atomic():
        Note.objects.create(title="orm")
        with pytest.raises(DBAPIError):
            failing_sqlalchemy_transaction()
        # The ORM's transaction is healthy: its next statements run.
        Note.objects.create(title="orm after")
        with write_session() as session:
            session.execute(INSERT, {"t": "session"})
    assert committed_titles() == ["orm", "orm after", "session"]


def test_inside_atomic_an_orm_error_in_a_nested_atomic_leaves_sqlalchemy_work():
    first = Note.objects.create(title="first")
    with transaction.atomic():
        with get_engine().begin() as sa:
            sa.execute(INSERT, {"t": "engine"})
        with pytest.raises(IntegrityError), transaction.atomic():
            Note.objects.create(id=first.id, title="duplicate")
        with get_engine().begin() as sa:
            assert sa.execute(TITLES).scalars().all() == ["engine", "first"]
    assert committed_titles() == ["engine", "first"]


def test_sqlalchemy_savepoints_inside_atomic():
    with transaction.atomic():
        Note.objects.create(title="orm")
        with get_engine().begin() as sa:
            nested = sa.begin_nested()
            sa.execute(INSERT, {"t": "nested, rolled back"})
            nested.rollback()
            with sa.begin_nested():
                sa.execute(INSERT, {"t": "nested"})
        # Django 6.1 renamed savepoint() to savepoint_create() (the old name warns).
        sid = getattr(transaction, "savepoint_create", transaction.savepoint)()
        with get_engine().begin() as sa:
            sa.execute(INSERT, {"t": "after orm savepoint"})
        transaction.savepoint_rollback(sid)
    assert committed_titles() == ["nested", "orm"]


def doomed_atomic_block() -> None:
    with transaction.atomic():
        Note.objects.create(title="orm atomic, rolled back")
        raise RuntimeError


def test_a_sqlalchemy_transaction_outside_atomic_is_real_and_the_orm_joins_it():
    with get_engine().connect() as sa:
        sa.execute(INSERT, {"t": "engine"})
        # The ORM joins SQLAlchemy's transaction: autocommit off, its rows in it.
        assert connection.get_autocommit() is False
        Note.objects.create(title="orm in sqlalchemy's transaction")
        with transaction.atomic():  # a savepoint, never a commit
            Note.objects.create(title="orm atomic")
        with pytest.raises(RuntimeError):
            doomed_atomic_block()
        assert committed_titles() == []
        sa.rollback()
    assert connection.get_autocommit() is True
    assert committed_titles() == []
    with get_engine().begin() as sa:
        Note.objects.create(title="orm")
        sa.execute(INSERT, {"t": "engine"})
    assert committed_titles() == ["engine", "orm"]
    Note.objects.create(title="autocommit again")
    assert "autocommit again" in committed_titles()


def test_an_orm_error_in_sqlalchemy_transaction_is_sqlalchemy_s_to_roll_back():
    first = Note.objects.create(title="first")
    with get_engine().connect() as sa:
        sa.execute(INSERT, {"t": "engine"})
        with pytest.raises(IntegrityError):
            Note.objects.create(id=first.id, title="duplicate")
        sa.rollback()
        assert sa.execute(TITLES).scalars().all() == ["first"]
    assert committed_titles() == ["first"]


def test_autocommit_outside_both_and_sqlalchemy_keeps_its_own_semantics():
    Note.objects.create(title="orm")
    assert committed_titles() == ["orm"]  # autocommit
    with get_engine().connect() as sa:
        sa.execute(INSERT, {"t": "never committed"})
    assert committed_titles() == ["orm"]
    assert connection.get_autocommit() is True


def commit_inside(sa) -> None:
    with transaction.atomic():
        Note.objects.create(title="in atomic")
        sa.commit()


def test_commit_inside_an_atomic_block_entered_in_sqlalchemy_transaction_is_refused():
    with get_engine().connect() as sa:
        sa.execute(INSERT, {"t": "engine"})
        with pytest.raises(transaction.TransactionManagementError):
            commit_inside(sa)  # would commit half of the atomic block: both rolled back
        sa.rollback()  # SQLAlchemy wants it acknowledged
        Note.objects.create(title="orm, autocommit")
        sa.execute(INSERT, {"t": "engine again"})
        sa.commit()
    assert committed_titles() == ["engine again", "orm, autocommit"]
    assert connection.get_autocommit() is True


# --- Where sharing is refused -------------------------------------------------------------------


def test_another_isolation_level_gets_a_connection_of_its_own(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 0}}}
    pid = orm_pid()
    serializable = get_engine().execution_options(isolation_level="SERIALIZABLE")
    with serializable.connect() as sa:
        assert sa_pid(sa) != pid
        assert sa.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
        assert pool_stats().pool_checked_out == 2
    with get_engine().connect() as sa:
        assert sa_pid(sa) == pid
        sa.execute(text("SELECT 1"))
        with pytest.raises(SharingError, match="isolation_level"):
            sa.execution_options(isolation_level="REPEATABLE READ")
    assert pool_stats().pool_checked_out == 1
    with connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone()[0] == "read committed"
    connection.close()
    assert pool_stats().pool_checked_out == 0


def test_an_open_orm_server_side_cursor_makes_sqlalchemy_check_out_its_own(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 0}}}
    Note.objects.bulk_create(Note(title=f"n{i}") for i in range(3))
    pid = orm_pid()
    rows = Note.objects.iterator(chunk_size=1)
    next(rows)
    with get_engine().connect() as sa:
        assert sa_pid(sa) != pid
    assert len(list(rows)) == 2
    with get_engine().connect() as sa:
        assert sa_pid(sa) == pid  # the cursor is done: shared again


def test_nothing_is_shared_inside_a_running_event_loop(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 0}}}

    async def two_tasks() -> set[int]:
        # Tasks of one loop share its thread: each sync checkout stays its own.
        with get_engine().connect() as first, get_engine().connect() as second:
            return {sa_pid(first), sa_pid(second)}

    assert len(asyncio.run(two_tasks())) == 2


def test_the_async_engine_has_its_own_connections():
    from django_poolkit import get_async_engine

    pid = orm_pid()

    async def read() -> int:
        engine = get_async_engine()
        async with engine.connect() as sa:
            found = int((await sa.execute(text("SELECT pg_backend_pid()"))).scalar())
        await engine.dispose()
        return found

    assert asyncio.run(read()) != pid


def test_the_orm_closed_inside_atomic_rolls_back_its_work_and_sqlalchemy_keeps_going():
    with get_engine().connect() as sa:
        with transaction.atomic():
            Note.objects.create(title="lost")
            connection.close()  # the stock backend closes the socket: the server rolls back
        assert pool_stats().pool_checked_out == 1  # SQLAlchemy still holds it
        assert sa.execute(TITLES).scalars().all() == []
        sa.execute(INSERT, {"t": "engine"})
        sa.commit()
    assert pool_stats().pool_checked_out == 0
    assert committed_titles() == ["engine"]
