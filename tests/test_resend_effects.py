"""A statement that may have had an effect is never sent twice (docs/resend.rst).

Each test kills the server process behind a checkout's first statement while the statement
runs, at a moment chosen from what the server shows (a committed row, the statement's
runtime), and counts what ran against what the client saw: an error, or success with
exactly one effect. On the rule before this one (resend whenever ``57P01`` was the first
answer), every one of these ran its write twice, or silently undid an operator's kill."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connection
from sqlalchemy import exc, text

from django_poolkit import get_async_engine, get_engine
from django_poolkit.engines.resend import RESEND_WINDOW_S, resendable_statement

from .helpers.backend import terminate
from .helpers.server import alias_dsn

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = "poolkit_resend_effects"
# A procedure and a DO block that commit a row, then keep running: killed after the commit,
# the statement fails with 57P01 as its first answer, and its row stays.
PROCEDURE = f"""
CREATE OR REPLACE PROCEDURE poolkit_commit_then_sleep() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {TABLE} VALUES (1);
    COMMIT;
    PERFORM pg_sleep(30);
END $$"""
DO_BLOCK = (f"DO $$ BEGIN INSERT INTO {TABLE} VALUES (1); COMMIT; PERFORM pg_sleep(30); "
            "END $$")


@pytest.fixture
def db_dsn() -> str:
    """The test database's DSN (the table and the procedure live there)."""
    return alias_dsn()


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database outside every pool."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _table(db: Any, settings: Any) -> Iterator[None]:
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2}}}
    connection.close()
    db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (n int)")
    db.execute(f"TRUNCATE {TABLE}")
    db.execute(PROCEDURE)
    yield
    connection.close()
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute("DROP PROCEDURE IF EXISTS poolkit_commit_then_sleep()")


def _rows(admin: Any) -> int:
    return int(admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def _value(admin: Any) -> int:
    return int(admin.execute(f"SELECT coalesce(sum(n), 0) FROM {TABLE}").fetchone()[0])


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill_when(admin_dsn: str, pid: int, condition: str) -> threading.Thread:
    """A thread that terminates ``pid`` once ``condition`` (SQL, true/false) holds for it.

    Its own connection: the test's ``admin`` is used by the main thread meanwhile."""

    def run() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as killer:
            def ready() -> bool:
                row = killer.execute(condition, {"pid": pid}).fetchone()
                return bool(row and row[0])

            _wait_for(ready, condition)
            terminate(killer, [pid])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _after_commit(admin_dsn: str, pid: int, rows: int = 1) -> threading.Thread:
    return _kill_when(admin_dsn, pid, f"SELECT count(*) >= {rows} FROM {TABLE}")


def _running_for(admin_dsn: str, pid: int, seconds: float) -> threading.Thread:
    assert seconds > RESEND_WINDOW_S * 4
    return _kill_when(admin_dsn, pid, "SELECT state = 'active' AND now() - query_start > "
                      f"interval '{seconds} s' FROM pg_stat_activity WHERE pid = %(pid)s")


def _orm_fresh_pid() -> int:
    """Check out a connection for the ORM without sending anything (its next statement is the
    checkout's first) and return its server process."""
    connection.close()
    connection.ensure_connection()
    return int(connection.connection.info.backend_pid)


def _orm(statement: str, params: Any = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


# The ORM, autocommit outside atomic().

@pytest.mark.parametrize("statement", ["CALL poolkit_commit_then_sleep()", DO_BLOCK],
                         ids=["call", "do"])
def test_orm_statement_that_commits_inside_is_not_resent(db, db_dsn, statement):
    killer = _after_commit(db_dsn, _orm_fresh_pid())
    with pytest.raises(OperationalError, match="terminating connection"):
        _orm(statement)
    killer.join()
    assert _rows(db) == 1


def test_orm_update_ended_by_the_operator_surfaces(db, db_dsn):
    db.execute(f"INSERT INTO {TABLE} VALUES (10)")
    killer = _running_for(db_dsn, _orm_fresh_pid(), 0.5)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="terminating connection"):
        _orm(f"UPDATE {TABLE} SET n = n + 1 FROM (SELECT pg_sleep(30)) AS s")
    killer.join()
    assert time.monotonic() - started < 10  # the kill's error, not a resent 30 s statement
    assert _value(db) == 10  # rolled back, and not run again


def test_orm_select_ended_by_the_operator_surfaces(db_dsn):
    killer = _running_for(db_dsn, _orm_fresh_pid(), 0.5)
    with pytest.raises(OperationalError, match="terminating connection"):
        _orm("SELECT pg_sleep(30)")
    killer.join()


def test_orm_several_statements_in_one_string_are_not_resent(db, db_dsn):
    killer = _running_for(db_dsn, _orm_fresh_pid(), 0.5)
    with pytest.raises(OperationalError, match="terminating connection"):
        _orm(f"SELECT pg_sleep(30); INSERT INTO {TABLE} VALUES (1)")
    killer.join()
    assert _rows(db) == 0


@pytest.fixture
def no_pipeline(monkeypatch):
    """psycopg's branch for a libpq older than 14 (Debian 11, Ubuntu 20.04, RHEL 8): no
    pipeline, so ``executemany`` runs, and in autocommit commits, each row on its own. The
    libpq here is newer; the branch is chosen by this one function."""
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))


def test_orm_executemany_without_pipeline_is_not_resent(db, db_dsn, no_pipeline):
    killer = _after_commit(db_dsn, _orm_fresh_pid(), rows=2)
    with pytest.raises(OperationalError, match="terminating connection"), \
            connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {TABLE} SELECT %s FROM pg_sleep(0.5)",
                           [(1,), (2,), (3,)])
    killer.join()
    assert _rows(db) == 2  # rows 1 and 2 committed once each; row 3 rolled back


def test_orm_statement_after_executemany_is_not_first(db, no_pipeline):
    """``executemany`` is the checkout's first statement: the one after it never counts as
    first, so it is not resent either."""
    pid = _orm_fresh_pid()
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {TABLE} VALUES (%s)", [(1,), (2,)])
    terminate(db, [pid])
    with pytest.raises(OperationalError):
        _orm("SELECT 1")
    assert _rows(db) == 2


def test_orm_dead_idle_connection_and_a_call_surfaces(db, settings):
    """The race the resend exists for (the server ended the idle session before the first
    statement), but the statement is a ``CALL``: by its kind it could commit by itself, so it
    surfaces. A plain statement in the same place is resent (tests/test_resend.py)."""
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "pool_pre_ping": False}}}
    pid = _orm_fresh_pid()
    connection.close()
    terminate(db, [pid])
    with pytest.raises(OperationalError):
        _orm("CALL poolkit_commit_then_sleep()")
    assert _rows(db) == 0


# get_engine(): AUTOCOMMIT and begin().

def _sa_fresh(autocommit: bool) -> tuple[Any, int]:
    sa = get_engine().connect()
    if autocommit:
        sa = sa.execution_options(isolation_level="AUTOCOMMIT")
    return sa, int(sa.connection.driver_connection.info.backend_pid)


@pytest.mark.parametrize("statement", ["CALL poolkit_commit_then_sleep()", DO_BLOCK],
                         ids=["call", "do"])
def test_sqlalchemy_autocommit_statement_that_commits_inside_is_not_resent(
        db, db_dsn, statement):
    sa, pid = _sa_fresh(autocommit=True)
    killer = _after_commit(db_dsn, pid)
    with sa, pytest.raises(exc.OperationalError, match="terminating connection"):
        sa.execute(text(statement))
    killer.join()
    assert _rows(db) == 1


def test_sqlalchemy_autocommit_executemany_without_pipeline_is_not_resent(
        db, db_dsn, no_pipeline):
    sa, pid = _sa_fresh(autocommit=True)
    killer = _after_commit(db_dsn, pid, rows=2)
    with sa, pytest.raises(exc.OperationalError, match="terminating connection"):
        sa.execute(text(f"INSERT INTO {TABLE} SELECT :n FROM pg_sleep(0.5)"),
                   [{"n": 1}, {"n": 2}, {"n": 3}])
    killer.join()
    assert _rows(db) == 2


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "begin"])
def test_sqlalchemy_update_ended_by_the_operator_surfaces(db, db_dsn, autocommit):
    db.execute(f"INSERT INTO {TABLE} VALUES (10)")
    sa, pid = _sa_fresh(autocommit)
    killer = _running_for(db_dsn, pid, 0.5)
    with sa, pytest.raises(exc.OperationalError, match="terminating connection"):
        sa.execute(text(f"UPDATE {TABLE} SET n = n + 1 FROM (SELECT pg_sleep(30)) AS s"))
    killer.join()
    assert _value(db) == 10


def test_sqlalchemy_select_ended_by_the_operator_surfaces(db_dsn):
    sa, pid = _sa_fresh(autocommit=False)
    killer = _running_for(db_dsn, pid, 0.5)
    with sa, pytest.raises(exc.OperationalError, match="terminating connection"):
        sa.execute(text("SELECT pg_sleep(30)"))
    killer.join()


# The async engine.

def test_async_call_and_operator_kill_are_not_resent(db, db_dsn):
    async def scenario() -> None:
        engine = get_async_engine()
        try:
            async with engine.connect() as sa:
                sa = await sa.execution_options(isolation_level="AUTOCOMMIT")
                raw = await sa.get_raw_connection()
                pid = raw.driver_connection.info.backend_pid
                killer = _after_commit(db_dsn, pid)
                with pytest.raises(exc.OperationalError, match="terminating connection"):
                    await sa.execute(text("CALL poolkit_commit_then_sleep()"))
                await asyncio.to_thread(killer.join)
            async with engine.connect() as sa:
                raw = await sa.get_raw_connection()
                killer = _running_for(db_dsn, raw.driver_connection.info.backend_pid, 0.5)
                with pytest.raises(exc.OperationalError, match="terminating connection"):
                    await sa.execute(text("SELECT pg_sleep(30)"))
                await asyncio.to_thread(killer.join)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert _rows(db) == 1


# The statement kinds, one by one.

@pytest.mark.parametrize("statement", [
    "SELECT 1", "select 1;", "  -- why\n /* a /* nested */ comment */ (SELECT 1) UNION SELECT 2",
    "INSERT INTO t VALUES (1) RETURNING id", "UPDATE t SET n = 1", "DELETE FROM t",
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "VALUES (1)", "TABLE t",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", b"SELECT 1",
])
def test_resendable_statements(statement):
    assert resendable_statement(statement)


@pytest.mark.parametrize("statement", [
    "CALL p()", "DO $$ BEGIN COMMIT; END $$", "VACUUM t, u", "CREATE INDEX CONCURRENTLY i ON t (n)",
    "REINDEX TABLE CONCURRENTLY t", "CREATE DATABASE d", "ALTER SYSTEM SET work_mem = '1MB'",
    "COMMIT", "BEGIN", "SELECT 1; COMMIT", "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
    "SELECT ';'", "COPY t FROM STDIN", "EXPLAIN ANALYZE DELETE FROM t", "", "/* only */",
    "selectx 1", "SELECTÉ", None, 42,
])
def test_statements_that_are_never_resent(statement):
    assert not resendable_statement(statement)
