"""PgBouncer's own view beside the server's, against a real PgBouncer 1.18 (a private one per
module, tests/helpers/bouncer.py; the shared one of scripts/pgbouncer is only read): clients
per app process, waiting clients and their longest wait, limits and counters, on
``poolstatus`` (text and JSON) and the dashboard's JSON; a PgBouncer that is down, a refused
admin login and a silent console are bounded states with a fixed phrase."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from sqlalchemy import text

from django_poolkit import get_engine
from django_poolkit.dashboard import data as dashboard
from django_poolkit.ops.bouncer import read_bouncer

from .helpers.bouncer import Bouncer, free_port, own_pgbouncer

pytestmark = pytest.mark.django_db(transaction=True)

BOUNCED = {"pgbouncer": "transaction", "statement_timeout": None, "pool_size": 3}
SECRET = "pw-never-shown-27"


@pytest.fixture(scope="module")
def bouncer(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Bouncer]:
    """A PgBouncer of this module in front of the test database, two server connections per
    pool (so a third transaction waits), serving ``postgres`` and ``nobody`` (no admin)."""
    dbname = connections.settings["default"]["NAME"]
    with own_pgbouncer({dbname: dbname}, users=("postgres", "nobody"),
                       default_pool_size=2, max_client_conn=50,
                       query_wait_timeout=15) as running:
        yield running


def _poolkit(bouncer: Bouncer, **extra: Any) -> dict[str, Any]:
    dbname = connections.settings["default"]["NAME"]
    return {"ENGINES": {"bounced": {"url": bouncer.url(dbname), **BOUNCED, **extra}}}


def _status(*args: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command("poolstatus", "--database", "bounced", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error.returncode
    return out.getvalue(), 0


def _json(*args: str) -> tuple[dict[str, Any], int]:
    output, code = _status("--format", "json", *args)
    return json.loads(output)["databases"][0], code


def _own_row(clients: list[dict[str, Any]]) -> dict[str, Any]:
    name = f"poolkit:bounced:{socket.gethostname()}:{os.getpid()}"
    return next(row for row in clients if row["application_name"] == name)


def test_poolstatus_shows_each_process_clients_limits_and_counters(settings, bouncer):
    settings.POOLKIT = _poolkit(bouncer)
    engine = get_engine("bounced")
    with engine.connect() as busy, engine.connect() as idle:
        idle.execute(text("SELECT 1"))
        idle.commit()  # between transactions: no server connection
        busy.execute(text("SELECT 1"))  # inside its transaction: linked to the server
        entry, code = _json()
        table, _ = _status()
    assert code == 0, entry
    view = entry["pgbouncer"]
    assert view["error"] is None
    assert view["version"] == "PgBouncer 1.18.0"
    assert view["admin"] == {"host": "127.0.0.1", "port": bouncer.port, "user": "postgres"}
    assert view["config"]["pool_mode"] == "transaction"
    assert view["config"]["max_client_conn"] == 50
    assert view["pool_size"] == 2
    assert view["max_db_connections"] == 0
    row = _own_row(view["clients"])
    assert (row["active"], row["idle"], row["waiting"], row["host"], row["pid"]) == (
        1, 1, 0, socket.gethostname(), os.getpid())
    assert view["servers"]["active"] == 1
    assert view["client_connections"] >= 2
    assert view["client_headroom"] == 50 - view["client_connections"]
    assert view["stats"]["total_query_count"] >= 2
    # The server's view is still there, beside it.
    assert entry["server_status"]["role"] == "primary"
    assert "pgbouncer: PgBouncer 1.18.0, pool_mode transaction" in table
    assert "PGBOUNCER CLIENTS" in table
    assert f"bounced:{socket.gethostname()}:{os.getpid()}" in table


def test_a_waiting_client_and_its_longest_wait(settings, bouncer):
    settings.POOLKIT = _poolkit(bouncer)
    engine = get_engine("bounced")
    done = threading.Event()

    def third() -> None:
        with engine.connect() as waiting:
            waiting.execute(text("SELECT 1"))  # waits: both server connections are taken
        done.set()

    with engine.connect() as first, engine.connect() as second:
        first.execute(text("SELECT 1"))
        second.execute(text("SELECT 1"))
        worker = threading.Thread(target=third, daemon=True)
        worker.start()
        time.sleep(1.2)
        entry, code = _json("--timeout", "1")
    worker.join(timeout=20)
    assert done.is_set()
    view = entry["pgbouncer"]
    # The third connection, and the command's own server query still in line (below).
    assert view["waiting"] == 2
    assert view["longest_wait_s"] >= 1.0
    row = _own_row(view["clients"])
    assert row["waiting"] == 1
    assert row["active"] == 2
    assert row["longest_wait_s"] >= 1.0
    assert view["servers"]["active"] == 2
    # The server view goes through the same PgBouncer and queues behind its full pool: it
    # says so within its bound, while the admin console (no pool) still answers.
    assert entry["error"] == "no answer in time"
    assert code == 1


def test_a_refused_admin_login_is_a_clear_state_and_the_server_view_stays(settings, bouncer):
    admin = f"postgresql://nobody:{SECRET}@127.0.0.1:{bouncer.port}/pgbouncer"
    settings.POOLKIT = _poolkit(bouncer, pgbouncer_admin=admin)
    entry, code = _json()
    table, table_code = _status()
    assert code == table_code == 1
    assert entry["pgbouncer"] == {"admin": {"host": "127.0.0.1", "port": bouncer.port,
                                            "user": "nobody"}, "error": "admin login refused"}
    assert entry["server_status"]["role"] == "primary"
    assert entry["error"] is None
    assert "console nobody@127.0.0.1" in table
    assert "(admin login refused)" in table
    settings_shown = entry["settings"]["pgbouncer_admin"]["value"]
    assert settings_shown == f"postgresql://nobody@127.0.0.1:{bouncer.port}/pgbouncer"
    assert SECRET not in json.dumps(entry)
    assert SECRET not in table
    assert "Traceback" not in table


def test_a_down_pgbouncer_is_refused_at_once_on_both_views(settings):
    settings.POOLKIT = {"ENGINES": {"bounced": {
        "url": f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/x", **BOUNCED}}}
    started = time.monotonic()
    entry, code = _json()
    table, _ = _status()
    assert time.monotonic() - started < 10
    assert code == 1
    assert entry["error"] == "connection refused"
    assert entry["pgbouncer"]["error"] == "connection refused"
    assert "pgbouncer: console postgres@127.0.0.1" in table
    assert SECRET not in table
    assert "Traceback" not in table


def test_a_console_that_never_answers_cannot_hang_the_command(settings, bouncer):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        admin = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/pgbouncer"
        settings.POOLKIT = _poolkit(bouncer, pgbouncer_admin=admin)
        started = time.monotonic()
        entry, code = _json("--timeout", "1")
        elapsed = time.monotonic() - started
    assert code == 1
    assert entry["pgbouncer"]["error"] in ("connect timeout", "no answer in time")
    assert entry["server_status"] is not None
    # libpq's shortest connect_timeout is 2 s: the bound is that plus --timeout plus 1 s.
    assert elapsed < 10


def test_the_dashboard_json_has_pgbouncers_view(settings, bouncer):
    settings.POOLKIT = _poolkit(bouncer)
    with get_engine("bounced").connect() as held:
        held.execute(text("SELECT 1"))
        document = dashboard.collect(wait=30)
    entry = next(item for item in document["databases"] if item["alias"] == "bounced")
    view = entry["pgbouncer_status"]
    assert view["state"] == "fresh"
    assert view["error"] is None
    assert view["admin"]["port"] == bouncer.port
    assert _own_row(view["snapshot"]["clients"])["active"] == 1
    assert view["snapshot"]["config"]["default_pool_size"] == 2
    plain = next(item for item in document["databases"] if item["alias"] == "default")
    assert plain["pgbouncer_status"] is None
    # The page's small block renders the same reading.
    from django.test import RequestFactory

    from django_poolkit.dashboard.views import _body

    html = _body(document, RequestFactory().get("/poolkit/"))
    assert "PgBouncer&#x27;s view" in html or "PgBouncer's view" in html
    assert f"poolkit:bounced:{socket.gethostname()}:{os.getpid()}" in html


def test_the_shared_pgbouncer_is_read_as_it_runs(settings):
    # Only read: SHOW commands on scripts/pgbouncer's instance (TEST_PGBOUNCER_URL).
    url = os.environ.get("TEST_PGBOUNCER_URL", "postgres://postgres@127.0.0.1:6432/poolkit")
    settings.POOLKIT = {"ENGINES": {"shared": {"url": url.replace("postgres://",
                                                                    "postgresql://", 1),
                                               **BOUNCED}}}
    snapshot = read_bouncer("shared")
    assert snapshot.version.startswith("PgBouncer ")
    assert snapshot.config["pool_mode"] == "transaction"
    assert snapshot.config["max_client_conn"] == 1000
    with psycopg.connect(url, connect_timeout=5) as probe:
        assert probe.execute("SELECT 1").fetchone() == (1,)
