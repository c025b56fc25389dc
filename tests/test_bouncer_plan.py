"""The budget against what runs: ``poolplan`` and the W043 check compare the pools behind a
real PgBouncer 1.18 (one of each test's own, tests/helpers/bouncer.py) with its running
``max_client_conn``, pool size and ``max_db_connections`` and with the server's
``max_connections``, and say which limit is hit first."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_poolkit.check_ids import W_BOUNCER_BUDGET, W_BUDGET_UNKNOWN
from django_poolkit.checks import check_connection_budget

from .helpers.bouncer import free_port, own_pgbouncer

pytestmark = pytest.mark.django_db(transaction=True)

# 8 connections per process, 4 processes per host: 32 client connections per host.
POOL = {"pgbouncer": "transaction", "statement_timeout": None, "pool_size": 8,
        "max_overflow": 0}
SHAPE = ("--workers", "4", "--threads", "8", "--cores", "2")


def _dbname() -> str:
    return str(connections.settings["default"]["NAME"])


def _engines(url: str) -> dict[str, Any]:
    return {"ENGINES": {"bounced": {"url": url, **POOL}}}


def _plan(*args: str) -> tuple[dict[str, Any], str, int]:
    out = io.StringIO()
    code = 0
    try:
        call_command("poolplan", "--database", "bounced", "--format", "json", *SHAPE, *args,
                     stdout=out)
    except CommandError as error:
        code = error.returncode
    table = io.StringIO()
    try:
        call_command("poolplan", "--database", "bounced", *SHAPE, *args, stdout=table)
    except CommandError:
        pass
    return json.loads(out.getvalue()), table.getvalue(), code


def _available(admin: Any) -> int:
    row = admin.execute(
        "SELECT current_setting('max_connections')::int - current_setting("
        "'superuser_reserved_connections')::int - COALESCE(current_setting("
        "'reserved_connections', true), '0')::int AS available").fetchone()
    return int(row.available)


def _bouncer(**settings: Any) -> Any:
    return own_pgbouncer({_dbname(): _dbname()}, **settings)


def test_the_pool_size_is_hit_first_and_nothing_is_refused(settings):
    with _bouncer(default_pool_size=20, reserve_pool_size=5, max_client_conn=200) as bouncer:
        settings.POOLKIT = _engines(bouncer.url(_dbname()))
        document, table, code = _plan("--hosts", "3")
    assert code == 0
    assert document["skipped"] == []
    [behind] = document["pgbouncers"]
    assert behind["pgbouncer"] == f"127.0.0.1:{bouncer.port}"
    assert behind["clients"] == 96
    assert behind["server_connections"] == 25
    assert [(limit["name"], limit["admits"], limit["demand"], limit["hosts_admitted"],
             limit["hit"]) for limit in behind["limits"]] == [
        (f"pool_size ({_dbname()})", 25, 96, 0, True),
        ("max_client_conn", 200, 96, 6, False),
        ("max_connections", None, 25, None, False),
    ]
    assert behind["first_limit"] == f"pool_size ({_dbname()})"
    assert behind["fits"] is True
    assert document["fits"] is True  # the verdict counts PgBouncers too
    assert "client connections (pool_size + max_overflow): 8 per process x 12 processes = 96" \
        in table
    assert f"hit first: pool_size ({_dbname()}) 20, at 1 host(s)" in table


def test_max_client_conn_refuses_first_and_the_check_says_so(settings):
    # Both admit 1 host; of two limits hit together, the one that refuses is named first.
    with _bouncer(default_pool_size=50, max_client_conn=60) as bouncer:
        settings.POOLKIT = {**_engines(bouncer.url(_dbname())),
                            "DEPLOYMENT": {"hosts": 2, "workers": 4, "threads": 8}}
        document, table, _ = _plan("--hosts", "2")
        messages = check_connection_budget(databases=["bounced"])
    [behind] = document["pgbouncers"]
    assert behind["limits"][0]["name"] == "max_client_conn"
    assert behind["limits"][0]["hosts_admitted"] == 1
    assert behind["fits"] is False
    assert "the deployment as declared goes beyond max_client_conn" in table
    [message] = messages
    assert message.id == W_BOUNCER_BUDGET
    assert "can open 64 client connections to PgBouncer" in message.msg
    assert "max_client_conn 60 (admits 60, asked 64)" in message.msg


def test_the_server_is_hit_when_pgbouncer_may_open_more_than_it_has(settings, admin):
    available = _available(admin)
    with _bouncer(default_pool_size=available + 50, max_client_conn=1000) as bouncer:
        settings.POOLKIT = _engines(bouncer.url(_dbname()))
        document, table, _ = _plan("--hosts", "4", "--extra-connections", "1")
    [behind] = document["pgbouncers"]
    server = next(limit for limit in behind["limits"] if limit["name"] == "max_connections")
    room = available - 1
    assert server["admits"] == room
    assert server["hosts_admitted"] == room // 32
    assert server["demand"] == min(128, available + 50)
    assert server["effect"] == "refused"
    assert behind["first_limit"] == "max_connections"
    assert behind["fits"] is (128 <= room)
    assert "hit first: max_connections" in table


def test_a_pgbouncer_that_cannot_be_read_is_an_error_not_a_guess(settings):
    settings.POOLKIT = {**_engines(f"postgresql://postgres@127.0.0.1:{free_port()}/x"),
                        "DEPLOYMENT": {"hosts": 2}}
    document, table, code = _plan()
    [behind] = document["pgbouncers"]
    assert code == 1
    assert behind["error"] == "connection refused"
    assert behind["fits"] is None
    assert "cannot read the running PgBouncer or the server behind it (connection refused)" \
        in table
    [message] = check_connection_budget(databases=["bounced"])
    assert message.id == W_BUDGET_UNKNOWN


def test_the_dashboard_plan_uses_the_cached_pgbouncer_reading(settings):
    from django_poolkit.dashboard import data as dashboard

    with _bouncer(default_pool_size=20, max_client_conn=200) as bouncer:
        settings.POOLKIT = _engines(bouncer.url(_dbname()))
        document = dashboard.collect(wait=30)
    [behind] = document["plan"]["pgbouncers"]
    assert behind["error"] is None
    assert behind["clients"] == 8  # no DEPLOYMENT declared: 1 host x 1 worker
    # pool_size 20 admits 2 such hosts, max_client_conn 200 admits 25.
    assert behind["first_limit"] == f"pool_size ({_dbname()})"
