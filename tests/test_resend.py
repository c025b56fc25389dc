"""The first statement of a checkout is resent when the server ended the connection before
running it, and only then (``django_poolkit.engines.resend``; the rule: docs/resend.rst).

Pre-ping is switched off in most tests so the dead connection reaches the statement every
time, deterministically: the statement then meets the server's ``57P01`` as its first answer,
which is exactly what the race between the pre-ping and the termination produces."""

from __future__ import annotations

import asyncio
import tempfile
import threading

import pytest
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext
from sqlalchemy import exc, text

from django_poolkit import get_async_engine, get_engine, pool_stats

from .helpers.backend import terminate

pytestmark = pytest.mark.django_db(transaction=True)

POOL = 4


@pytest.fixture(autouse=True)
def _closed():
    connection.close()
    yield
    connection.close()


def _pooled(settings, **knobs) -> None:
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": POOL, **knobs}}}


def _fill_and_kill(admin) -> list[int]:
    """POOL idle connections in the pool, every one of them then ended by the server."""
    held = [get_engine().connect() for _ in range(POOL)]
    pids = [sa.execute(text("SELECT pg_backend_pid()")).scalar() for sa in held]
    for sa in held:
        sa.close()
    terminate(admin, pids)
    return pids


def _orm_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_orm_first_statement_is_resent_and_django_sees_one_statement(settings, admin):
    _pooled(settings, pool_pre_ping=False)
    killed = _fill_and_kill(admin)
    with CaptureQueriesContext(connection) as queries:
        pid = _orm_pid()
    assert pid not in killed
    # One statement as Django sees it: one log entry, on the wrapper's current connection.
    assert [q["sql"] for q in queries.captured_queries] == ["SELECT pg_backend_pid()"]
    assert connection.connection is not None
    assert not connection.connection.broken
    assert connection.errors_occurred is False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == pid
    connection.close()
    # The pool's other dead connections were replaced with it: later requests pass too.
    for _ in range(POOL * 2):
        assert _orm_pid() not in killed
        connection.close()
    assert pool_stats().invalidations >= 1


def test_orm_write_is_resent_once_and_lands_once(settings, admin):
    _pooled(settings, pool_pre_ping=False)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS poolkit_resend_probe (n int)")
        cursor.execute("TRUNCATE poolkit_resend_probe")
    connection.close()
    _fill_and_kill(admin)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO poolkit_resend_probe VALUES (1)")
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM poolkit_resend_probe")
        count = cursor.fetchone()[0]
        cursor.execute("DROP TABLE poolkit_resend_probe")
    assert count == 1


def test_orm_first_statement_in_a_transaction_surfaces(settings, admin):
    _pooled(settings, pool_pre_ping=False)
    _fill_and_kill(admin)
    with pytest.raises(OperationalError), transaction.atomic():
        _orm_pid()


def test_orm_statement_after_a_successful_one_surfaces(settings, admin):
    _pooled(settings)
    pid = _orm_pid()
    terminate(admin, [pid])
    with pytest.raises(OperationalError):
        _orm_pid()


def test_orm_error_after_a_result_surfaces(settings, admin):
    """The server answered a result before ending the session: the statement ran (it could
    have committed), so it is never sent again."""
    _pooled(settings)
    _orm_pid()
    connection.close()  # the next checkout is fresh and its connection is hot
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    killer = threading.Timer(0.5, terminate, (admin, [pid]))
    killer.start()
    try:
        with pytest.raises(OperationalError), connection.cursor() as cursor:
            # Simple protocol (Django's client-side binding): two results, the first a row.
            cursor.execute("SELECT 1; SELECT pg_sleep(30)")
    finally:
        killer.join()


def test_sqlalchemy_sync_first_statement_is_resent(settings, admin):
    _pooled(settings, pool_pre_ping=False)
    killed = _fill_and_kill(admin)
    with get_engine().connect() as sa:
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() not in killed
        sa.commit()
    for _ in range(POOL * 2):
        with get_engine().connect() as sa:
            assert sa.execute(text("SELECT pg_backend_pid()")).scalar() not in killed


def test_sqlalchemy_sync_second_statement_surfaces(settings, admin):
    _pooled(settings)
    with get_engine().connect() as sa:
        pid = sa.execute(text("SELECT pg_backend_pid()")).scalar()
        terminate(admin, [pid])
        with pytest.raises(exc.OperationalError):
            sa.execute(text("SELECT 1"))


def test_sqlalchemy_async_first_statement_is_resent(settings, admin):
    _pooled(settings, pool_pre_ping=False)

    async def scenario() -> None:
        engine = get_async_engine()
        held = [await engine.connect() for _ in range(POOL)]
        pids = [(await sa.execute(text("SELECT pg_backend_pid()"))).scalar() for sa in held]
        for sa in held:
            await sa.close()
        await asyncio.to_thread(terminate, admin, pids)
        for _ in range(POOL + 2):
            async with engine.connect() as sa:
                assert (await sa.execute(text("SELECT pg_backend_pid()"))).scalar() not in pids
        await engine.dispose()

    asyncio.run(scenario())


def test_hot_checkout_sends_only_the_request_statement(settings):
    """No round trip is added to a checkout of a connection used moments ago: libpq's trace
    of the pooled connection shows the request's one Query message and nothing else (no
    ping, no BEGIN, no reset)."""
    _pooled(settings, pool_size=1)
    _orm_pid()
    connection.close()
    fairy = get_engine().raw_connection()
    pgconn = fairy.driver_connection.pgconn
    with tempfile.NamedTemporaryFile("w+", suffix=".trace") as trace:
        pgconn.trace(trace.fileno())
        fairy.close()
        for _ in range(3):
            _orm_pid()
            connection.close()
        pgconn.untrace()
        with open(trace.name, encoding="utf-8", errors="replace") as stream:
            sent = [line.split("\t")[3] for line in stream
                    if line.count("\t") >= 3 and line.split("\t")[1] == "F"]
    assert sent == ["Query"] * 3, sent
