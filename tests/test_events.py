"""Pool events after real checkouts: counters, Django signals, log lines, timeouts."""

from __future__ import annotations

import logging
import re
import time

import pytest
import sqlalchemy.exc
from sqlalchemy import event, text

from django_poolkit import PoolTimeout, get_engine, pool_stats, signals
from django_poolkit.stats import COUNTER_KEYS, GAUGE_KEYS

from .helpers.backend import terminate
from .helpers.threads import running

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def received():
    """Every poolkit signal sent during the test, as (name, kwargs) pairs."""
    log: list[tuple[str, dict]] = []
    handlers = {}
    for name in signals.__all__:
        def handler(sender, _name=name, **kwargs):
            kwargs.pop("signal")
            log.append((_name, {"sender": sender, **kwargs}))
        handlers[name] = handler
        getattr(signals, name).connect(handler)
    yield log
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


def test_checkouts_and_checkins_are_counted_and_timed():
    engine = get_engine()
    for _ in range(3):
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(0.01)"))
    stats = pool_stats()
    assert (stats.connections_opened, stats.checkouts, stats.checkins) == (1, 3, 3)
    assert stats.hold_ms_max >= 10.0
    assert stats.hold_ms_total >= 30.0
    assert stats.checkout_wait_ms_total > 0.0
    assert stats.pool_checked_in == 1
    assert stats.pool_checked_out == 0


def test_gauges_follow_checked_out_connections():
    engine = get_engine()
    held = [engine.connect() for _ in range(3)]
    try:
        stats = pool_stats()
        assert (stats.pool_checked_out, stats.pool_checked_in, stats.pool_overflow) == (3, 0, 0)
    finally:
        for connection in held:
            connection.close()
    assert pool_stats().pool_checked_in == 3


def test_overflow_gauge_counts_connections_beyond_pool_size(settings):
    settings.POOLKIT = {"DEFAULTS": {"pool_size": 1, "max_overflow": 2}}
    engine = get_engine()
    held = [engine.connect() for _ in range(3)]
    try:
        assert pool_stats().pool_overflow == 2
        assert pool_stats().pool_capacity == 3
    finally:
        for connection in held:
            connection.close()
    # Overflow connections are closed on checkin; the pool keeps pool_size of them.
    stats = pool_stats()
    assert (stats.pool_overflow, stats.pool_checked_in, stats.connections_closed) == (0, 1, 2)


def test_stats_keys_are_stable():
    stats = pool_stats().as_dict()
    assert list(stats) == ["alias", "kind", "built", "gauges", "counters"]
    assert tuple(stats["gauges"]) == GAUGE_KEYS == (
        "pool_size", "pool_checked_in", "pool_checked_out", "pool_overflow", "pool_capacity",
        "pool_waiting")
    assert tuple(stats["counters"]) == COUNTER_KEYS == (
        "connections_opened", "connections_closed", "connect_errors", "checkouts", "checkins",
        "invalidations", "soft_invalidations", "resets", "timeouts",
        "checkout_wait_ms_total", "checkout_wait_ms_max", "hold_ms_total", "hold_ms_max")


def test_signals_fire_for_connect_checkout_checkin_reset_and_close(received):
    engine = get_engine()
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    engine.dispose()
    names = [name for name, _ in received]
    assert names == ["pool_connect", "pool_checkout", "pool_reset", "pool_checkin",
                     "pool_close"]
    ids = {kwargs["connection_id"] for _, kwargs in received}
    assert len(ids) == 1
    assert isinstance(ids.pop(), int)
    assert all(kwargs["sender"] == kwargs["alias"] == "default" for _, kwargs in received)
    assert all(kwargs["kind"] == "sync" for _, kwargs in received)
    checkout = dict(received)["pool_checkout"]
    checkin = dict(received)["pool_checkin"]
    assert checkout["wait_ms"] > 0
    assert checkin["hold_ms"] > 0


def test_invalidation_is_counted_signalled_and_logged(received, caplog):
    engine = get_engine()
    with caplog.at_level(logging.WARNING, logger="django_poolkit"):
        with engine.connect() as connection:
            connection.invalidate(RuntimeError("server said goodbye"))
    assert pool_stats().invalidations == 1
    invalidations = [kwargs for name, kwargs in received if name == "pool_invalidate"]
    assert len(invalidations) == 1
    assert str(invalidations[0]["error"]) == "server said goodbye"
    assert "pool 'default' (sync) invalidated connection #" in caplog.text
    assert "RuntimeError: server said goodbye" in caplog.text


def _invalidation_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if " invalidated connection #" in record.getMessage()]


def test_a_dead_idle_connection_found_at_checkout_is_logged_with_the_pings_error(admin,
                                                                                 caplog):
    engine = get_engine()
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    terminate(admin, [pid])  # an idle kill, as idle_session_timeout or an operator does
    with caplog.at_level(logging.WARNING, logger="django_poolkit"):
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    # Not SQLAlchemy's bare "InvalidatePoolError: ()": the pool, the cause, what happens next.
    [line] = _invalidation_lines(caplog)
    assert re.fullmatch(
        r"pool 'default' \(sync\) invalidated connection #\d+: the pre-ping found it dead at "
        r"checkout \(\w+: .*terminat.*\); replacing it, and the pool's older connections at "
        r"their next checkout", line), line
    assert pool_stats().invalidations == 1


def test_invalidate_pool_error_from_a_checkout_listener_is_logged_as_such(caplog):
    engine = get_engine()
    with engine.connect():
        pass  # a connection in the pool: the listener below sees its second checkout
    raised = []

    def refuse_once(dbapi_connection, record, proxy):
        if not raised:
            raised.append(True)
            raise sqlalchemy.exc.InvalidatePoolError()

    event.listen(engine, "checkout", refuse_once)
    try:
        with caplog.at_level(logging.WARNING, logger="django_poolkit"):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
    finally:
        event.remove(engine, "checkout", refuse_once)
    [line] = _invalidation_lines(caplog)
    assert re.fullmatch(
        r"pool 'default' \(sync\) invalidated connection #\d+: the pre-ping or a checkout "
        r"listener found it disconnected at checkout; replacing it, and the pool's older "
        r"connections at their next checkout", line), line


def test_soft_invalidation_is_counted(received):
    engine = get_engine()
    with engine.connect() as connection:
        connection.connection.invalidate(soft=True)
    assert pool_stats().soft_invalidations == 1
    assert [name for name, _ in received if name == "pool_soft_invalidate"] == [
        "pool_soft_invalidate"]


def test_terminated_server_process_is_replaced_by_pre_ping(admin):
    engine = get_engine()
    with engine.connect() as connection:
        first_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
    time.sleep(0.1)
    with engine.connect() as connection:
        second_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    assert second_pid != first_pid
    assert pool_stats().invalidations >= 1


def test_pool_timeout_names_the_numbers_and_is_counted(settings, received, caplog):
    settings.POOLKIT = {"DEFAULTS": {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}}
    engine = get_engine()
    with engine.connect():
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="django_poolkit"), \
                pytest.raises(PoolTimeout) as raised:
            engine.connect()
        waited = time.perf_counter() - started
    assert waited >= 0.2
    assert isinstance(raised.value, sqlalchemy.exc.TimeoutError)
    assert str(raised.value) == (
        "pool 'default' exhausted: no connection free within 0.2 s (pool_size=1, "
        "max_overflow=0, checked out=1); raise pool_size/max_overflow for this alias, "
        "release connections sooner, or shed load")
    assert pool_stats().timeouts == 1
    timeouts = [kwargs for name, kwargs in received if name == "pool_timeout"]
    assert timeouts == [{"sender": "default", "alias": "default", "kind": "sync",
                         "connection_id": None, "timeout": 0.2, "pool_size": 1,
                         "max_overflow": 0, "checked_out": 1}]
    assert "pool 'default' (sync) timed out after" in caplog.text


def test_waiting_checkout_is_measured_and_visible_while_it_waits(settings):
    settings.POOLKIT = {"DEFAULTS": {"pool_size": 1, "max_overflow": 0, "pool_timeout": 5}}
    engine = get_engine()
    holder = engine.connect()
    seen_waiting = []

    def release_later(_):
        time.sleep(0.3)
        seen_waiting.append(pool_stats().pool_waiting)
        holder.close()

    with running(release_later), engine.connect():
        pass
    assert seen_waiting == [1]
    stats = pool_stats()
    assert stats.pool_waiting == 0
    assert stats.checkout_wait_ms_max >= 250.0


def test_failed_connect_is_counted_and_leaks_no_slot(settings):
    settings.POOLKIT = {"ENGINES": {"gone": {
        "url": "postgresql://postgres@127.0.0.1:1/postgres", "pool_size": 1, "max_overflow": 0,
        "connect_timeout": 2}}}
    engine = get_engine("gone")
    for _ in range(3):
        with pytest.raises(sqlalchemy.exc.OperationalError):
            engine.connect()
    stats = pool_stats("gone")
    assert stats.connect_errors == 3
    assert (stats.pool_checked_out, stats.pool_overflow, stats.checkouts) == (0, 0, 0)


def test_listeners_survive_engine_dispose():
    engine = get_engine()
    with engine.connect():
        pass
    engine.dispose()
    with engine.connect():
        pass
    stats = pool_stats()
    assert (stats.connections_opened, stats.checkouts, stats.connections_closed) == (2, 2, 1)


def test_signal_receiver_errors_never_break_a_checkout():
    def broken(**kwargs):
        raise ValueError("receiver bug")

    signals.pool_checkout.connect(broken)
    try:
        with get_engine().connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        signals.pool_checkout.disconnect(broken)
