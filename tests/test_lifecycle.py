"""Process lifecycle: fork safety with a real os.fork, no I/O at start-up, disposal at exit."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
import time

import pytest
from django.db import connections
from sqlalchemy import text

from django_poolkit import dispose_all, get_engine, pool_stats

from .helpers.server import server_connections

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar()


def test_forked_child_never_uses_the_parents_connections():
    engine = get_engine()
    parent_pid = _backend_pid(engine)  # now idle in the parent's pool
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child_engine = get_engine()
            child_pid = _backend_pid(child_engine)
            stats = pool_stats()
            os.write(write_end, f"{child_pid} {stats.connections_opened}".encode())
            child_engine.dispose()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    reply = os.read(read_end, 100).decode().split()
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    child_backend, child_opened = int(reply[0]), int(reply[1])
    assert child_backend != parent_pid
    # The child's counters started from zero: it opened exactly its own connection.
    assert child_opened == 1
    # The parent's pooled connection survived the child (no Terminate sent on its socket).
    assert _backend_pid(engine) == parent_pid


def test_only_gunicorns_master_lets_go_of_its_connections_at_fork(monkeypatch):
    """The before-fork hook acts in gunicorn's master only (its SIGCHLD handler is the
    Arbiter's, as gunicorn's init_signals installs it): any other parent keeps its pool
    (the fork tests above), the master closes the ORM's connection and every pool."""
    from gunicorn.arbiter import Arbiter

    from django_poolkit import gunicorn as hooks

    engine = get_engine()
    parent_pid = _backend_pid(engine)
    assert hooks.in_arbiter() is False
    hooks.release_in_master()
    assert _backend_pid(engine) == parent_pid
    assert "signal.signal(signal.SIGCHLD, self." in inspect.getsource(Arbiter.init_signals)

    arbiter = Arbiter.__new__(Arbiter)  # no __init__: it would load an app
    monkeypatch.setattr(hooks.signal, "getsignal", lambda signum: arbiter.signal_chld)
    assert hooks.in_arbiter() is True
    connections["default"].ensure_connection()
    hooks.release_in_master()
    assert connections["default"].connection is None
    assert pool_stats().built is False


def test_dispose_all_closes_every_pooled_connection(admin):
    engine = get_engine()
    held = [engine.connect() for _ in range(2)]
    for connection in held:
        connection.close()
    pattern = f"poolkit:default:%:{os.getpid()}"
    assert len(server_connections(admin, pattern)) == 2
    dispose_all()
    _wait_until_gone(admin, pattern)
    assert server_connections(admin, pattern) == []


def test_a_connection_checked_out_across_dispose_is_closed_when_it_comes_back(admin):
    engine = get_engine()
    held = engine.connect()
    held.execute(text("SELECT 1"))
    dbapi_connection = held.connection.dbapi_connection
    dispose_all()
    assert not _closed(dbapi_connection)  # still the caller's until returned
    held.close()
    assert _closed(dbapi_connection)
    pattern = f"poolkit:default:%:{os.getpid()}"
    _wait_until_gone(admin, pattern)
    assert server_connections(admin, pattern) == []


def _closed(dbapi_connection) -> bool:
    return bool(dbapi_connection.closed)


def _wait_until_gone(admin, pattern: str) -> None:
    # The server sees disconnects asynchronously.
    for _ in range(100):
        if not server_connections(admin, pattern):
            return
        time.sleep(0.02)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test", **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=environment, timeout=60, check=False)


def test_startup_opens_no_connection_and_exit_closes_the_pools(admin):
    database = connections.settings["default"]["NAME"]
    result = _run("""
        import logging, os, sys
        import django
        django.setup()
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from django_poolkit.engines import engine_registry
        assert engine_registry.built("default", "sync") is None
        from django.core.management import call_command
        call_command("check")
        assert engine_registry.built("default", "sync") is None
        from django.db import connections
        connections.settings["default"]["NAME"] = os.environ["TEST_DB"]
        from django_poolkit import get_engine
        from sqlalchemy import text
        with get_engine().connect() as c:
            c.execute(text("SELECT 1"))
        print(os.getpid())
    """, TEST_DB=database)
    assert result.returncode == 0, result.stderr
    # atexit disposed the pool before the interpreter went away.
    assert "disposed sync engine for 'default'" in result.stderr
    child = result.stdout.strip()
    assert server_connections(admin, f"poolkit:default:%:{child}") == []
