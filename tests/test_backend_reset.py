"""What a checkin leaves behind, per ``reset_on_return`` policy, on the same server process;
Django's per-connection state after each policy; and the statements a hot checkout sends."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
from django.db import connections
from sqlalchemy import text

from django_poolkit import get_engine, pool_stats

from .helpers.backend import STOCK, backend_pid, ensure_role, extra_alias, last_statement

ROLE = "poolkit_helper3_reset"
ALIASES = {
    "matrix": {"TIME_ZONE": "Europe/Paris"},
    "invariants": {"TIME_ZONE": "Europe/Paris", "OPTIONS": {"assume_role": ROLE}},
    "stock": {"engine": STOCK},
}
POLICIES = ["rollback", "reset_all", "discard_all"]

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", *ALIASES])


@pytest.fixture(scope="module", autouse=True)
def _aliases(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        ensure_role(ROLE)
    with ExitStack() as stack:
        for name, overrides in ALIASES.items():
            stack.enter_context(extra_alias(name, **overrides))
        yield
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {ROLE}")
    connections["default"].close()


@pytest.fixture(autouse=True)
def _closed():
    yield
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()


def _one_connection(settings, policy: str, **extra) -> None:
    settings.POOLKIT = {"DATABASES": {alias: {
        "pool_size": 1, "max_overflow": 0, "reset_on_return": policy, **extra}
        for alias in ALIASES if alias != "stock"}}


SET_STATE = [
    ("SET work_mem", "SET work_mem = '7MB'"),
    ("set_config(..., false)", "SELECT set_config('poolkit.tenant', 'acme', false)"),
    ("temporary table", "CREATE TEMP TABLE poolkit_leak (x int)"),
    ("session advisory lock", "SELECT pg_advisory_lock(424242)"),
    ("PREPARE", "PREPARE poolkit_leak AS SELECT 1"),
    ("LISTEN", "LISTEN poolkit_leak"),
    ("SET ROLE", f"SET ROLE {ROLE}"),
]

# Each probe is true when the item leaked into the next checkout.
PROBES = {
    "SET work_mem": "SELECT current_setting('work_mem') = '7MB'",
    "set_config(..., false)": "SELECT coalesce(current_setting('poolkit.tenant', true), '') "
                              "= 'acme'",
    "temporary table": "SELECT to_regclass('pg_temp.poolkit_leak') IS NOT NULL",
    "session advisory lock": "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' "
                             "AND pid = pg_backend_pid()",
    "PREPARE": "SELECT count(*) > 0 FROM pg_prepared_statements WHERE name = 'poolkit_leak'",
    "LISTEN": "SELECT count(*) > 0 FROM pg_listening_channels()",
    "SET ROLE": f"SELECT current_user = '{ROLE}'",
}

LEAKS = {
    "rollback": set(PROBES),
    "reset_all": {"temporary table"},
    "discard_all": set(),
}


@pytest.mark.parametrize("prober", ["orm", "sqlalchemy"])
@pytest.mark.parametrize("policy", POLICIES)
def test_session_state_matrix(settings, policy, prober):
    _one_connection(settings, policy)
    matrix = connections["matrix"]
    pid = backend_pid("matrix")
    with matrix.cursor() as cursor:
        for _, sql in SET_STATE:
            cursor.execute(sql)
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    matrix.close()
    if prober == "orm":
        assert backend_pid("matrix") == pid
        found = {}
        with matrix.cursor() as cursor:
            for item, sql in PROBES.items():
                cursor.execute(sql)
                found[item] = cursor.fetchone()[0]
            # Django's per-connection state holds whatever the policy.
            cursor.execute("SELECT current_setting('TimeZone')")
            assert cursor.fetchone()[0] == "Europe/Paris"
    else:
        with get_engine("matrix").connect() as sa:
            assert sa.execute(text("SELECT pg_backend_pid()")).scalar() == pid
            found = {item: sa.execute(text(sql)).scalar() for item, sql in PROBES.items()}
    assert {item for item, leaked in found.items() if leaked} == LEAKS[policy]
    assert pool_stats("matrix").resets >= 1


@pytest.mark.parametrize("policy", POLICIES)
def test_django_connection_state_after_each_policy(settings, policy, admin):
    """Role (assume_role), time zone, autocommit and poolkit's statement_timeout, whatever
    the previous request did; SET ROLE is skipped only when the session is pristine."""
    _one_connection(settings, policy)
    alias = "invariants"
    wrapper = connections[alias]
    pid = backend_pid(alias)
    # A fresh connection: the role came in the startup options, no SET ROLE was sent.
    assert last_statement(admin, pid) == "SELECT pg_backend_pid()"
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        startup_timeout = cursor.fetchone()[0]  # the server's: poolkit sends none to the ORM
        cursor.execute("RESET ROLE; SET ROLE postgres; SET TIME ZONE 'Asia/Tokyo'; "
                       "SET statement_timeout = 5")
    wrapper.close()
    for _ in range(2):
        wrapper.ensure_connection()
        if policy == "rollback":
            # Not pristine: Django's SET ROLE runs, as on every stock connect.
            assert last_statement(admin, pid).startswith("SET ROLE")
        else:
            assert last_statement(admin, pid) == RESET_STATEMENT[policy]
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), current_user, current_setting('TimeZone'), "
                           "current_setting('statement_timeout')")
            row = cursor.fetchone()
        assert row[:3] == (pid, ROLE, "Europe/Paris")
        assert row[3] == ("5ms" if policy == "rollback" else startup_timeout)
        assert wrapper.get_autocommit() is True
        wrapper.close()


RESET_STATEMENT = {
    "reset_all": "CLOSE ALL; RESET SESSION AUTHORIZATION; RESET ALL; RESET ROLE; "
                 "DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all()",
    "discard_all": "DISCARD ALL",
}


@pytest.mark.parametrize(("mode", "sends_a_ping"), [("socket", False), ("query", True)])
def test_a_hot_checkout_and_checkin_send_nothing(settings, admin, mode, sends_a_ping):
    """rollback policy, pre-ping on: a hot connection costs no statement in "socket" mode."""
    _one_connection(settings, "rollback", pre_ping_mode=mode)
    wrapper = connections["matrix"]
    pid = backend_pid("matrix")
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 'marker'")
    wrapper.close()
    assert last_statement(admin, pid) == "SELECT 'marker'"
    wrapper.ensure_connection()
    wrapper.close()
    with get_engine("matrix").connect():
        pass
    assert last_statement(admin, pid) == ("" if sends_a_ping else "SELECT 'marker'")
    assert pool_stats("matrix").connections_opened == 1


def _cycles(alias: str, count: int) -> float:
    """Seconds per ORM checkout + checkin (Django's connect() and close()), one batch."""
    wrapper = connections[alias]
    started = time.perf_counter()
    for _ in range(count):
        wrapper.ensure_connection()
        wrapper.close()
    return (time.perf_counter() - started) / count


def test_cost_per_checkout_and_checkin(settings, capsys):
    """Measured, printed (run with -s), never asserted: this machine is shared and noisy.
    The configurations take turns, 5 rounds, best batch of each: drift hits all alike."""
    configurations = [
        ("rollback, pre-ping socket", {"reset_on_return": "rollback"}),
        ("rollback, pre-ping query", {"reset_on_return": "rollback",
                                      "pre_ping_mode": "query"}),
        ("rollback, no pre-ping", {"reset_on_return": "rollback", "pool_pre_ping": False}),
        ("reset_all, pre-ping socket", {"reset_on_return": "reset_all"}),
        ("discard_all, pre-ping socket", {"reset_on_return": "discard_all"}),
    ]
    figures: dict[str, float] = {}
    for _ in range(5):
        for label, knobs in configurations:
            settings.POOLKIT = {"DATABASES": {"matrix": {"pool_size": 1, "max_overflow": 0,
                                                         **knobs}}}
            opened = pool_stats("matrix").connections_opened
            _cycles("matrix", 50)  # warm: connection opened, caches filled
            figures[label] = min(figures.get(label, float("inf")), _cycles("matrix", 1000))
            assert pool_stats("matrix").connections_opened == opened + 1  # one, reused
        _cycles("stock", 5)
        label = "stock backend, CONN_MAX_AGE=0"
        figures[label] = min(figures.get(label, float("inf")), _cycles("stock", 100))
    base = figures["rollback, pre-ping socket"]
    with capsys.disabled():
        print("\nORM connect() + close(), best of 5 rounds x 1000 (x 100 for the stock "
              "backend):")
        for label, seconds in figures.items():
            print(f"  {label:32} {seconds * 1e6:8.1f} us   x{seconds / base:5.2f}")
