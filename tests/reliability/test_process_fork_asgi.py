"""Scenario 12: fork and ASGI.

- Fork: a process warms its pool up, keeps a connection checked out (the ORM's, and one from
  ``get_engine()``) and calls ``os.fork()``, as a preloading server or a prefork worker pool
  does. Parent and child then serve requests (Django's ``request_started`` and
  ``request_finished`` around each, as every server sends them); the child exits normally
  (``atexit`` closes its pools) and the parent goes on with its inherited connections.
  Server processes used by both OS processes must be 0, and the parent's connections must
  survive the child's exit.
- ASGI: 1000 requests, 16 at a time, through uvicorn and poolkit's lifespan wrapper, mixing
  sync ORM views, async ORM views and ``get_async_engine()``; the server's connections of that
  process are sampled throughout: never above the cap, and nothing checked out afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connections

from ..helpers.results import record
from ..helpers.server import server_connections
from ..helpers.tcpproxy import free_port
from ..helpers.threads import BackgroundSampler

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]

FORK_PROBE = textwrap.dedent('''
    import json, os, sys
    import django
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connection
    from sqlalchemy import text
    from django_poolkit import get_engine

    def orm_pid():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    def engine_pid():
        with get_engine().connect() as sa:
            return sa.execute(text("SELECT pg_backend_pid()")).scalar()

    def request(view):
        request_started.send(sender=None)
        try:
            return view()
        finally:
            request_finished.send(sender=None)

    CAREFUL = sys.argv[1] == "requests"
    before = {orm_pid(), engine_pid(), engine_pid()}  # warm, and the ORM's stays checked out
    held = get_engine().connect()
    held_pid = held.execute(text("SELECT pg_backend_pid()")).scalar()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        used = set()
        for _ in range(20):
            used.add(request(orm_pid) if CAREFUL else orm_pid())
            used.add(request(engine_pid))
        with os.fdopen(write, "w") as stream:
            json.dump({"pid": os.getpid(), "used": sorted(used)}, stream)
        sys.exit(0)  # a normal exit: atexit closes the child's own pools
    os.close(write)
    with os.fdopen(read) as stream:
        child_report = json.load(stream)
    _, status = os.waitpid(child, 0)
    after, errors = set(), []
    for _ in range(20):
        try:
            after.add(request(orm_pid) if CAREFUL else orm_pid())
            after.add(request(engine_pid))
            after.add(held.execute(text("SELECT pg_backend_pid()")).scalar())
        except Exception as error:
            errors.append(type(error).__name__ + ": " + str(error).splitlines()[0])
    print(json.dumps({"parent": os.getpid(), "child": child_report["pid"],
                      "parent_used": sorted(before | {held_pid} | after),
                      "child_used": child_report["used"], "child_status": status,
                      "parent_errors": errors}))
''')


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/"
                            + connections.settings["default"]["NAME"],
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", **extra}


def _fork(tmp_path: Path, mode: str) -> dict[str, Any]:
    (tmp_path / "fork_probe.py").write_text(FORK_PROBE)
    result = subprocess.run([sys.executable, "fork_probe.py", mode], cwd=tmp_path,
                            env=_environment(tmp_path), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    report["shared"] = sorted(set(report["parent_used"]) & set(report["child_used"]))
    return report


# -- ASGI ---------------------------------------------------------------------------------------

ASGI_SETTINGS = textwrap.dedent('''
    from testproject.settings_test import *  # noqa: F403
    ROOT_URLCONF = "relb_asgi_urls"
    ALLOWED_HOSTS = ["*"]
    # No overflow: no connection is closed on checkin, so a backend the server still lists
    # while it exits can never be counted next to its replacement.
    POOLKIT = {"DATABASES": {"default": {
        "pool_size": 4, "max_overflow": 0, "pool_timeout": 10,
        "async_pool_size": 2, "async_max_overflow": 0}}}
''')

ASGI_URLS = textwrap.dedent('''
    from django.http import JsonResponse
    from django.urls import include, path
    from sqlalchemy import text
    from django_poolkit import all_pool_stats, get_async_engine
    from testproject.demo.models import Note

    def sync_orm(request):
        return JsonResponse({"notes": Note.objects.count()})

    async def async_orm(request):
        return JsonResponse({"notes": await Note.objects.acount()})

    async def async_engine(request):
        async with get_async_engine().connect() as connection:
            value = (await connection.execute(text("SELECT count(*) FROM demo_note"))).scalar()
        return JsonResponse({"notes": value})

    def pools(request):
        return JsonResponse({"pools": [stats.as_dict() for stats in all_pool_stats()]})

    urlpatterns = [
        path("sync-orm/", sync_orm), path("async-orm/", async_orm),
        path("async-engine/", async_engine), path("pools/", pools),
        path("health/", include("django_poolkit.urls")),
        path("", include("testproject.demo.urls")),
    ]
''')

ASGI_APP = textwrap.dedent('''
    from django_poolkit.asgi import get_asgi_application
    application = get_asgi_application(shutdown_timeout=5)
''')

PATHS = ["/sync-orm/", "/async-orm/", "/async-engine/", "/notes/sqlalchemy/", "/"]
CAP = 4 + 2  # the sync and the async pool_size (no overflow)


def _get(port: int, path: str, timeout: float = 15) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        body: bytes = reply.read()
        return body


class Sampler(BackgroundSampler):
    """Counts, every few milliseconds, the server's connections named after one process."""

    def __init__(self, dsn: str, pattern: str) -> None:
        self.dsn, self.pattern, self.peak, self.samples = dsn, pattern, 0, 0
        super().__init__()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            while not self._stop.is_set():
                count = admin.execute("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name LIKE %s",
                                      (self.pattern,)).fetchone()
                assert count is not None
                self.peak = max(self.peak, int(count[0]))
                self.samples += 1
                self._stop.wait(0.005)


def _asgi(tmp_path: Path, admin: Any, server_dsn: str) -> dict[str, Any]:
    (tmp_path / "relb_asgi_settings.py").write_text(ASGI_SETTINGS)
    (tmp_path / "relb_asgi_urls.py").write_text(ASGI_URLS)
    (tmp_path / "relb_asgi_app.py").write_text(ASGI_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "on", "--log-level", "warning", "relb_asgi_app:application"],
        cwd=tmp_path, env=_environment(tmp_path, DJANGO_SETTINGS_MODULE="relb_asgi_settings"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                _get(port, "/health/live/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
                time.sleep(0.1)
        pattern = f"poolkit:default:%:{server.pid}"
        statuses: list[int] = []

        def call(number: int) -> int:
            try:
                _get(port, PATHS[number % len(PATHS)])
                return 200
            except urllib.error.HTTPError as error:
                return error.code

        with Sampler(server_dsn, pattern) as sampler, ThreadPoolExecutor(16) as clients:
            statuses += clients.map(call, range(200))
            after_200 = len(server_connections(admin, pattern))
            statuses += clients.map(call, range(200, 1000))
        after_1000 = len(server_connections(admin, pattern))
        pools = json.loads(_get(port, "/pools/"))["pools"]
        checked_out = sum(pool["gauges"]["pool_checked_out"] for pool in pools
                          if pool["built"])
        return {"requests": len(statuses), "failed": sum(code != 200 for code in statuses),
                "peak": sampler.peak, "samples": sampler.samples, "after_200": after_200,
                "after_1000": after_1000, "checked_out_after": checked_out}
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_scenario_12_fork_and_asgi(tmp_path, admin, server_dsn):
    careful = _fork(tmp_path, "requests")
    careless = _fork(tmp_path, "no-request-boundaries")
    asgi = _asgi(tmp_path, admin, server_dsn)
    met = (not careful["shared"] and not careful["parent_errors"]
           and careful["child_status"] == 0 and not careless["shared"]
           and not careless["parent_errors"] and asgi["failed"] == 0
           and asgi["peak"] <= CAP and asgi["after_1000"] <= CAP
           and asgi["checked_out_after"] == 0)
    record("12 fork and ASGI",
           bar="server processes used by two OS processes 0, with or without request "
               "boundaries in the child; after 1000 ASGI requests: "
               f"connections <= cap ({CAP}) throughout, checked out 0, failed 0",
           met=met, shared_after_fork=len(careful["shared"]),
           parent_errors_after_child_exit=len(careful["parent_errors"]),
           shared_without_request_boundaries=len(careless["shared"]),
           asgi_requests=asgi["requests"], asgi_failed=asgi["failed"],
           asgi_peak_connections=asgi["peak"], asgi_connections_after_200=asgi["after_200"],
           asgi_connections_after_1000=asgi["after_1000"],
           asgi_checked_out_after=asgi["checked_out_after"], cap=CAP)
    assert careful["shared"] == [], careful
    assert careful["parent_errors"] == [], careful
    assert careful["child_status"] == 0
    assert careless["shared"] == [], careless
    assert careless["parent_errors"] == [], careless
    assert asgi["failed"] == 0, asgi
    assert asgi["peak"] <= CAP, asgi
    assert asgi["after_1000"] <= CAP, asgi
    assert asgi["checked_out_after"] == 0, asgi
