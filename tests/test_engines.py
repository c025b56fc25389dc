"""The engine registry against the real server: connection parameters, keying, laziness,
thread safety, SQLite and extra engines."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test import override_settings
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from django_poolkit import UnknownAlias, get_async_engine, get_engine, pool_stats
from django_poolkit.engines import engine_registry

from .helpers.server import server_connections
from .helpers.threads import fan_out

pytestmark = pytest.mark.django_db(transaction=True)


def _session(engine, *settings_names):
    with engine.connect() as connection:
        return {
            name: connection.execute(text("SELECT current_setting(:n)"), {"n": name}).scalar()
            for name in settings_names
        }


def test_engine_connects_exactly_where_django_does():
    with get_engine().connect() as connection:
        row = connection.execute(text(
            "SELECT current_database(), current_user, inet_server_port()")).one()
    settings_dict = connections.settings["default"]
    assert row[0] == settings_dict["NAME"]
    assert row[0].startswith("test_")
    assert row[1] == (settings_dict["USER"] or "postgres")
    assert row[2] == int(settings_dict["PORT"] or 5432)


def _statement_timeout_source(run) -> str:
    """Where the session's statement_timeout came from: "client" when poolkit sent it."""
    return run("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")


def test_pool_settings_reach_the_session_and_the_pool():
    engine = get_engine()
    assert _session(engine, "TimeZone") == {"TimeZone": "UTC"}
    # The demo project's POOLKIT gives "default" the small_api preset: 10 + 10.
    assert engine.pool.size() == 10
    assert pool_stats().pool_capacity == 20


def test_orm_connections_keep_the_servers_statement_timeout(settings):
    """A drop-in backend sends no statement_timeout unless asked (stock Django sends none,
    and a migration must not be cut at 30 s); a SQLAlchemy-only engine keeps the 30 s."""
    def orm(sql: str) -> str:
        with connections["default"].cursor() as cursor:
            cursor.execute(sql)
            return str(cursor.fetchone()[0])

    def engine_of(name: str):
        def run(sql: str) -> str:
            with get_engine(name).connect() as connection:
                return str(connection.execute(text(sql)).scalar())
        return run

    assert _statement_timeout_source(orm) != "client"
    assert _statement_timeout_source(engine_of("default")) != "client"  # the ORM's pool
    settings.POOLKIT = {**settings.POOLKIT, "ENGINES": {"side": {
        "url": "postgresql://postgres@127.0.0.1:5432/" + connections.settings["default"]["NAME"]}}}
    assert _session(get_engine("side"), "statement_timeout") == {"statement_timeout": "30s"}
    settings.POOLKIT = {"DATABASES": {"default": {"statement_timeout": 4000}}}
    connections["default"].close()
    assert orm("SELECT current_setting('statement_timeout')") == "4s"


def test_application_name_names_poolkit_alias_and_process(admin):
    import os

    with get_engine().connect():
        rows = server_connections(admin, f"poolkit:default:%:{os.getpid()}")
    assert len(rows) == 1
    assert rows[0].datname == connections.settings["default"]["NAME"]


def test_options_such_as_sslmode_are_passed_through():
    # The local server has no TLS: "disable" connects in clear, "require" must be refused by
    # libpq itself, which proves the option reached it.
    options = connections.settings["default"]["OPTIONS"]
    options["sslmode"] = "disable"
    try:
        with get_engine().connect() as connection:
            assert connection.execute(text(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar() is False
        options["sslmode"] = "require"
        with pytest.raises(OperationalError, match="server does not support SSL"):
            get_engine().connect()
    finally:
        del options["sslmode"]


def test_user_options_are_kept_and_their_statement_timeout_wins_over_the_default():
    options = connections.settings["default"]["OPTIONS"]
    options["options"] = "-c search_path=public,pg_catalog -c statement_timeout=1234"
    try:
        values = _session(get_engine(), "search_path", "statement_timeout")
    finally:
        del options["options"]
    assert values == {"search_path": "public,pg_catalog", "statement_timeout": "1234ms"}


def test_explicit_statement_timeout_setting_wins_over_user_options(settings):
    settings.POOLKIT = {"DEFAULTS": {"statement_timeout": 5000}}
    options = connections.settings["default"]["OPTIONS"]
    options["options"] = "-c statement_timeout=1234"
    try:
        assert _session(get_engine(), "statement_timeout") == {"statement_timeout": "5s"}
    finally:
        del options["options"]


def test_statement_timeout_none_leaves_the_server_value(settings):
    settings.POOLKIT = {"DEFAULTS": {"statement_timeout": None}}
    assert _session(get_engine(), "statement_timeout") == {"statement_timeout": "0"}


def test_service_option_connects_through_pg_service_file(tmp_path, monkeypatch):
    settings_dict = connections.settings["default"]
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(
        "[poolkit_test]\n"
        f"host={settings_dict['HOST'] or '127.0.0.1'}\nport={settings_dict['PORT'] or 5432}\n"
        f"dbname={settings_dict['NAME']}\nuser={settings_dict['USER'] or 'postgres'}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    saved = {key: settings_dict[key] for key in ("NAME", "HOST", "PORT", "USER")}
    settings_dict.update(NAME="", HOST="", PORT="", USER="")
    settings_dict["OPTIONS"]["service"] = "poolkit_test"
    try:
        with get_engine().connect() as connection:
            assert connection.execute(text("SELECT current_database()")).scalar() == (
                saved["NAME"])
    finally:
        settings_dict.update(saved)
        del settings_dict["OPTIONS"]["service"]


def test_same_settings_same_engine_and_a_changed_name_gives_a_new_pool(admin):
    first = get_engine()
    assert get_engine() is first
    with first.connect():
        pass
    settings_dict = connections.settings["default"]
    original = settings_dict["NAME"]
    settings_dict["NAME"] = "postgres"
    try:
        second = get_engine()
        with second.connect() as connection:
            assert connection.execute(text("SELECT current_database()")).scalar() == "postgres"
    finally:
        settings_dict["NAME"] = original
    assert second is not first
    # The old pool was disposed: nothing of this process stays connected to the test database
    # except what the new engine (now rebuilt for the original name) opens.
    third = get_engine()
    assert third is not second
    import os

    rows = server_connections(admin, f"poolkit:default:%:{os.getpid()}")
    assert [row.datname for row in rows] == []


def test_override_settings_rebuilds_the_pool_with_new_settings():
    assert get_engine().pool.size() == 10
    with override_settings(POOLKIT={"DATABASES": {"default": {"pool_size": 3}}}):
        assert get_engine().pool.size() == 3
    assert get_engine().pool.size() == 10


def test_concurrent_first_use_builds_one_engine():
    # All 16 start together (fan_out's start barrier).
    engines = fan_out(lambda _: get_engine(), 16)
    assert len({id(engine) for engine in engines}) == 1


def test_nothing_is_built_or_connected_before_first_use(admin):
    import os

    assert engine_registry.built("default", "sync") is None
    assert pool_stats().built is False
    assert server_connections(admin, f"poolkit:%:{os.getpid()}") == []


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(UnknownAlias, match=r"no database or engine named 'nope' \(known: "):
        get_engine("nope")


def test_extra_engine_from_poolkit_engines(settings, admin):
    settings.POOLKIT = {"ENGINES": {"analytics": {
        "url": "postgresql://postgres@127.0.0.1:5432/postgres", "pool_size": 2,
        "statement_timeout": 1500, "application_name": "analytics-{alias}"}}}
    engine = get_engine("analytics")
    assert engine.pool.size() == 2
    with engine.connect() as connection:
        assert connection.execute(text("SELECT current_setting('statement_timeout')")).scalar() == (
            "1500ms")
        assert server_connections(admin, "analytics-analytics")


def test_sqlite_alias_gets_an_engine(settings, tmp_path):
    settings.POOLKIT = {"ENGINES": {"local": {"url": f"sqlite:///{tmp_path / 'x.db'}",
                                              "pool_size": 2}}}
    with get_engine("local").connect() as connection:
        assert connection.execute(text("SELECT 41 + 1")).scalar() == 42
    assert pool_stats("local").checkouts == 1


async def test_async_engine_is_a_separate_pool(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 4, "async_pool_size": 2}}}
    engine = get_async_engine()
    async with engine.connect() as connection:
        result = await connection.execute(text("SELECT current_database()"))
        assert result.scalar() == connections.settings["default"]["NAME"]
    assert pool_stats(kind="async").pool_size == 2
    assert pool_stats(kind="async").checkouts == 1
    assert pool_stats().checkouts == 0
    await engine.dispose()
