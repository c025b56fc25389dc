"""``client_timeout`` and the bounds on the pool's own round trips, against the real server
behind the project's TCP proxy, whose ``freeze()`` holds every byte while the kernel keeps
acknowledging: what a stopped server process or a blackholed host looks like to the client
(no server process is paused here).

Timing bounds are loose on purpose (this machine is shared): a cut must come no earlier than
its deadline and well before "forever".
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from django.db import OperationalError, connections
from sqlalchemy import event, text

from django_poolkit import ClientTimeout, PoolkitError, get_async_engine, get_engine, pool_stats
from django_poolkit.conf import KNOBS, build_settings
from django_poolkit.engines import deadline
from django_poolkit.engines.deadline import PoolkitConnection

from .helpers.tcpproxy import TcpProxy, proxy_to

ALIAS = "frozen"
#: How late a cut may come after its deadline before it counts as a hang. The frozen server
#: never answers, so the ClientTimeout itself proves the cut; this bound only catches a hang,
#: and is generous so that a loaded machine cannot fail it (the timing is not what is tested).
SLACK = 10.0

#: The deadline rides on psycopg 3.3's wait loop; on older releases the knob is refused (see
#: test_an_old_psycopg_refuses_the_knob_instead_of_ignoring_it) and there is nothing to cut.
needs_deadline = pytest.mark.skipif(
    not deadline.supported(),
    reason=f"psycopg {psycopg.__version__} has no wait deadline (3.3+): client_timeout is refused")


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    settings_dict = connections.settings["default"]
    with proxy_to(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)) as p:
        yield p


@pytest.fixture
def unblocked(request: pytest.FixtureRequest, django_db_blocker: Any) -> Iterator[None]:
    """The test database, and database access outside pytest-django's test case (whose
    ``databases`` check refuses aliases added at run time). Nothing here writes to it.

    pytest-django creates the test databases of the aliases its ``django_db`` tests name,
    when its session fixture is first built; these tests carry no such mark, so the mark is
    added here before asking for that fixture (it then covers ``-k`` selections too)."""
    request.node.add_marker(pytest.mark.django_db(databases=["default"]))
    request.getfixturevalue("django_db_setup")
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def alias(unblocked: None, proxy: TcpProxy) -> Iterator[str]:
    """A pooled alias to the test database through the proxy; removed (and its pools
    disposed) afterwards."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update({"HOST": "127.0.0.1", "PORT": str(proxy.port), "TEST": {}, "CONN_MAX_AGE": 0})
    connections.settings[ALIAS] = entry
    try:
        yield ALIAS
    finally:
        proxy.thaw()
        connections[ALIAS].close()
        del connections[ALIAS]
        connections.settings.pop(ALIAS, None)


def configure(settings: Any, **pool: Any) -> None:
    settings.POOLKIT = {"DATABASES": {ALIAS: {"pool_size": 2, "max_overflow": 0,
                                              "pool_timeout": 5, "connect_timeout": 2,
                                              **pool}}}


def orm_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid: int = cursor.fetchone()[0]
    return pid


def timed(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as error:
        return time.monotonic() - started, error
    return time.monotonic() - started, None


# --- configuration ----------------------------------------------------------------------------


def build(poolkit: Any = None, environ: dict[str, str] | None = None,
          options: dict[str, Any] | None = None) -> Any:
    databases = {"default": {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": "x",
                             "OPTIONS": options or {}}}
    return build_settings(poolkit or {}, databases, environ or {})


def test_off_by_default_and_read_from_every_layer() -> None:
    assert KNOBS["client_timeout"].default is None
    assert build()[0].pools["default"].client_timeout is None
    pools = build({"DEFAULTS": {"client_timeout": 2}})[0].pools
    assert pools["default"].client_timeout == 2
    pool = build(options={"client_timeout": "2.5"})[0].pools["default"]  # DATABASE_URL
    assert (pool.client_timeout, pool.origins["client_timeout"]) == (2.5, "url")
    pool = build(environ={"POOLKIT_CLIENT_TIMEOUT": "0.75"})[0].pools["default"]
    assert (pool.client_timeout, pool.origins["client_timeout"]) == (0.75, "environment")
    pool = build({"DATABASES": {"default": {"client_timeout": 9}}},
                 environ={"POOLKIT_DEFAULT__CLIENT_TIMEOUT": "none"})[0].pools["default"]
    assert pool.client_timeout is None


@pytest.mark.parametrize("value", [0, -1, True, float("inf"), "fast"])
def test_bad_values_name_the_key_and_the_rule(value: Any) -> None:
    settings_, problems = build({"DATABASES": {"default": {"client_timeout": value}}})
    assert settings_ is None
    assert [(p.path, p.message, p.check_id) for p in problems] == [
        ('POOLKIT["DATABASES"]["default"]["client_timeout"]',
         f"must be a number of seconds >= 0.001 and <= 86400, or None (off), got {value!r}",
         "poolkit.E003")]


def test_text_sources_are_checked_too() -> None:
    problems = build(environ={"POOLKIT_DEFAULT__CLIENT_TIMEOUT": "5s"})[1]
    assert [(p.path, p.message, p.check_id) for p in problems] == [
        ("environment variable POOLKIT_DEFAULT__CLIENT_TIMEOUT",
         "must be a number of seconds >= 0.001 and <= 86400, or None (off), got '5s'",
         "poolkit.E006")]
    problems = build(options={"client_timeout": "-2"})[1]
    assert [(p.path, p.message) for p in problems] == [
        ('DATABASES["default"]["OPTIONS"]["client_timeout"]',
         "must be a number of seconds >= 0.001 and <= 86400, or None (off), got -2.0")]
    problems = build({"DEFAULTS": {"client_timeout": "2"}})[1]
    assert "write 2.0 without quotes" in problems[0].hint


@needs_deadline
def test_a_url_parameter_is_not_passed_to_libpq(settings: Any, alias: str) -> None:
    connections.settings[alias]["OPTIONS"] = {"client_timeout": "3"}
    settings.POOLKIT = {}
    engine = get_engine(alias)
    with engine.connect() as sa:
        assert sa.execute(text("SELECT 1")).scalar() == 1
        assert sa.connection.driver_connection.poolkit_limit == 3.0


@needs_deadline
@pytest.mark.django_db
def test_every_pool_connection_is_poolkits_even_with_the_knob_off() -> None:
    with connections["default"].cursor() as cursor:
        assert isinstance(cursor.connection, PoolkitConnection)
        assert cursor.connection.poolkit_limit is None
    with get_engine().connect() as sa:
        assert isinstance(sa.connection.driver_connection, PoolkitConnection)


def test_an_old_psycopg_refuses_the_knob_instead_of_ignoring_it(
        settings: Any, alias: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline, "_WaitTimeout", None)
    configure(settings, client_timeout=1)
    with pytest.raises(PoolkitError, match=r"client_timeout of 'frozen' needs psycopg >= 3\.3"):
        get_engine(alias)
    configure(settings)
    with get_engine(alias).connect() as sa:  # without the knob it still works, unbounded
        assert not isinstance(sa.connection.driver_connection, PoolkitConnection)


# --- the cut ----------------------------------------------------------------------------------


@needs_deadline
def test_orm_query_on_a_frozen_server_is_cut_and_the_slot_comes_back(
        settings: Any, alias: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    configure(settings, client_timeout=0.6, statement_timeout=300)
    before = orm_pid(alias)
    connections[alias].close()

    # The idle connection's pre-ping (socket mode) cannot tell a frozen server: it is handed
    # out, and the query is cut.
    proxy.freeze()
    took, error = timed(lambda: orm_pid(alias))
    assert isinstance(error, OperationalError), error
    assert isinstance(error.__cause__, ClientTimeout)
    assert "no answer from the server within 0.6 s (client_timeout)" in str(error)
    assert 0.6 <= took <= 0.6 + SLACK, took
    assert connections[alias].connection.broken
    connections[alias].close()
    assert pool_stats(alias).pool_checked_out == 0
    assert "database 'frozen': no answer from the server within 0.6 s" in caplog.text

    proxy.thaw()
    assert orm_pid(alias) != before  # a fresh connection; the cut one was never reused
    connections[alias].close()
    assert pool_stats(alias).pool_checked_out == 0
    assert pool_stats(alias).invalidations >= 1


@needs_deadline
def test_sqlalchemy_query_in_flight_is_cut_and_invalidated(settings: Any, alias: str,
                                                           proxy: TcpProxy) -> None:
    configure(settings, client_timeout=0.6, statement_timeout=300)
    engine = get_engine(alias)
    with engine.connect() as sa:
        before = sa.execute(text("SELECT pg_backend_pid()")).scalar()
        proxy.freeze()
        took, error = timed(lambda: sa.execute(text("SELECT pg_sleep(0.1)")))
        assert isinstance(error, sqlalchemy.exc.OperationalError), error
        assert error.connection_invalidated
        assert isinstance(error.orig, ClientTimeout)
        assert 0.6 <= took <= 0.6 + SLACK, took
    assert pool_stats(alias).pool_checked_out == 0
    proxy.thaw()
    with engine.connect() as sa:
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() != before
    assert pool_stats(alias).pool_checked_out == 0


@needs_deadline
def test_commit_is_cut_too(settings: Any, alias: str, proxy: TcpProxy) -> None:
    configure(settings, client_timeout=0.5)
    with get_engine(alias).connect() as sa:
        sa.execute(text("SELECT 1"))  # a transaction is open
        proxy.freeze()
        took, error = timed(sa.commit)
        assert isinstance(error, sqlalchemy.exc.OperationalError), error
        assert 0.5 <= took <= 0.5 + SLACK, took
    assert pool_stats(alias).pool_checked_out == 0


@needs_deadline
def test_a_query_shorter_than_the_deadline_is_untouched(settings: Any, alias: str) -> None:
    configure(settings, client_timeout=1.0)
    with get_engine(alias).connect() as sa:
        pid = sa.execute(text("SELECT pg_backend_pid()")).scalar()
        for _ in range(3):  # each wait has the whole deadline, not their sum
            assert sa.execute(text("SELECT pg_sleep(0.4), 1")).one()[1] == 1
        assert not sa.connection.driver_connection.closed
    with get_engine(alias).connect() as sa:
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() == pid
    assert pool_stats(alias).invalidations == 0


@needs_deadline
def test_listen_waits_are_not_cut(settings: Any, alias: str) -> None:
    configure(settings, client_timeout=0.3)
    with get_engine(alias).connect() as sa:
        conn = sa.connection.driver_connection
        conn.autocommit = True
        conn.execute("LISTEN poolkit_client_timeout")
        started = time.monotonic()
        assert list(conn.notifies(timeout=0.8)) == []
        assert time.monotonic() - started >= 0.8
        assert not conn.closed
        conn.execute("UNLISTEN *")
        conn.autocommit = False


@needs_deadline
def test_statement_timeout_still_answers_first_when_the_server_runs(settings: Any,
                                                                    alias: str) -> None:
    configure(settings, client_timeout=2, statement_timeout=200)
    with get_engine(alias).connect() as sa:
        with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
            sa.execute(text("SELECT pg_sleep(1)"))
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
        assert not raised.value.connection_invalidated


# --- the pool's own round trips, with client_timeout off --------------------------------------


@needs_deadline
def test_query_pre_ping_is_bounded_and_hands_out_a_fresh_connection(
        settings: Any, alias: str, proxy: TcpProxy) -> None:
    configure(settings, pre_ping_mode="query", connect_timeout=1)
    engine = get_engine(alias)
    with engine.connect() as sa:
        before = sa.execute(text("SELECT pg_backend_pid()")).scalar()
    # New connections go straight to the server; the pooled one stays behind the proxy.
    upstream = connections.settings["default"]

    @event.listens_for(engine, "do_connect")
    def direct(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["host"], cparams["port"] = upstream["HOST"] or "127.0.0.1", upstream["PORT"]

    proxy.freeze()
    started = time.monotonic()
    with engine.connect() as sa:
        took = time.monotonic() - started
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() != before
    assert 1.0 <= took <= 1.0 + SLACK + 0.5, took  # the bound, then a fresh connect
    assert pool_stats(alias).invalidations >= 1
    assert pool_stats(alias).pool_checked_out == 0


@needs_deadline
def test_checkin_reset_is_bounded(settings: Any, alias: str, proxy: TcpProxy,
                                  caplog: pytest.LogCaptureFixture) -> None:
    configure(settings, connect_timeout=1, reset_on_return="discard_all")
    wrapper = connections[alias]
    wrapper.set_autocommit(False)
    before = orm_pid(alias)  # returned inside a transaction: the checkin reset rolls back
    proxy.freeze()
    took, error = timed(wrapper.close)
    assert error is None  # SQLAlchemy invalidates a connection whose reset failed
    assert 1.0 <= took <= 1.0 + SLACK, took
    assert "no answer from the server within 1 s (the pool's checkin reset)" in caplog.text
    stats = pool_stats(alias)
    assert (stats.pool_checked_out, stats.invalidations) == (0, 1)
    proxy.thaw()
    wrapper.set_autocommit(True)
    assert orm_pid(alias) != before  # the slot reconnects
    wrapper.close()


@needs_deadline
def test_sqlalchemy_close_rollback_is_bounded(settings: Any, alias: str,
                                              proxy: TcpProxy) -> None:
    configure(settings, connect_timeout=1)
    sa = get_engine(alias).connect()
    sa.execute(text("SELECT 1"))  # close() rolls this transaction back before the checkin
    proxy.freeze()
    took, error = timed(sa.close)
    assert isinstance(error, sqlalchemy.exc.OperationalError), error
    assert error.connection_invalidated
    assert "(a rollback)" in str(error)
    assert 1.0 <= took <= 1.0 + SLACK, took
    assert pool_stats(alias).pool_checked_out == 0


def test_the_bound_without_connect_timeout_is_fixed() -> None:
    assert deadline.own_round_trip_bound(3) == 3.0
    assert deadline.own_round_trip_bound(0) == deadline.OWN_ROUND_TRIP_BOUND


# --- async ------------------------------------------------------------------------------------


@needs_deadline
async def test_async_query_on_a_frozen_server_is_cut(settings: Any, alias: str,
                                                     proxy: TcpProxy) -> None:
    configure(settings, client_timeout=0.6)
    engine = get_async_engine(alias)
    try:
        async with engine.connect() as sa:
            await sa.execute(text("SELECT 1"))
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
                await sa.execute(text("SELECT 2"))
            took = time.monotonic() - started
            assert isinstance(raised.value.orig, ClientTimeout)
            assert raised.value.connection_invalidated
            assert 0.6 <= took <= 0.6 + SLACK, took
        assert pool_stats(alias, kind="async").pool_checked_out == 0
        proxy.thaw()
        async with engine.connect() as sa:
            assert (await sa.execute(text("SELECT 3"))).scalar() == 3
    finally:
        proxy.thaw()
        await engine.dispose()


@needs_deadline
async def test_async_rollback_is_bounded(settings: Any, alias: str,
                                                       proxy: TcpProxy) -> None:
    configure(settings, connect_timeout=1)
    engine = get_async_engine(alias)
    try:
        sa = await engine.connect()
        assert isinstance(sa.sync_connection.connection.driver_connection,
                          deadline.PoolkitAsyncConnection)
        await sa.execute(text("SELECT 1"))
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
            await sa.close()
        assert "(a rollback)" in str(raised.value)
        assert 1.0 <= time.monotonic() - started <= 1.0 + SLACK
        assert pool_stats(alias, kind="async").pool_checked_out == 0
    finally:
        proxy.thaw()
        await engine.dispose()


@needs_deadline
async def test_async_pre_ping_is_bounded_and_hands_out_a_fresh_connection(
        settings: Any, alias: str, proxy: TcpProxy) -> None:
    configure(settings, connect_timeout=1)
    engine = get_async_engine(alias)
    try:
        async with engine.connect() as sa:
            before = (await sa.execute(text("SELECT pg_backend_pid()"))).scalar()
        upstream = connections.settings["default"]

        @event.listens_for(engine.sync_engine, "do_connect")
        def direct(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            cparams["host"], cparams["port"] = upstream["HOST"] or "127.0.0.1", upstream["PORT"]

        proxy.freeze()
        started = time.monotonic()
        async with engine.connect() as sa:
            took = time.monotonic() - started
            assert (await sa.execute(text("SELECT pg_backend_pid()"))).scalar() != before
        assert 1.0 <= took <= 1.0 + SLACK + 0.5, took
    finally:
        proxy.thaw()
        await engine.dispose()
