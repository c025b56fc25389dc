"""The dashboard's server-side cost: time to render the page and its JSON with 5 aliases and 2
clusters, and what it asks the databases. Prints figures; asserts nothing.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/poolkit \\
    TEST_REPLICA_URL=postgres://postgres@127.0.0.1:5433/poolkit \\
    .venv/bin/python -m bench.dashboard [--renders 200]

Aliases: ``default`` and ``replica`` (cluster ``main``), ``orders`` and ``orders_replica``
(cluster ``orders``, the same two servers under other names), and ``reports`` (through
PgBouncer when ``TEST_PGBOUNCER_URL`` is set, else the primary). Every pool is built and used
once first, so the page has figures to draw. "Warm" renders reuse the background server reads
(at most one per alias per SERVER_TTL_S); "cold" ones start them and wait up to WAIT_S.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit


def _entry(url: str, **extra: Any) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"ENGINE": "django_poolkit.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"), "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""), "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""), **extra}


def configure() -> None:
    """Django settings with 5 aliases and 2 clusters, the dashboard mounted, no admin."""
    from django.conf import settings

    primary = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit")
    replica = os.environ.get("TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:5433/poolkit")
    bouncer = os.environ.get("TEST_PGBOUNCER_URL")
    databases = {
        "default": _entry(primary), "replica": _entry(replica),
        "orders": _entry(primary), "orders_replica": _entry(replica),
        "reports": _entry(bouncer or primary),
    }
    settings.configure(
        DEBUG=False, SECRET_KEY="bench-only-not-a-secret", ALLOWED_HOSTS=["*"],  # noqa: S106
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.staticfiles", "django_poolkit"],
        ROOT_URLCONF="bench.dashboard_urls", STATIC_URL="static/", USE_TZ=True,
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True, "OPTIONS": {"context_processors": [
                        "django.template.context_processors.request"]}}],
        DATABASES=databases,
        POOLKIT={
            "DATABASES": {"reports": {"pgbouncer": "transaction"}} if bouncer else {},
            "ROUTING": {"probe_interval": 1.0, "CLUSTERS": {
                "main": {"primary": "default", "replicas": ["replica"]},
                "orders": {"primary": "orders", "replicas": ["orders_replica"],
                           "apps": ["orders"]},
            }},
        },
    )


def _timed(render: Callable[[], Any], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        render()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def _summary(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"{label:<34} n={len(times):<4} median {statistics.median(times):7.2f} ms  "
            f"mean {statistics.fmean(times):7.2f} ms  p95 {p95:7.2f} ms  "
            f"max {max(times):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=200)
    options = parser.parse_args()
    configure()
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connections
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from django_poolkit import get_engine, health
    from django_poolkit.dashboard import data, views

    # Counting wrappers around the two kinds of server reads the page can cause.
    reads = {"server_snapshots": 0}
    original = data.read_server

    def counted(alias: str, timeout: float = 2.0) -> Any:
        reads["server_snapshots"] += 1
        return original(alias, timeout)

    data.read_server = counted  # type: ignore[assignment]

    for alias in connections:
        with get_engine(alias).connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    data.install()
    for alias in connections:
        with get_engine(alias).connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    factory = RequestFactory()
    staff = User(username="bench", is_staff=True, is_active=True)

    def page() -> Any:
        request = factory.get("/poolkit/")
        request.user = staff
        response = views.index(request)
        assert response.status_code == 200
        return response

    def json_answer() -> Any:
        request = factory.get("/poolkit/data.json")
        request.user = staff
        response = views.data_view(request)
        assert response.status_code == 200
        return response

    cold_started = time.perf_counter()
    first = page()
    cold_ms = (time.perf_counter() - cold_started) * 1000.0
    # Let the first background reads finish, then measure warm renders.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            refreshed.read().value is None for refreshed in data._state.servers.values()):
        time.sleep(0.05)
    probes_before = health.checker.probes_started
    reads_before = reads["server_snapshots"]
    with contextlib.ExitStack() as stack:
        captured = [stack.enter_context(CaptureQueriesContext(connections[alias]))
                    for alias in connections]
        warm_started = time.monotonic()
        page_times = _timed(page, options.renders)
        json_times = _timed(json_answer, options.renders)
        elapsed = time.monotonic() - warm_started
    orm = [query for capture in captured for query in capture]
    snapshots = reads["server_snapshots"] - reads_before
    probes = health.checker.probes_started - probes_before
    renders = 2 * options.renders
    print(f"dashboard render cost: 5 aliases, 2 clusters, pid {os.getpid()}")
    print(f"first page (starts the server reads, waits <= {data.WAIT_S} s): {cold_ms:.1f} ms, "
          f"{len(first.content) / 1024:.0f} KiB")
    print(_summary("page (HTML), warm", page_times))
    print(_summary("JSON (data + rendered sections)", json_times))
    print(f"ORM queries made by the dashboard over {renders} renders: {len(orm)}")
    print(f"server reads over {renders} renders in {elapsed:.1f} s: {snapshots} snapshots "
          f"(one bounded poolkit-ops connection and 5 statements each; at most 1 per alias "
          f"per {data.SERVER_TTL_S:g} s), {probes} health probes (1 connection, 1 query "
          f"each; the checker's cache_ttl)")
    states = {entry["alias"]: entry["server_status"]["state"]
              for entry in data.collect(wait=0)["databases"]}
    print("server view per alias: " + ", ".join(f"{alias} {state}"
                                                for alias, state in states.items()))
    print("per refresh every 5 s in steady state: <= 5 snapshots = 5 connections and 25 "
          "statements, plus the health checker's probes; 0 ORM queries")


if __name__ == "__main__":
    main()
