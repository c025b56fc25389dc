"""Faults on the pooled backend: every pooled server process killed (pre-ping on, in both
modes, and off), and pool exhaustion counted on the server."""

from __future__ import annotations

import os
import threading

import pytest
from django.db import OperationalError, connection
from sqlalchemy import text

from django_poolkit import PoolTimeout, get_engine, pool_stats
from testproject.demo.models import Note

from .helpers.backend import terminate
from .helpers.threads import fan_out, running

pytestmark = pytest.mark.django_db(transaction=True)

POOL = 5
REQUESTS = 50


@pytest.fixture(autouse=True)
def _closed():
    connection.close()
    yield
    connection.close()


def _fill_and_kill(admin) -> list[int]:
    """Open POOL idle connections in the pool, then terminate every one of them."""
    held = [get_engine().connect() for _ in range(POOL)]
    pids = [sa.execute(text("SELECT pg_backend_pid()")).scalar() for sa in held]
    for sa in held:
        sa.close()
    assert pool_stats().pool_checked_in == POOL
    terminate(admin, pids)
    return pids


def _requests(count: int) -> tuple[int, list[int]]:
    """``count`` ORM requests (connect, query, close); failures and the pids that served."""
    failures = 0
    pids = []
    for _ in range(count):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
        except OperationalError:
            failures += 1
        finally:
            connection.close()
    return failures, pids


@pytest.mark.parametrize("mode", ["socket", "query"])
def test_pre_ping_on_no_request_fails_after_every_server_process_is_killed(settings, admin,
                                                                           mode):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": POOL, "pre_ping_mode": mode}}}
    killed = _fill_and_kill(admin)
    failures, served = _requests(REQUESTS)
    assert failures == 0
    assert not set(served) & set(killed)
    # SQLAlchemy users of the same pool are served too.
    with get_engine().connect() as sa:
        assert sa.execute(text("SELECT pg_backend_pid()")).scalar() not in killed
    assert pool_stats().invalidations >= 1


def test_pre_ping_off_no_request_fails_and_the_pool_is_replaced(settings, admin):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": POOL, "pool_pre_ping": False}}}
    killed = _fill_and_kill(admin)
    failures, served = _requests(REQUESTS)
    # The first request meets a dead connection: the server's 57P01 is its first statement's
    # only answer, so the statement is resent on a new connection (engines.resend), and
    # the dead one's checkin replaces the pool's idle ones.
    assert failures == 0
    assert len(served) == REQUESTS
    assert not set(served) & set(killed)
    assert pool_stats().invalidations == 1


def test_exhaustion_raises_pool_timeout_and_the_server_never_sees_more(settings, admin):
    size, overflow = 2, 1
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": size, "max_overflow": overflow,
                                                  "pool_timeout": 0.3}}}
    holding = threading.Barrier(size + overflow + 1)
    release = threading.Event()

    def hold(_: int) -> None:
        try:
            Note.objects.count()
            holding.wait(timeout=10)
            release.wait(timeout=10)
        finally:
            connection.close()

    with running(hold, size + overflow):
        holding.wait(timeout=10)
        try:
            with pytest.raises(PoolTimeout) as raised:
                Note.objects.count()
            assert raised.value.alias == "default"
            assert (raised.value.pool_size, raised.value.max_overflow) == (size, overflow)
            assert "pool 'default' exhausted: no connection free within 0.3 s" in str(
                raised.value)
            on_server = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"poolkit:default:%:{os.getpid()}",)).fetchone()[0]
            assert on_server == size + overflow
        finally:
            release.set()
    assert pool_stats().timeouts == 1
    assert Note.objects.count() == 0


def test_many_threads_never_exceed_the_pool_on_the_server(settings, admin):
    size, overflow, workers = 2, 1, 8
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": size, "max_overflow": overflow,
                                                  "pool_timeout": 10}}}
    pattern = f"poolkit:default:%:{os.getpid()}"
    stop = threading.Event()
    peak = 0

    def work(_: int) -> None:
        try:
            for _ in range(20):
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(0.002)")
                connection.close()
        finally:
            connection.close()

    def watch(_: int) -> None:
        nonlocal peak
        while not stop.is_set():
            count = admin.execute("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE application_name LIKE %s", (pattern,)).fetchone()[0]
            peak = max(peak, count)

    with running(watch):
        try:
            fan_out(work, workers)
        finally:
            stop.set()
    assert 1 <= peak <= size + overflow
    assert pool_stats().checkouts == workers * 20
