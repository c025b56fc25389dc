"""The pooled ORM backend: connections come from the alias's pool and go back to it.

Lifecycle (return, don't close; invalidation; CONN_MAX_AGE; unpooled wrappers) and the ORM and
``get_engine()`` sharing one pool and its physical connections.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import os
import uuid
from contextlib import ExitStack

import psycopg
import pytest
from django.core.checks import Error
from django.db import DatabaseError, OperationalError, connection, connections, transaction
from sqlalchemy import text

from django_poolkit import PoolkitConfigurationError, get_engine, pool_stats, unshared
from django_poolkit.db.checks import check_pooled_backend
from django_poolkit.engines import engine_registry
from testproject.demo.models import Note

from .helpers.backend import STOCK, backend_pid, extra_alias, terminate

EXTRA = {
    "stock": {"engine": STOCK},
    "aged": {"CONN_MAX_AGE": 60},
    "native": {"OPTIONS": {"pool": True}},
}

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", *EXTRA]),
              pytest.mark.usefixtures("orm_connection_returned")]


@pytest.fixture(scope="module", autouse=True)
def _extra_aliases(django_db_setup, django_db_blocker):
    """The module's extra aliases (mirrors of the test database), added before pytest-django
    builds each test's TestCase, which checks that every alias a test uses exists."""
    with ExitStack() as stack:
        for name, overrides in EXTRA.items():
            stack.enter_context(extra_alias(name, **overrides))
        yield


def test_orm_connection_comes_from_the_alias_pool_and_goes_back():
    pid = backend_pid("default")
    assert connection.settings_dict["ENGINE"] == "django_poolkit.db.backends.postgresql"
    stats = pool_stats()
    assert (stats.pool_checked_out, stats.checkouts) == (1, 1)
    connection.close()
    stats = pool_stats()
    assert (stats.pool_checked_out, stats.pool_checked_in, stats.checkins) == (0, 1, 1)
    assert (stats.connections_closed, stats.resets) == (0, 1)
    # The same server process serves the next checkout: returned, not closed.
    assert backend_pid("default") == pid
    assert pool_stats().connections_opened == 1


def test_orm_and_get_engine_share_one_pool_and_budget():
    pid = backend_pid("default")
    with get_engine().connect() as sa:
        # The ORM holds its connection in this thread: SQLAlchemy uses the same one.
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() == pid
        assert pool_stats().pool_checked_out == 1
    assert pool_stats().pool_checked_out == 1  # still the ORM's
    connection.close()
    assert pool_stats().pool_checked_out == 0
    # Without the ORM, two SQLAlchemy connections of one thread are two checkouts.
    with get_engine().connect() as sa, get_engine().connect() as sa2:
        pids = {sa.execute(text("SELECT pg_backend_pid()")).scalar(),
                sa2.execute(text("SELECT pg_backend_pid()")).scalar()}
        assert pool_stats().pool_checked_out == 2
    assert len(pids) == 2
    assert pid in pids
    assert pool_stats().connections_opened == 2


def test_close_inside_atomic_discards_the_connection_and_its_transaction():
    with transaction.atomic():
        pid = backend_pid("default")
        Note.objects.create(title="never committed")
        connection.close()
        with pytest.raises(DatabaseError):
            Note.objects.count()  # as stock: the closed connection cannot be used
    assert pool_stats().invalidations == 1
    assert backend_pid("default") != pid
    assert Note.objects.count() == 0


def test_broken_connection_is_invalidated_and_the_pool_replaced(admin, caplog):
    pid = backend_pid("default")
    with get_engine().connect() as sa:
        other = sa.execute(text("SELECT pg_backend_pid()")).scalar()
    terminate(admin, [pid, other])
    with pytest.raises(OperationalError):
        Note.objects.count()
    connection.close()
    assert pool_stats().invalidations == 1
    assert "connection lost; replacing the pool's idle connections" in caplog.text
    # The idle SQLAlchemy connection was replaced too: nothing dead is handed out.
    assert Note.objects.count() == 0
    with get_engine().connect() as sa:
        assert sa.execute(text("SELECT 1")).scalar() == 1
    assert pid != backend_pid("default")


def test_failed_rollback_at_checkin_invalidates(admin):
    pid = backend_pid("default")
    transaction.set_autocommit(False)
    try:
        Note.objects.create(title="pending")
        terminate(admin, [pid])
    finally:
        # Django's close_if_unusable_or_obsolete closes a connection left out of autocommit.
        connection.close_if_unusable_or_obsolete()
    assert connection.connection is None
    assert pool_stats().pool_checked_out == 0
    assert pool_stats().invalidations == 1
    assert Note.objects.count() == 0


def test_conn_max_age_is_a_configuration_error_and_a_system_check():
    with pytest.raises(PoolkitConfigurationError, match=r'DATABASES\["aged"\]\["CONN_MAX_AGE"'
                       r'\]: must be 0 with django_poolkit.db.backends.postgresql, got 60'):
        connections["aged"].ensure_connection()
    errors = [message for message in check_pooled_backend() if "aged" in message.msg]
    assert errors == [Error(
        'DATABASES["aged"]["CONN_MAX_AGE"]: must be 0 with '
        "django_poolkit.db.backends.postgresql, got 60: the pool keeps connections open, "
        "and a connection Django kept would be held outside the pool's budget.",
        hint='Set "CONN_MAX_AGE": 0. To keep connections warm, size the pool (pool_size) '
             "and set pool_recycle for their maximum age.", id="poolkit.E010")]


def test_django_native_pool_option_is_rejected():
    with pytest.raises(PoolkitConfigurationError,
                       match=r"Django's own connection pool cannot be combined"):
        connections["native"].ensure_connection()
    assert [m.id for m in check_pooled_backend() if "native" in m.msg] == ["poolkit.E011"]


def test_django_native_pool_options_are_translated_in_the_hint():
    """Who moves from Django's pool reads the POOLKIT settings that do the same, from a plain
    `manage.py check` (run_checks() without tags or databases), before any request."""
    from django.core.checks import run_checks

    from django_poolkit.db.checks import backend_problems

    (problem,) = backend_problems("moved", {"OPTIONS": {"pool": {
        "min_size": 4, "max_size": 10, "timeout": 5, "max_lifetime": 1800.0}}})
    assert problem.message == (
        "Django's own connection pool cannot be combined with "
        "django_poolkit.db.backends.postgresql: two pools cannot both own the connections")
    assert problem.hint == (
        'Remove "pool" from OPTIONS and configure the pool in POOLKIT["DATABASES"]["moved"], '
        'for these options: "pool_size": 4, "max_overflow": 6, "pool_timeout": 5, '
        '"pool_recycle": 1800.')
    assert [m.id for m in run_checks() if "native" in m.msg] == ["poolkit.E011"]
    assert [m.id for m in run_checks() if "aged" in m.msg] == ["poolkit.E010"]


def test_nodb_and_copied_wrappers_connect_directly():
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == "postgres"
    copy = connection.copy()
    try:
        with copy.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone()[0] == connection.settings_dict["NAME"]
    finally:
        copy.close()
    assert engine_registry.built("default", "sync") is None


def test_pool_timeout_reaches_the_orm_unchanged(settings):
    """The ORM's checkout raises PoolTimeout itself, not a Django DatabaseError."""
    from django_poolkit import PoolTimeout

    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "max_overflow": 0,
                                                  "pool_timeout": 0.2}}}
    with unshared(), get_engine().connect():  # a checkout of its own, never shared
        with pytest.raises(PoolTimeout, match=r"pool 'default' exhausted.*pool_size=1, "
                                              r"max_overflow=0"):
            Note.objects.count()
    assert connection.connection is None
    assert Note.objects.count() == 0


TYPED_TABLE = """
CREATE TABLE poolkit_typed (
    id serial PRIMARY KEY, doc jsonb, at timestamptz, addr inet, amount numeric(10, 2),
    token uuid
)"""

VALUES = {
    "doc": {"a": [1, 2, {"b": None}]},
    "at": datetime.datetime(2026, 11, 24, 12, 30, 15, 123456, tzinfo=datetime.UTC),
    "addr": "192.168.7.1",
    "amount": decimal.Decimal("1234.50"),
    "token": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


@pytest.fixture
def typed_table():
    with connection.cursor() as cursor:
        cursor.execute(TYPED_TABLE)
    connection.close()
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE poolkit_typed")


def _orm_round_trip() -> tuple[int, tuple]:
    import json

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO poolkit_typed (doc, at, addr, amount, token) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            [json.dumps(VALUES["doc"]), VALUES["at"], VALUES["addr"], VALUES["amount"],
             VALUES["token"]])
        row_id = cursor.fetchone()[0]
        cursor.execute("SELECT doc, at, addr, amount, token, pg_backend_pid() "
                       "FROM poolkit_typed WHERE id = %s", [row_id])
        *row, pid = cursor.fetchone()
    return pid, tuple(row)


def _engine_round_trip() -> tuple[int, tuple]:
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import INET, JSONB

    with get_engine().begin() as sa:
        statement = text(
            "INSERT INTO poolkit_typed (doc, at, addr, amount, token) "
            "VALUES (:doc, :at, :addr, :amount, :token) RETURNING id"
        ).bindparams(bindparam("doc", type_=JSONB), bindparam("addr", type_=INET))
        row_id = sa.execute(statement, VALUES).scalar()
        row = sa.execute(text("SELECT doc, at, addr, amount, token, pg_backend_pid() "
                              "FROM poolkit_typed WHERE id = :id"), {"id": row_id}).one()
    return row[-1], tuple(row[:-1])


# What each side gets: the ORM exactly what the stock backend gives it (jsonb and inet as
# text, timestamptz in UTC), SQLAlchemy exactly what its own psycopg dialect gives it.
ORM_EXPECTED = ('{"a": [1, 2, {"b": null}]}', VALUES["at"], "192.168.7.1",
                VALUES["amount"], VALUES["token"])
ENGINE_EXPECTED = (VALUES["doc"], VALUES["at"], ipaddress.ip_address("192.168.7.1"),
                   VALUES["amount"], VALUES["token"])


@pytest.mark.parametrize("orm_first", [True, False], ids=["orm-then-engine", "engine-then-orm"])
def test_types_round_trip_through_both_on_the_same_server_process(settings, typed_table,
                                                                  orm_first):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "max_overflow": 0}}}
    if orm_first:
        orm_pid, orm_row = _orm_round_trip()
        connection.close()
        engine_pid, engine_row = _engine_round_trip()
    else:
        engine_pid, engine_row = _engine_round_trip()
        orm_pid, orm_row = _orm_round_trip()
        connection.close()
    assert orm_pid == engine_pid
    assert orm_row == ORM_EXPECTED
    assert engine_row == ENGINE_EXPECTED
    assert orm_row[1].tzinfo == datetime.UTC


def test_the_orm_sees_what_the_stock_backend_sees(typed_table):
    _orm_round_trip()
    with connections["stock"].cursor() as cursor:
        cursor.execute("SELECT doc, at, addr, amount, token FROM poolkit_typed")
        stock_row = cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute("SELECT doc, at, addr, amount, token FROM poolkit_typed")
        pooled_row = cursor.fetchone()
    assert pooled_row == stock_row == ORM_EXPECTED
    assert type(pooled_row[1].tzinfo) is type(stock_row[1].tzinfo)


def test_orm_after_sqlalchemy_transaction_is_in_autocommit(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "max_overflow": 0}}}
    with get_engine().connect() as sa:
        sa.execute(text("SELECT 1"))
        sa.commit()
        assert sa.connection.driver_connection.autocommit is False
    assert connection.get_autocommit() is True
    Note.objects.create(title="visible at once")
    connection.close()
    with get_engine().connect() as sa:
        # SQLAlchemy gets psycopg's default state back, not the ORM's autocommit.
        assert sa.connection.driver_connection.autocommit is False
        assert sa.execute(text("SELECT count(*) FROM demo_note")).scalar() == 1
        sa.execute(text("INSERT INTO demo_note (title, body, created_at) "
                        "VALUES ('rolled back', '', now())"))
        # Not committed: the checkin rolls it back.
    assert list(Note.objects.values_list("title", flat=True)) == ["visible at once"]
    connection.close()


@pytest.fixture
def one_connection(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 1, "max_overflow": 0}}}


def _raw_pid(raw) -> int:
    cursor = raw.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
    cursor.close()
    return pid


def test_dirty_return_in_transaction_is_rolled_back_with_a_warning(one_connection, caplog):
    raw = get_engine().raw_connection()
    pid = _raw_pid(raw)
    raw.cursor().execute("CREATE TABLE poolkit_dirty (x int)")
    raw.close()
    assert "returned INTRANS; rolling back" in caplog.text
    assert backend_pid("default") == pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('poolkit_dirty')")
        assert cursor.fetchone()[0] is None
    assert pool_stats().invalidations == 0


def test_dirty_return_in_error_is_rolled_back(one_connection, caplog):
    raw = get_engine().raw_connection()
    pid = _raw_pid(raw)
    with pytest.raises(psycopg.errors.UndefinedTable):
        raw.cursor().execute("SELECT * FROM no_such_table")
    raw.close()
    assert "returned INERROR; rolling back" in caplog.text
    assert backend_pid("default") == pid


def test_return_with_a_copy_in_progress_is_discarded(one_connection, caplog):
    raw = get_engine().raw_connection()
    pid = _raw_pid(raw)
    copy = raw.cursor().copy("COPY (SELECT generate_series(1, 10)) TO STDOUT")
    copy.__enter__()
    raw.close()
    assert "returned with a command in progress" in caplog.text
    assert pool_stats().invalidations == 1
    assert backend_pid("default") != pid


def test_a_forked_child_closing_its_inherited_connection_leaves_the_parent_alone():
    pid = backend_pid("default")
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            connection.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0
    # The parent's session is intact: same server process, still usable.
    assert backend_pid("default") == pid


def test_a_forked_child_using_its_inherited_connection_gets_its_own_server_process():
    """Code that forks without a request boundary (no close_all() in the child) must not share
    the parent's server process: the child's first query checks out of its own pool."""
    pid = backend_pid("default")
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.write(writer, str(backend_pid("default")).encode())
            connection.close()
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child_pid = pipe.read()
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert child_pid.isdigit()
    assert int(child_pid) != pid
    assert backend_pid("default") == pid
