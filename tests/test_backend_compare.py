"""The same scenarios on Django's stock PostgreSQL backend and on the pooled one.

Each test runs once per backend against the same test database (the stock aliases are
mirrors of it) and expects the same outcome; where the pooled backend differs on purpose
(the connection is returned, not closed), the test says so.
"""

from __future__ import annotations

import zoneinfo
from contextlib import ExitStack

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.core.signals import request_finished, request_started
from django.db import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    close_old_connections,
    connections,
    transaction,
)
from django.db.transaction import TransactionManagementError

from django_poolkit import conf, pool_stats
from django_poolkit.engines import engine_registry
from testproject.demo.models import Note

from .helpers.backend import STOCK, backend_pid, extra_alias, terminate

ROLE = "poolkit_helper3_role"

# alias -> (pooled?, DATABASES overrides); "pooled" and "stock" variants of each scenario.
VARIANTS = {
    "stock": {"engine": STOCK},
    "iso_pooled": {"OPTIONS": {"isolation_level": psycopg.IsolationLevel.REPEATABLE_READ}},
    "iso_stock": {"engine": STOCK,
                  "OPTIONS": {"isolation_level": psycopg.IsolationLevel.REPEATABLE_READ}},
    "role_pooled": {"OPTIONS": {"assume_role": ROLE}},
    "role_stock": {"engine": STOCK, "OPTIONS": {"assume_role": ROLE}},
    "tz_pooled": {"TIME_ZONE": "Europe/Paris"},
    "tz_stock": {"engine": STOCK, "TIME_ZONE": "Europe/Paris"},
    "hc_pooled": {"CONN_HEALTH_CHECKS": True},
    "hc_stock": {"engine": STOCK, "CONN_HEALTH_CHECKS": True},
}

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", *VARIANTS])

BACKENDS = ["pooled", "stock"]


def alias_of(backend: str, scenario: str = "") -> str:
    if not scenario:
        return "default" if backend == "pooled" else "stock"
    return f"{scenario}_{backend}"


@pytest.fixture(scope="module", autouse=True)
def _variants(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        connection = connections["default"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE])
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE ROLE {ROLE}")
        connection.close()
    with ExitStack() as stack:
        for name, overrides in VARIANTS.items():
            stack.enter_context(extra_alias(name, **overrides))
        yield
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(f"DROP ROLE IF EXISTS {ROLE}")
        connection.close()


@pytest.fixture(autouse=True)
def _closed():
    yield
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()


def _fetch(alias: str, sql: str, params: list | None = None):
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchone()[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocommit_writes_are_visible_at_once(backend, admin):
    alias = alias_of(backend)
    assert connections[alias].get_autocommit() is True
    Note.objects.using(alias).create(title="now")
    dbname = connections[alias].settings_dict["NAME"]
    with psycopg.connect(admin.info.dsn.replace("dbname=postgres", f"dbname={dbname}")) as other:
        assert other.execute("SELECT title FROM demo_note").fetchall() == [("now",)]


class Rollback(Exception):
    """Raised to leave an atomic block by rolling it back."""


def rolled_back(alias: str, *actions) -> None:
    """Run ``actions`` in ``atomic(using=alias)`` and roll the block back."""
    with transaction.atomic(using=alias):
        for action in actions:
            action()
        raise Rollback


@pytest.mark.parametrize("backend", BACKENDS)
def test_atomic_and_savepoints(backend):
    alias = alias_of(backend)
    notes = Note.objects.using(alias)
    with transaction.atomic(using=alias):
        notes.create(title="outer")
        with pytest.raises(Rollback):
            rolled_back(alias, lambda: notes.create(title="inner, rolled back"))
        with transaction.atomic(using=alias):
            notes.create(title="inner, kept")
        assert connections[alias].in_atomic_block
    assert sorted(notes.values_list("title", flat=True)) == ["inner, kept", "outer"]
    with pytest.raises(Rollback):
        rolled_back(alias, lambda: notes.create(title="outer, rolled back"))
    assert notes.count() == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_commit_hooks(backend, caplog):
    alias = alias_of(backend)
    ran: list[str] = []
    with transaction.atomic(using=alias):
        transaction.on_commit(lambda: ran.append("committed"), using=alias)
        with pytest.raises(Rollback):
            rolled_back(alias, lambda: transaction.on_commit(
                lambda: ran.append("savepoint rolled back"), using=alias))
        assert ran == []
    with pytest.raises(Rollback):
        rolled_back(alias, lambda: transaction.on_commit(lambda: ran.append("rolled back"),
                                                          using=alias))

    def fails() -> None:
        raise ValueError("hook failed")

    with transaction.atomic(using=alias):
        transaction.on_commit(fails, using=alias, robust=True)
        transaction.on_commit(lambda: ran.append("after robust"), using=alias)
    transaction.on_commit(lambda: ran.append("autocommit: at once"), using=alias)
    assert ran == ["committed", "after robust", "autocommit: at once"]
    assert "hook failed" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_for_update(backend, admin):
    alias = alias_of(backend)
    note = Note.objects.using(alias).create(title="locked")
    with pytest.raises(TransactionManagementError):
        list(Note.objects.using(alias).select_for_update())
    dbname = connections[alias].settings_dict["NAME"]
    with transaction.atomic(using=alias):
        assert Note.objects.using(alias).select_for_update().get().pk == note.pk
        with psycopg.connect(admin.info.dsn.replace("dbname=postgres", f"dbname={dbname}"),
                             autocommit=True) as other:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SELECT id FROM demo_note FOR UPDATE NOWAIT")
    with psycopg.connect(admin.info.dsn.replace("dbname=postgres", f"dbname={dbname}"),
                         autocommit=True) as other:
        assert other.execute("SELECT id FROM demo_note FOR UPDATE NOWAIT").fetchall()


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_are_django_errors_and_the_connection_recovers(backend):
    alias = alias_of(backend)
    notes = Note.objects.using(alias)
    note = notes.create(title="first")
    with pytest.raises(IntegrityError):
        notes.create(id=note.id, title="same id")
    with pytest.raises(DataError):
        notes.create(title="x" * 201)
    with pytest.raises(ProgrammingError), connections[alias].cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM demo_note")
    with transaction.atomic(using=alias):
        with pytest.raises(IntegrityError):
            notes.create(id=note.id, title="same id")
        with pytest.raises(TransactionManagementError):
            notes.count()
    assert notes.count() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolation_level_from_options(backend):
    alias = alias_of(backend, "iso")
    sql = "SELECT current_setting('transaction_isolation')"
    with transaction.atomic(using=alias):
        assert _fetch(alias, sql) == "repeatable read"
    assert connections[alias].isolation_level == psycopg.IsolationLevel.REPEATABLE_READ
    # Next request, next connection (the same one, for the pooled backend).
    connections[alias].close()
    with transaction.atomic(using=alias):
        assert _fetch(alias, sql) == "repeatable read"
    connections[alias].close()
    assert _fetch(alias_of(backend), "SELECT current_setting('transaction_isolation')") == (
        "read committed")


@pytest.mark.parametrize("backend", BACKENDS)
def test_assume_role_survives_a_request_that_changed_it(backend):
    alias = alias_of(backend, "role")
    assert _fetch(alias, "SELECT current_user") == ROLE
    with connections[alias].cursor() as cursor:
        cursor.execute("RESET ROLE; SET ROLE postgres")
    assert _fetch(alias, "SELECT current_user") == "postgres"
    connections[alias].close()
    assert _fetch(alias, "SELECT current_user") == ROLE


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_zone_survives_a_request_that_changed_it(backend):
    alias = alias_of(backend, "tz")
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert _fetch(alias, "SELECT current_setting('TimeZone')") == "Europe/Paris"
    assert _fetch(alias, "SELECT now()").tzinfo == paris
    with connections[alias].cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    connections[alias].close()
    assert _fetch(alias, "SELECT current_setting('TimeZone')") == "Europe/Paris"
    assert _fetch(alias, "SELECT now()").tzinfo == paris
    # The default alias (USE_TZ, no TIME_ZONE): UTC, as Django's datetime.timezone.utc.
    import datetime

    assert _fetch(alias_of(backend), "SELECT now()").tzinfo is datetime.UTC


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_side_cursors(backend):
    alias = alias_of(backend)
    notes = Note.objects.using(alias)
    notes.bulk_create([Note(title=f"n{i}") for i in range(5)])
    assert len(list(notes.iterator(chunk_size=2))) == 5
    abandoned = notes.iterator(chunk_size=2)
    next(abandoned)
    assert _fetch(alias, "SELECT count(*) FROM pg_cursors") == 1
    pid = backend_pid(alias)
    connections[alias].close()
    # Nothing of the abandoned iterator is left in the next request's session.
    assert _fetch(alias, "SELECT count(*) FROM pg_cursors") == 0
    if backend == "pooled":
        assert backend_pid(alias) == pid  # the same server process, reused
    del abandoned


def _request(alias: str) -> int:
    """One request cycle as Django's handler runs it: start, one query, finish."""
    request_started.send(sender=None)
    try:
        return Note.objects.using(alias).count()
    finally:
        request_finished.send(sender=None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_old_connections_ends_the_request_connection(backend):
    alias = alias_of(backend)
    connections[alias].ensure_connection()
    close_old_connections()
    assert connections[alias].connection is None
    assert pool_stats().pool_checked_out == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", ["hc", ""], ids=["health-checks", "no-health-checks"])
def test_requests_after_the_server_process_was_killed(backend, scenario, admin):
    alias = alias_of(backend, scenario)
    assert _request(alias) == 0
    pid = backend_pid(alias)
    connections[alias].close()
    # Pooled: the idle pooled session dies. Stock: it was closed already (CONN_MAX_AGE=0).
    terminate(admin, [pid])
    assert [_request(alias) for _ in range(3)] == [0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_async_orm(backend):
    alias = alias_of(backend)
    notes = Note.objects.using(alias)
    await notes.acreate(title="async")
    assert await notes.acount() == 1
    assert [note.title async for note in notes.all()] == ["async"]
    await sync_to_async(connections.close_all)()


@pytest.mark.parametrize(("backend", "error"), [("pooled", OperationalError),
                                                 ("stock", DataError)])
def test_a_role_that_does_not_exist_fails_the_first_query(backend, error, settings):
    """A documented difference: the pooled backend sends the role at startup, so the
    connection itself fails; the stock backend's SET ROLE fails right after connecting."""
    alias = alias_of(backend, "role")
    settings.DATABASES[alias]["OPTIONS"]["assume_role"] = "poolkit_no_such_role"
    conf.reload()
    try:
        with pytest.raises(error, match='role "poolkit_no_such_role" does not exist'):
            Note.objects.using(alias).count()
    finally:
        settings.DATABASES[alias]["OPTIONS"]["assume_role"] = ROLE
        connections[alias].close()
        engine_registry.dispose(alias)
        conf.reload()
