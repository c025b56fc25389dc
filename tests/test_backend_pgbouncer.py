"""The pooled backend behind a real PgBouncer in transaction mode (scripts/pgbouncer, port
6432): no server-side prepared statements, no server-side cursors, no startup options, and
warnings for what transaction pooling cannot support."""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
from django.core.checks import Warning as CheckWarning
from django.db import connections
from sqlalchemy import text

from django_poolkit import get_engine
from django_poolkit.db.checks import check_pgbouncer
from testproject.demo.models import Note

from .helpers.backend import extra_alias
from .helpers.threads import fan_out

ROOT = Path(__file__).resolve().parent.parent
PORT = "6432"
ALIASES = {
    "bouncer": {"HOST": "127.0.0.1", "PORT": PORT},
    # What a user may have written for a direct connection: server-side binding (Django's
    # default client-side binding never prepares) and eager preparing. poolkit overrides it.
    "bouncer_prepared": {"HOST": "127.0.0.1", "PORT": PORT,
                         "OPTIONS": {"prepare_threshold": 1, "server_side_binding": True}},
}
BOUNCED = {"pgbouncer": "transaction", "statement_timeout": None}

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", *ALIASES])


@pytest.fixture(scope="module", autouse=True)
def _pgbouncer(django_db_setup, django_db_blocker):
    subprocess.run([str(ROOT / "scripts" / "pgbouncer"), "start"], check=True,
                   capture_output=True, timeout=120)
    with ExitStack() as stack:
        for name, overrides in ALIASES.items():
            stack.enter_context(extra_alias(name, **overrides))
        yield
    # PgBouncer keeps server connections to the test database; Django must drop it later.
    with django_db_blocker.unblock():
        dbname = connections["default"].settings_dict["NAME"]
    with psycopg.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=pgbouncer",
                         autocommit=True, cursor_factory=psycopg.ClientCursor) as console:
        console.execute(f"RECONNECT {dbname}")
    _wait_for_no_sessions(dbname)


def _wait_for_no_sessions(dbname: str) -> None:
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                         autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                 "AND application_name LIKE 'poolkit:bouncer%%'",
                                 (dbname,)).fetchone()[0]:
                return
            time.sleep(0.05)


@pytest.fixture(autouse=True)
def _bounced(settings):
    settings.POOLKIT = {"DATABASES": {name: BOUNCED for name in ALIASES}}
    yield
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()


def _server_port(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port()")
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("alias", list(ALIASES))
def test_repeated_queries_from_several_clients_need_no_prepared_statements(alias):
    """Past psycopg's prepare_threshold, from threads that share PgBouncer's server
    connections: a prepared statement would be missing on the next server connection."""
    assert _server_port(alias) == 5432  # through PgBouncer to the primary
    Note.objects.using(alias).create(title="bounced")

    def client(_: int) -> None:
        try:
            for _ in range(20):
                assert Note.objects.using(alias).filter(title="bounced").count() == 1
                connections[alias].close()
        finally:
            connections[alias].close()

    fan_out(client, 3)
    connections[alias].ensure_connection()
    assert connections[alias].connection.prepare_threshold is None


def test_no_startup_options_are_sent():
    connections["bouncer"].ensure_connection()
    assert "options" not in connections["bouncer"].connection.info.get_parameters()


def test_iterator_uses_no_server_side_cursor():
    notes = Note.objects.using("bouncer")
    notes.bulk_create([Note(title=f"n{i}") for i in range(5)])
    assert connections["bouncer"].settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert len(list(notes.iterator(chunk_size=2))) == 5


@pytest.mark.parametrize("alias", list(ALIASES))
def test_sqlalchemy_through_the_same_pool_from_several_clients(alias):
    engine = get_engine(alias)

    def client(_: int) -> None:
        for _ in range(20):
            with engine.connect() as sa:
                assert sa.execute(text("SELECT count(*) FROM demo_note WHERE title = :t"),
                                  {"t": "x"}).scalar() == 0

    fan_out(client, 3)
    with engine.connect() as sa:
        assert sa.connection.driver_connection.prepare_threshold is None


def test_warnings_name_what_transaction_pooling_cannot_support(settings):
    settings.DATABASES["bouncer_prepared"]["OPTIONS"]["assume_role"] = "somebody"
    settings.POOLKIT = {"DATABASES": {"bouncer_prepared": {
        "pgbouncer": "transaction", "reset_on_return": "discard_all",
        "statement_timeout": 30000}}}
    try:
        found = [message for message in check_pgbouncer() if "bouncer_prepared" in message.msg]
    finally:
        del settings.DATABASES["bouncer_prepared"]["OPTIONS"]["assume_role"]
    assert [message.id for message in found] == [
        "poolkit.W010", "poolkit.W011", "poolkit.W012", "poolkit.W013"]
    assert all(isinstance(message, CheckWarning) for message in found)
    assert found[1] == CheckWarning(
        'POOLKIT["DATABASES"]["bouncer_prepared"]: statement_timeout=30000: cannot be applied '
        "behind PgBouncer: poolkit sends it in the startup options, which PgBouncer refuses "
        "or drops.",
        hint="Set statement_timeout to None here and enforce a limit on the server (ALTER "
             "ROLE ... SET statement_timeout) or with PgBouncer's query_timeout.",
        id="poolkit.W011")
    assert 'OPTIONS["prepare_threshold"]=1 ignored' in found[3].msg
