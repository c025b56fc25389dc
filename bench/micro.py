"""Micro-benchmarks: the in-process cost of one operation, for scale against a request.

``python -m bench.micro [--quick] [--database-url URL]`` prints one JSON document on stdout
(the harness runs it in its own process: it configures Django for itself). Every figure is
the median, over several repeats, of the mean time of one operation in a tight loop on one
thread, with one warm connection and no contention:

- one checkout + checkin of SQLAlchemy's ``QueuePool`` without and with ``pre_ping`` (a
  round trip at every checkout);
- the same for psycopg_pool's ``ConnectionPool`` without and with
  ``check=ConnectionPool.check_connection`` (an empty query in autocommit);
- poolkit's engine pool with its defaults (pre-ping in ``socket`` mode, the checkin reset,
  counters and signals), and with ``pre_ping_mode="query"`` for comparison;
- what E adds to a request: the ORM's ``connect()`` + ``close()`` through poolkit's backend
  (connection parameters, checkout, Django's session set-up, checkin);
- one ``SELECT 1`` round trip, for scale;
- ``PrimaryReplicaRouter.db_for_read()``, and Django's ``router.db_for_read()`` around it;
- the ``health/ready/`` view answering from its cache.

And one soundness check that is not a timing: poolkit with its defaults never hands out a
connection whose server process was terminated while it sat in the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/poolkit_bench"


def _configure(url: str) -> None:
    """Django settings for this process: poolkit's backend on the bench database, a
    same-server "replica" alias for the router, the health view's cache long enough to stay
    warm through the timing."""
    import django
    from django.conf import settings

    parts = urlsplit(url)
    database = {
        "ENGINE": "django_poolkit.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"), "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""), "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""), "CONN_MAX_AGE": 0, "OPTIONS": {},
    }
    settings.configure(
        DEBUG=False, SECRET_KEY="bench-only-not-a-secret",  # noqa: S106
        INSTALLED_APPS=["django_poolkit", "bench"], USE_TZ=True, TIME_ZONE="UTC",
        DATABASES={"default": database, "replica": {**database, "TEST": {"MIRROR": "default"}}},
        DATABASE_ROUTERS=["django_poolkit.routers.PrimaryReplicaRouter"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        POOLKIT={
            "DATABASES": {"default": {"pool_size": 1, "max_overflow": 0}},
            "ROUTING": {"CLUSTERS": {"main": {"primary": "default", "replicas": ["replica"]}},
                        # No prober: the "replica" is the primary's database, and a probe
                        # would take it out of rotation as "not a replica".
                        "probe_interval": None},
            "HEALTH": {"databases": ["default"], "cache_ttl": 3600},
            # The same defaults with a round trip at every checkout, for comparison.
            "ENGINES": {"query_ping": {"url": "postgresql+psycopg://" + url.split("://", 1)[1],
                                       "pool_size": 1, "max_overflow": 0,
                                       "pre_ping_mode": "query"}},
        },
        ALLOWED_HOSTS=["testserver"],
    )
    django.setup()


def _summary(means: list[float], loops: int) -> dict[str, Any]:
    return {"us": round(statistics.median(means), 2), "min_us": round(min(means), 2),
            "max_us": round(max(means), 2), "loops": loops, "repeats": len(means)}


def _mean_us(operation: Callable[[], Any], loops: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(loops):
        operation()
    return (time.perf_counter_ns() - started) / loops / 1000.0


def _interleaved(operations: dict[str, tuple[Callable[[], Any], int]],
                 repeats: int) -> dict[str, list[float]]:
    """Per operation, ``repeats`` means of one operation in microseconds, measured in
    rounds that time every operation once, so that the machine's drift (2 shared cores)
    affects all of them alike and per-round ratios pair up."""
    for operation, loops in operations.values():  # warm up
        for _ in range(max(10, loops // 10)):
            operation()
    means: dict[str, list[float]] = {key: [] for key in operations}
    for _ in range(repeats):
        for key, (operation, loops) in operations.items():
            means[key].append(_mean_us(operation, loops))
    return means


def _checkout_checkin(pool: Any) -> Callable[[], None]:
    def operation() -> None:
        pool.connect().close()

    return operation


def _sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


#: The checkout + checkin operations, in the order of the report: key -> (label, note).
CHECKOUTS = {
    "sqlalchemy_queuepool": ("SQLAlchemy QueuePool checkout+checkin",
                             "no check; reset_on_return rollback (nothing sent when idle)"),
    "sqlalchemy_queuepool_pre_ping": ("SQLAlchemy QueuePool checkout+checkin, pre_ping=True",
                                      "a round trip at every checkout (SQLAlchemy 2.1 "
                                      "sends an empty statement, ';')"),
    "psycopg_pool": ("psycopg_pool getconn+putconn", "no check"),
    "psycopg_pool_check": ("psycopg_pool getconn+putconn, check=check_connection",
                           "an empty query in autocommit"),
    "poolkit_engine_defaults": ("poolkit pool checkout+checkin, defaults",
                                "get_engine('default').pool, shared with the ORM: pre_ping "
                                "in socket mode (a zero-timeout poll), checkin reset, counters"),
    "poolkit_engine_query_ping": ("poolkit pool checkout+checkin, pre_ping_mode=query",
                                  "an empty query in autocommit at every checkout"),
    "poolkit_orm_connect_close": ("poolkit ORM connect()+close() (what E adds per request)",
                                  "Django's connection set-up around the checkout and the "
                                  "checkin; B pays none of it on a hot connection"),
}


def run(url: str, quick: bool) -> dict[str, Any]:
    """Every micro-benchmark; the results keyed as :mod:`bench.report` reads them."""
    _configure(url)
    import psycopg
    import sqlalchemy
    from django.db import connections, router
    from django.test import RequestFactory
    from psycopg_pool import ConnectionPool

    from bench.models import Item
    from django_poolkit import get_engine
    from django_poolkit.engines import engine_registry
    from django_poolkit.health import views
    from django_poolkit.routers import PrimaryReplicaRouter

    loops, repeats = (1000, 7) if quick else (4000, 15)
    slow = loops // 5  # operations with a round trip (~100 us each)
    results: dict[str, dict[str, Any]] = {}

    sa_plain = sqlalchemy.create_engine(_sqlalchemy_url(url), pool_size=1, max_overflow=0)
    sa_ping = sqlalchemy.create_engine(_sqlalchemy_url(url), pool_size=1, max_overflow=0,
                                       pool_pre_ping=True)
    pg_plain = ConnectionPool(url, min_size=1, max_size=1, open=True)
    pg_check = ConnectionPool(url, min_size=1, max_size=1, open=True,
                              check=ConnectionPool.check_connection)
    pg_plain.wait()
    pg_check.wait()
    connection = connections["default"]

    def orm_connect_close() -> None:
        connection.connect()
        connection.close()

    def get_put(pool: ConnectionPool[Any]) -> Callable[[], None]:
        return lambda: pool.putconn(pool.getconn())

    operations = {
        "sqlalchemy_queuepool": (_checkout_checkin(sa_plain.pool), loops),
        "sqlalchemy_queuepool_pre_ping": (_checkout_checkin(sa_ping.pool), slow),
        "psycopg_pool": (get_put(pg_plain), loops),
        "psycopg_pool_check": (get_put(pg_check), slow),
        "poolkit_engine_defaults": (_checkout_checkin(get_engine("default").pool), loops),
        "poolkit_engine_query_ping": (_checkout_checkin(get_engine("query_ping").pool), slow),
        "poolkit_orm_connect_close": (orm_connect_close, loops),
    }
    means = _interleaved(operations, repeats)
    for key, (label, note) in CHECKOUTS.items():
        results[key] = {"label": label, "note": note,
                        **_summary(means[key], operations[key][1])}
    ratios = [ours / theirs for ours, theirs in zip(
        means["poolkit_engine_defaults"], means["sqlalchemy_queuepool"], strict=True)]
    ratio = {"median": round(statistics.median(ratios), 3), "low": round(min(ratios), 3),
             "high": round(max(ratios), 3), "n": len(ratios)}
    sa_plain.dispose()
    sa_ping.dispose()
    pg_plain.close()
    pg_check.close()
    engine_registry.dispose()

    with psycopg.connect(url, autocommit=True) as raw:
        def select_1() -> None:
            raw.execute("SELECT 1").fetchone()

        ours = PrimaryReplicaRouter()
        means = _interleaved({
            "select_1": (select_1, slow),
            "router_db_for_read": (lambda: ours.db_for_read(Item), loops),
            "django_router_db_for_read": (lambda: router.db_for_read(Item), loops),
        }, repeats)
    for key, label, note, n in (
            ("select_1", "SELECT 1 round trip (psycopg, autocommit)", "for scale", slow),
            ("router_db_for_read", "PrimaryReplicaRouter.db_for_read()",
             "one cluster, one replica in rotation, round robin, no request scope", loops),
            ("django_router_db_for_read", "django.db.router.db_for_read() with it",
             "what the ORM calls per read query", loops)):
        results[key] = {"label": label, "note": note, **_summary(means[key], n)}

    request = RequestFactory().get("/health/ready/")

    async def health_loop() -> list[float]:
        first = await views.ready(request)
        if first.status_code != 200:
            raise RuntimeError(f"health/ready/ answered {first.status_code}: "
                               f"{first.content[:300]!r}")
        for _ in range(loops // 10):
            await views.ready(request)
        found = []
        for _ in range(repeats):
            started = time.perf_counter_ns()
            for _ in range(loops):
                await views.ready(request)
            found.append((time.perf_counter_ns() - started) / loops / 1000.0)
        return found

    results["health_ready_cached"] = {
        "label": "health/ready/ view, report cached", "note": "the async view awaited "
        "in a running loop, no HTTP: the cache lookup and the JSON response",
        **_summary(asyncio.run(health_loop()), loops)}
    engine_registry.dispose()

    results["poolkit_terminated_connection"] = _terminated(url)
    engine_registry.dispose()
    notes = [f"poolkit defaults / SQLAlchemy unchecked, paired per round: "
             f"{ratio['median']:.2f} ({ratio['low']:.2f}-{ratio['high']:.2f}) over "
             f"{ratio['n']} rounds"]
    return {"results": results, "poolkit_vs_sqlalchemy": ratio, "notes": notes}


def _terminated(url: str) -> dict[str, Any]:
    """Terminate the server process of the pool's idle connection, then check out through
    the ORM (poolkit's defaults): the query must succeed on a new server process."""
    import psycopg
    from django.db import connections

    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        first = cursor.fetchone()[0]
    connection.close()  # back to the pool, idle
    parts = urlsplit(url)
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone():
            time.sleep(0.01)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            second = cursor.fetchone()[0]
    except Exception as error:  # the failure is the finding
        connection.close()
        return {"ok": False, "detail": f"the next checkout failed: {type(error).__name__}: "
                                       f"{str(error).strip()[:200]}"}
    connection.close()
    ok = second != first
    return {"ok": ok, "detail": f"server process {first} terminated while idle in the pool; "
                                f"the next ORM query ran on {second}"
                                + ("" if ok else " (the same process?)")}


def main(argv: list[str] | None = None) -> int:
    """The command line (the harness's; runnable by hand too)."""
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer loops and repeats")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                 DEFAULT_URL))
    args = parser.parse_args(argv)
    json.dump(run(args.database_url, args.quick), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
