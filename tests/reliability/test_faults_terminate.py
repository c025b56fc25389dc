"""Scenario 15: the server ends every pooled connection while traffic flows.

Twenty rounds, each: twelve worker threads fill the pool (twelve requests held at once),
every server process of the alias is ended with ``pg_terminate_backend``, and ten sequential
requests follow at once, 200 requests per configuration. Side by side in one run: poolkit's
defaults (ORM, SQLAlchemy sync and async engines), poolkit with pre-ping off, Django's stock
backend with ``CONN_MAX_AGE=60`` without and with ``CONN_HEALTH_CHECKS``, and Django's own
psycopg pool (``OPTIONS["pool"]``, Django >= 5.1) without and with ``CONN_HEALTH_CHECKS``
(which gives it psycopg_pool's ``check``).

The requests race the terminations: the pre-ping can see a quiet socket while the server's
goodbye is on its way. Poolkit resends the checkout's first statement when the server
provably never ran it (``docs/resend.rst``), so its defaults fail none: that, and that no
request hangs, is all this test asserts; the other figures are published (RESULT line).

The server is the main one (5432, its ``postgres`` database, ``SELECT`` only); only this
process's connections, told apart by ``application_name``, are ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import django
import psycopg
from django.db import close_old_connections, connections
from sqlalchemy import text

from django_poolkit import get_async_engine, get_engine

from ..helpers.faults import add_pooled_alias, poolkit_with
from ..helpers.results import record

ROUNDS, FILL, SEQUENTIAL = 20, 12, 10
#: A request that takes longer than this is hung (a connect takes milliseconds).
HUNG_S = 60.0
STOCK = "django.db.backends.postgresql"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _terminate(pattern: str) -> int:
    """End every server process whose application_name matches ``pattern``; don't wait."""
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "application_name LIKE %s AND pid <> pg_backend_pid()",
                             (pattern,)).fetchall()
    return len(rows)


class Rounds:
    """Counts of one configuration's 200 requests."""

    def __init__(self) -> None:
        self.failed = 0
        self.hung = 0
        self.terminated = 0
        self.fill_failed = 0  # requests of the filling phase (not among the 200)
        self.errors: dict[str, int] = {}

    def failure(self, error: BaseException) -> None:
        self.failed += 1
        lines = str(error).strip().splitlines()
        phrase = f"{type(error).__name__}: {lines[0] if lines else ''}"
        self.errors[phrase] = self.errors.get(phrase, 0) + 1

    def figures(self) -> dict[str, Any]:
        return {"failed": self.failed, "of": ROUNDS * SEQUENTIAL, "hung": self.hung,
                "terminated": self.terminated, "fill_failed": self.fill_failed,
                "errors": self.errors}


def _threaded(request: Callable[..., None], pattern: str, finish: Callable[..., None]) -> Rounds:
    """The rounds on twelve persistent worker threads (a threaded server's workers)."""
    counts = Rounds()
    with ThreadPoolExecutor(FILL) as workers:
        for _ in range(ROUNDS):
            # The barrier holds the twelve requests inside their checkouts at once: the pool
            # fills. (A worker's persistent connection may have died in the last round.)
            filled = threading.Barrier(FILL)
            for future in [workers.submit(request, filled) for _ in range(FILL)]:
                try:
                    future.result(timeout=HUNG_S)
                except FutureTimeout:
                    counts.hung += 1
                except Exception:
                    counts.fill_failed += 1
            counts.terminated += _terminate(pattern)
            for _ in range(SEQUENTIAL):
                future = workers.submit(request)
                try:
                    future.result(timeout=HUNG_S)
                except FutureTimeout:
                    counts.hung += 1
                except Exception as error:
                    counts.failure(error)
        # Every worker closes what it holds (the stock backend's persistent connections).
        closing = threading.Barrier(FILL)
        for future in [workers.submit(finish, closing) for _ in range(FILL)]:
            future.result(timeout=HUNG_S)
    return counts


def _hold(barrier: threading.Barrier | None) -> None:
    if barrier is not None:
        with contextlib.suppress(threading.BrokenBarrierError):  # another one failed
            barrier.wait(timeout=HUNG_S)


def _orm(alias: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """A Django request on ``alias`` (the request signals' connection handling around one
    query), and the worker's closing step."""

    def request(barrier: threading.Barrier | None = None) -> None:
        close_old_connections()
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
                _hold(barrier)
        except BaseException:
            if barrier is not None:
                barrier.abort()
            raise
        finally:
            close_old_connections()

    def finish(barrier: threading.Barrier) -> None:
        connections[alias].close()
        barrier.wait(timeout=HUNG_S)

    return request, finish


def _sqlalchemy(alias: str) -> tuple[Callable[..., None], Callable[..., None]]:
    def request(barrier: threading.Barrier | None = None) -> None:
        try:
            with get_engine(alias).connect() as sa:
                sa.execute(text("SELECT 1")).scalar()
                _hold(barrier)
        except BaseException:
            if barrier is not None:
                barrier.abort()
            raise

    def finish(barrier: threading.Barrier) -> None:
        barrier.wait(timeout=HUNG_S)

    return request, finish


def _async_rounds(alias: str, pattern: str) -> Rounds:
    counts = Rounds()

    async def request(barrier: asyncio.Barrier | None = None) -> None:
        async with get_async_engine(alias).connect() as sa:
            (await sa.execute(text("SELECT 1"))).scalar()
            if barrier is not None:
                await asyncio.wait_for(barrier.wait(), HUNG_S)

    async def rounds() -> None:
        for _ in range(ROUNDS):
            barrier = asyncio.Barrier(FILL)
            await asyncio.wait_for(
                asyncio.gather(*(request(barrier) for _ in range(FILL))), HUNG_S)
            counts.terminated += await asyncio.to_thread(_terminate, pattern)
            for _ in range(SEQUENTIAL):
                try:
                    await asyncio.wait_for(request(), HUNG_S)
                except TimeoutError:
                    counts.hung += 1
                except Exception as error:
                    counts.failure(error)
        await get_async_engine(alias).dispose()

    asyncio.run(rounds())
    return counts


def _app_name(label: str) -> str:
    return f"reliab15:{label}:{os.getpid()}"


def test_s15_terminated_while_traffic_flows(settings: Any, unblocked: None) -> None:
    figures: dict[str, Any] = {}
    base = {"HOST": "127.0.0.1", "PORT": "5432", "NAME": "postgres"}

    def pooled(label: str, knobs: dict[str, Any], kind: str = "orm") -> None:
        original = getattr(settings, "POOLKIT", {})
        with add_pooled_alias(f"s15{label}", **base) as alias:
            settings.POOLKIT = poolkit_with({alias: {
                "application_name": _app_name(label), **knobs}})
            pattern = _app_name(label)
            try:
                if kind == "async":
                    figures[label] = _async_rounds(alias, pattern).figures()
                else:
                    request, finish = _orm(alias) if kind == "orm" else _sqlalchemy(alias)
                    figures[label] = _threaded(request, pattern, finish).figures()
            finally:
                settings.POOLKIT = original  # before the alias goes

    def stock(label: str, **changes: Any) -> None:
        options = {"application_name": _app_name(label), **changes.pop("OPTIONS", {})}
        with add_pooled_alias(f"s15{label}", ENGINE=STOCK, OPTIONS=options, **base,
                              **changes) as alias:
            request, finish = _orm(alias)
            figures[label] = _threaded(request, _app_name(label), finish).figures()
            close_pool = getattr(connections[alias], "close_pool", None)  # Django >= 5.1
            if close_pool is not None:
                close_pool()

    pooled("poolkit_defaults", {})
    pooled("poolkit_sqlalchemy_sync", {}, kind="sqlalchemy")
    pooled("poolkit_sqlalchemy_async", {}, kind="async")
    pooled("poolkit_pre_ping_off", {"pool_pre_ping": False})
    stock("stock_max_age_60", CONN_MAX_AGE=60)
    stock("stock_max_age_60_health_checks", CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True)
    # timeout: a checkout Django's pool cannot serve fails after 1 s (its default is 30 s;
    # with health checks its terminated connections were not replaced within 3 s either).
    django_pool = {"pool": {"min_size": 5, "max_size": 15, "timeout": 1}}
    if django.VERSION >= (5, 1):
        stock("django_pool", CONN_MAX_AGE=0, OPTIONS=django_pool)
        # CONN_HEALTH_CHECKS gives Django's pool psycopg_pool's check: a round trip a checkout.
        stock("django_pool_health_checks", CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=True,
              OPTIONS=django_pool)
    else:  # Django < 5.1 has no pool of its own
        figures["django_pool"] = figures["django_pool_health_checks"] = None

    poolkit = ("poolkit_defaults", "poolkit_sqlalchemy_sync", "poolkit_sqlalchemy_async")
    met = all(figures[label]["failed"] == 0 for label in poolkit)
    record("15 terminated while traffic flows",
           bar="poolkit's defaults fail 0 of 200 (ORM, SQLAlchemy sync and async); no hang",
           met=met, rounds=ROUNDS, fill=FILL, sequential=SEQUENTIAL, **figures)
    hung = {label: value["hung"] for label, value in figures.items() if value and value["hung"]}
    assert not hung, f"requests hung beyond {HUNG_S} s: {hung}"
    failed = {label: figures[label] for label in poolkit if figures[label]["failed"]}
    assert not failed, f"poolkit's defaults failed requests: {failed}"
