"""Graceful shutdown and warm-up, in-process and under real servers: gunicorn (gthread, with
and without ``--preload``) and uvicorn (lifespan), checked on the server with
``pg_stat_activity`` by ``application_name`` and worker pid."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from django_poolkit import get_engine, pool_stats
from django_poolkit.asgi import LifespanApplication
from django_poolkit.engines import engine_registry
from django_poolkit.lifecycle import shutdown, warm_up

from .helpers.server import server_connections
from .helpers.threads import running

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def side(settings):
    """An engine of its own on the test database, named poolkit:side:<host>:<pid>, so the
    ORM's use of "default" never blurs the counts."""
    settings.POOLKIT = {
        "DATABASES": {"default": {"preset": "small_api"}},
        "ENGINES": {"side": {"url": "postgresql://postgres@127.0.0.1:5432/"
                             + connections.settings["default"]["NAME"], "pool_size": 3}},
    }
    return get_engine("side")


def _wait_for(condition, seconds: float = 10.0) -> bool:
    """Poll ``condition`` until true or ``seconds`` pass: the server sees disconnects
    asynchronously."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_shutdown_waits_for_a_checked_out_connection_then_closes(side, admin):
    held = side.connect()
    held.execute(text("SELECT 1"))

    def give_back(_: int) -> None:
        time.sleep(0.3)
        held.rollback()
        held.close()

    with running(give_back):
        report = shutdown(timeout=30)
    assert report.drained is True
    assert report.checked_out == 0
    assert "side:sync" in report.pools
    assert report.waited_s >= 0.2  # it did wait for the connection
    assert engine_registry.built("side", "sync") is None
    pattern = f"poolkit:side:%:{os.getpid()}"
    assert _wait_for(lambda: server_connections(admin, pattern) == [])


def test_shutdown_is_bounded_when_a_connection_never_comes_back(side, admin):
    held = side.connect()
    held.execute(text("SELECT 1"))
    report = shutdown(timeout=0.2)
    assert report.drained is False
    assert report.checked_out == 1
    assert "1 connection(s) still checked out" in str(report)
    assert engine_registry.built("side", "sync") is None
    # The holder may be mid-query, so the shutdown left its connection alone (SQLAlchemy's
    # dispose() never touches checked-out connections; process exit closes them). A holder
    # that ends it itself leaves nothing on the server.
    held.invalidate()
    held.close()
    pattern = f"poolkit:side:%:{os.getpid()}"
    assert _wait_for(lambda: server_connections(admin, pattern) == [])


def test_warm_up_opens_pool_size_connections(side, admin):
    assert warm_up(["side"]) == {"side": 3}
    stats = pool_stats("side")
    assert (stats.pool_checked_in, stats.pool_checked_out, stats.connections_opened) == (3, 0, 3)
    assert len(server_connections(admin, f"poolkit:side:%:{os.getpid()}")) == 3


async def _lifespan(app: LifespanApplication, *messages: str) -> list[dict]:
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    for message in messages:
        inbox.put_nowait({"type": message})
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    return sent


def test_asgi_lifespan_warms_up_and_closes_sync_and_async_pools(side, admin):
    async def django_app(scope, receive, send):  # never reached by lifespan scopes
        raise AssertionError(scope)

    app = LifespanApplication(django_app, warm_up=["side"], warm_up_async=["side"],
                              shutdown_timeout=5)
    pattern = f"poolkit:side:%:{os.getpid()}"

    async def run() -> list[dict]:
        inbox: asyncio.Queue[dict] = asyncio.Queue()
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(dict(message))
            if message["type"] == "lifespan.startup.complete":
                # The server now sees the warm pool, then asks the app to stop.
                count = await asyncio.to_thread(lambda: len(server_connections(admin, pattern)))
                sent.append({"connections": count})
                inbox.put_nowait({"type": "lifespan.shutdown"})

        inbox.put_nowait({"type": "lifespan.startup"})
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        return sent

    sent = asyncio.run(run())
    # pool_size 3 in the sync pool and async_pool_size 3 in the async one.
    assert sent == [{"type": "lifespan.startup.complete"}, {"connections": 6},
                    {"type": "lifespan.shutdown.complete"}]
    assert engine_registry.built("side", "sync") is None
    assert engine_registry.built("side", "async") is None
    assert _wait_for(lambda: server_connections(admin, pattern) == [])


def test_asgi_lifespan_reports_a_failed_warm_up(settings):
    settings.POOLKIT = {"ENGINES": {"down": {"url": "postgresql://u:pw@127.0.0.1:1/x",
                                             "connect_timeout": 2}}}

    async def django_app(scope, receive, send):
        raise AssertionError(scope)

    app = LifespanApplication(django_app, warm_up=["down"])
    sent = asyncio.run(_lifespan(app, "lifespan.startup"))
    assert sent == [{"type": "lifespan.startup.failed", "message": "OperationalError"}]


def test_other_scopes_go_to_django_untouched():
    seen = []

    async def django_app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(LifespanApplication(django_app)({"type": "http"}, None, None))
    assert seen == ["http"]


# Real servers ---------------------------------------------------------------------------

# A WSGI app around the demo project: /whoami checks a connection out of the "default" pool
# and says which worker and which server process served it. At import it opens a connection
# too, as careless app code does: with --preload that happens in gunicorn's master.
PROBE_APP = '''
import json, os, time
from testproject.wsgi import application as django_application
from django_poolkit import get_engine
from sqlalchemy import text

with get_engine().connect() as connection:
    LOADED_BACKEND = connection.execute(text("SELECT pg_backend_pid()")).scalar()
LOADED_IN = os.getpid()


def application(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        from prometheus_client import generate_latest
        from django_poolkit.metrics import registry
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [generate_latest(registry())]
    if environ["PATH_INFO"] != "/whoami":
        return django_application(environ, start_response)
    with get_engine().connect() as connection:
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        connection.execute(text("SELECT pg_sleep(0.05)"))
    body = json.dumps({"pid": os.getpid(), "backend": backend, "loaded_in": LOADED_IN,
                       "loaded_backend": LOADED_BACKEND}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/"
                            + connections.settings["default"]["NAME"],
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}


def _get(port: int, path: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        return reply.read()


def _wait_until_serving(process: subprocess.Popen, port: int, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            _get(port, path, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not start within 60 s")


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen]]:
    """Kills any server a failing test left running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_close_their_connections_on_sigterm(tmp_path, admin, stopper,
                                                              preload):
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "python:django_poolkit.gunicorn",
               "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
               "--worker-class", "gthread", "--graceful-timeout", "20", "--log-level", "info",
               "--no-control-socket",
               *(["--preload"] if preload else []), "probe_app:application"]
    master = subprocess.Popen(command, cwd=tmp_path, env=_environment(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopper.append(master)
    _wait_until_serving(master, port, "/whoami")
    # The first worker may serve before the second is forked.
    assert _wait_for(lambda: len(_children(master.pid)) == 2, 30)
    workers = _children(master.pid)

    # Concurrent requests until both workers have answered.
    answers: list[dict] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        deadline = time.monotonic() + 60
        while {answer["pid"] for answer in answers} != workers:
            assert time.monotonic() < deadline, answers
            answers += [json.loads(body) for body in pool.map(
                lambda _: _get(port, "/whoami"), range(16))]

    backends = {pid: {a["backend"] for a in answers if a["pid"] == pid} for pid in workers}
    first, second = backends.values()
    assert not first & second, "two workers used the same server process"
    named = {pid: {row.pid for row in server_connections(admin, f"poolkit:default:%:{pid}")}
             for pid in workers}
    for pid in workers:
        # Every connection a worker used is named after that worker.
        assert backends[pid] <= named[pid]
    loaded = {(a["loaded_in"], a["loaded_backend"]) for a in answers}
    if preload:
        # The app was imported once, in the master; its connection was used by no worker
        # and closed by when_ready before the fork.
        ((loaded_in, loaded_backend),) = loaded
        assert loaded_in == master.pid
        assert all(loaded_backend not in used for used in backends.values())
        assert server_connections(admin, f"poolkit:default:%:{master.pid}") == []
    else:
        assert {pid for pid, _ in loaded} == workers

    master.send_signal(signal.SIGTERM)
    _, log = master.communicate(timeout=60)
    assert master.returncode == 0, log
    for pid in workers:
        assert re.search(rf"poolkit: worker {pid} closed pools default:sync after", log), log
        assert _wait_for(lambda pid=pid: server_connections(
            admin, f"poolkit:default:%:{pid}") == [])
    if preload:
        assert "poolkit: master closed the pools it opened while loading the app" in log


# A WSGI module that queries at import through the ORM (its connection stays checked out: the
# master has no request boundary) and through SQLAlchemy (which joins the ORM's connection).
PRELOADED_APP = '''
import json, os
from testproject.wsgi import application as django_application
from django.db import connection
from django_poolkit import get_engine
from sqlalchemy import text

with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    LOADED_BACKEND = cursor.fetchone()[0]
with get_engine().connect() as joined:
    joined.execute(text("SELECT 1"))
LOADED_IN = os.getpid()


def application(environ, start_response):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    connection.close()
    body = json.dumps({"pid": os.getpid(), "backend": backend, "loaded_in": LOADED_IN,
                       "loaded_backend": LOADED_BACKEND}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''


@pytest.mark.parametrize("hooks", [False, True], ids=["without-hooks", "with-hooks"])
def test_a_preloading_gunicorn_master_keeps_no_server_connection(tmp_path, admin, stopper,
                                                                 hooks):
    """``--preload``: the master imports the app, which queries; once it has forked its
    workers it holds no server connection (pg_stat_activity, by the master's pid in its
    application_name, on this test's database only), with or without poolkit's hooks, and
    the workers serve from connections of their own."""
    (tmp_path / "preloaded_app.py").write_text(PRELOADED_APP)
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn",
               *(["-c", "python:django_poolkit.gunicorn"] if hooks else []),
               "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2",
               "--worker-class", "gthread", "--log-level", "info", "--no-control-socket",
               "--preload", "preloaded_app:application"]
    master = subprocess.Popen(command, cwd=tmp_path, env=_environment(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopper.append(master)
    _wait_until_serving(master, port, "/")
    # The first worker may serve before the second is forked.
    assert _wait_for(lambda: len(_children(master.pid)) == 2, 30)
    workers = _children(master.pid)
    answers: list[dict] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        deadline = time.monotonic() + 60
        while {answer["pid"] for answer in answers} != workers:
            assert time.monotonic() < deadline, answers
            answers += [json.loads(body) for body in pool.map(lambda _: _get(port, "/"),
                                                              range(8))]
    assert {answer["loaded_in"] for answer in answers} == {master.pid}
    loaded_backend = answers[0]["loaded_backend"]
    assert all(answer["backend"] != loaded_backend for answer in answers)

    database = connections.settings["default"]["NAME"]

    def held_by_master() -> list[Any]:
        return [row for row in server_connections(admin, f"poolkit:default:%:{master.pid}")
                if row.datname == database]

    assert _wait_for(lambda: held_by_master() == []), held_by_master()
    # The loaded backend itself is gone from the server, not only renamed.
    assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                         (loaded_backend,)).fetchone()[0] == 0
    # The workers still serve after the master let go.
    assert json.loads(_get(port, "/"))["pid"] in workers

    master.send_signal(signal.SIGTERM)
    _, log = master.communicate(timeout=60)
    assert master.returncode == 0, log


def test_uvicorn_lifespan_warms_up_and_closes_on_sigterm(tmp_path, admin, stopper):
    (tmp_path / "asgi_app.py").write_text(textwrap.dedent('''
        from django_poolkit.asgi import get_asgi_application
        application = get_asgi_application(warm_up=["default"], shutdown_timeout=5)
    '''))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "on", "asgi_app:application"],
        cwd=tmp_path, env=_environment(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    stopper.append(server)
    _wait_until_serving(server, port, "/health/live/")
    pattern = f"poolkit:default:%:{server.pid}"
    # Warmed up at startup: the preset's pool_size (small_api: 10) idle connections.
    assert len(server_connections(admin, pattern)) == 10
    server.send_signal(signal.SIGTERM)
    _, log = server.communicate(timeout=60)
    # Recent uvicorn re-raises the signal once it has shut down cleanly.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log
    assert _wait_for(lambda: server_connections(admin, pattern) == [])


def test_gunicorn_multiprocess_metrics_sum_every_worker(tmp_path, admin, stopper):
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    (tmp_path / "metrics").mkdir()
    port = _free_port()
    environment = {**_environment(tmp_path),
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:django_poolkit.gunicorn",
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
         "--worker-class", "gthread", "--no-control-socket", "probe_app:application"],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    stopper.append(master)
    # Probe with a path that checks nothing out: a probe the client gave up on (a worker
    # still importing Django) would still be served, and counted, later.
    _wait_until_serving(master, port, "/metrics")
    workers = _children(master.pid)
    answers: list[dict] = [json.loads(_get(port, "/whoami"))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        deadline = time.monotonic() + 60
        while {answer["pid"] for answer in answers} != workers:
            assert time.monotonic() < deadline, answers
            answers += [json.loads(body) for body in pool.map(
                lambda _: _get(port, "/whoami"), range(16))]
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(_get(port, "/metrics").decode())
               for sample in family.samples}
    labels = (("alias", "default"), ("kind", "sync"))
    # Whichever worker answered the scrape, the figures are both workers' together.
    requests = len(answers)
    assert samples[("poolkit_checkouts_total", labels)] == requests
    assert samples[("poolkit_checkout_wait_seconds_count", labels)] == requests
    assert samples[("poolkit_connection_hold_seconds_count", labels)] == requests
    idle = sum(len(server_connections(admin, f"poolkit:default:%:{pid}")) for pid in workers)
    assert samples[("poolkit_pool_checked_in", labels)] == idle
    assert samples[("poolkit_pool_checked_out", labels)] == 0
    master.send_signal(signal.SIGTERM)
    _, log = master.communicate(timeout=60)
    assert master.returncode == 0, log


def test_handle_sigterm_drains_then_exits_143(tmp_path, admin, stopper):
    (tmp_path / "consumer.py").write_text(textwrap.dedent('''
        import logging, sys, threading, time
        import django
        django.setup()
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from sqlalchemy import text
        from django_poolkit import get_engine
        from django_poolkit.lifecycle import handle_sigterm

        handle_sigterm(timeout=30)
        engine = get_engine()
        busy = engine.connect()
        busy.execute(text("SELECT 1"))

        def finish():  # a job that still needs its connection for a moment after SIGTERM
            time.sleep(1.0)
            busy.rollback()
            busy.close()

        def serve():
            print("ready", flush=True)
            time.sleep(60)

        threading.Thread(target=finish, daemon=True).start()
        serve()
    '''))
    process = subprocess.Popen([sys.executable, "consumer.py"], cwd=tmp_path,
                               env=_environment(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stopper.append(process)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=60)
    assert process.returncode == 143, log
    # It waited for the busy connection instead of cutting it off.
    assert re.search(r"poolkit shutdown: closed pools default:sync after \d\.\d\d s$", log,
                     re.MULTILINE), log
    assert _wait_for(lambda: server_connections(
        admin, f"poolkit:default:%:{process.pid}") == [])


def test_asgi_lifespan_fails_fast_on_a_broken_configuration(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_sise": 20}}}

    async def django_app(scope, receive, send):
        raise AssertionError(scope)

    sent = asyncio.run(_lifespan(LifespanApplication(django_app), "lifespan.startup"))
    assert len(sent) == 1
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert sent[0]["message"].startswith("poolkit configuration error: ")
    assert 'did you mean "pool_size"?' in sent[0]["message"]


def test_validate_configuration_raises_every_problem_without_io(settings):
    from django_poolkit import PoolkitConfigurationError
    from django_poolkit.lifecycle import validate_configuration

    validate_configuration()
    settings.POOLKIT = {"DEFAULTS": {"pool_size": "20"}}
    with pytest.raises(PoolkitConfigurationError, match="POOLKIT_POOL_SIZE=20"):
        validate_configuration()
