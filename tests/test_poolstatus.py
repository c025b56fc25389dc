"""``manage.py poolstatus`` against the real server: settings with origins, this process's
pool, every process's connections as the server sees them, both formats, watch, exit codes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from sqlalchemy import text

from django_poolkit import get_engine
from django_poolkit.conf import KNOBS
from django_poolkit.engines import engine_registry

pytestmark = pytest.mark.django_db(transaction=True)

SMALL_API = {"DATABASES": {"default": {"preset": "small_api"}}}
# The ORM checks out of the "default" pool too (the suite runs on the pooled backend), so
# tests that count connections use an engine of their own on the test database.
def _side(name: str) -> dict:
    return {**SMALL_API, "ENGINES": {"side": {"url": "postgresql://postgres@127.0.0.1:5432/"
                                              + name, "pool_size": 3}}}

# Nothing listens on port 1: a refused connection, immediately.
DOWN = {**SMALL_API, "ENGINES": {"down": {"url": "postgresql://someone:pw-never-shown@127.0.0.1:1/x"}}}


def _status(*args: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command("poolstatus", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error.returncode
    return out.getvalue(), 0


def _entry(document: dict, alias: str) -> dict:
    return next(entry for entry in document["databases"] if entry["alias"] == alias)


def _json(*args: str) -> tuple[dict, int]:
    output, code = _status("--format", "json", *args)
    return json.loads(output), code


def _test_dsn(**extra: str) -> str:
    entry = connections.settings["default"]
    parts = {"host": entry["HOST"] or "127.0.0.1", "port": entry["PORT"] or 5432,
             "user": entry["USER"] or "postgres", "dbname": entry["NAME"], **extra}
    return " ".join(f"{key}={value}" for key, value in parts.items())


def test_json_has_the_documented_keys_and_the_origins(admin):
    document, code = _json()
    assert code == 0
    assert list(document) == ["generated_at", "host", "pid", "status", "databases"]
    assert document["status"] == "ok"
    assert document["pid"] == os.getpid()
    assert [entry["alias"] for entry in document["databases"]] == list(connections.settings)
    entry = _entry(document, "default")
    assert list(entry) == ["alias", "vendor", "server", "target", "settings", "pools",
                           "server_status", "error", "pgbouncer"]
    assert entry["pgbouncer"] is None  # not behind PgBouncer
    assert entry["alias"] == "default"
    assert entry["error"] is None
    assert list(entry["settings"]) == list(KNOBS)
    assert entry["settings"]["pool_size"] == {"value": 10, "origin": "preset:small_api"}
    assert entry["settings"]["preset"] == {"value": "small_api", "origin": "setting"}
    assert entry["settings"]["pool_timeout"] == {"value": 30, "origin": "default"}
    assert entry["target"] == {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                               "database": connections.settings["default"]["NAME"]}
    (pool,) = entry["pools"]
    assert pool["kind"] == "sync"
    assert pool["built"] is False
    server = entry["server_status"]
    assert list(server) == [
        "server_version", "role", "replay_lag_s", "max_connections",
        "superuser_reserved_connections", "reserved_connections", "available_connections",
        "client_connections", "headroom", "database_connections", "applications"]
    assert server["role"] == "primary"
    assert server["replay_lag_s"] is None
    assert server["max_connections"] == int(admin.execute("SHOW max_connections").fetchone()[0])
    assert server["superuser_reserved_connections"] == int(
        admin.execute("SHOW superuser_reserved_connections").fetchone()[0])
    assert server["available_connections"] == (
        server["max_connections"] - server["superuser_reserved_connections"]
        - server["reserved_connections"])
    assert server["headroom"] == max(
        0, server["available_connections"] - server["client_connections"])
    assert list(server["database_connections"]) == [
        "active", "idle", "idle_in_transaction", "other"]


def test_a_replica_shows_its_role_and_replay_lag():
    document, code = _json("--database", "replica")
    assert code == 0
    server = _entry(document, "replica")["server_status"]
    assert server["role"] == "replica"
    assert isinstance(server["replay_lag_s"], float)
    assert server["replay_lag_s"] >= 0
    table, _ = _status("--database", "replica")
    assert "server: replica, replay lag " in table


def test_server_side_covers_every_process_by_application_name_and_state(settings):
    settings.POOLKIT = _side(connections.settings["default"]["NAME"])
    engine = get_engine("side")
    in_transaction = engine.connect()
    in_transaction.execute(text("SELECT 1"))  # autobegin: idle in transaction, checked out
    idle = engine.connect()
    idle.execute(text("SELECT 1"))
    idle.commit()
    idle.close()  # back in the pool, idle on the server
    # Another "process" (a connection named as poolkit names another host's pool).
    with psycopg.connect(_test_dsn(application_name="poolkit:default:web-7:4242")) as other:
        other.execute("SELECT 1")  # and leave its transaction open too
        document, code = _json("--database", "side")
        in_transaction.rollback()
        in_transaction.close()
    assert code == 0
    (entry,) = document["databases"]
    (pool,) = entry["pools"]
    assert pool["built"] is True
    assert pool["gauges"]["pool_checked_out"] == 1
    assert pool["gauges"]["pool_checked_in"] == 1
    rows = {row["application_name"]: row for row in entry["server_status"]["applications"]}
    ours = rows[f"poolkit:side:{socket.gethostname()}:{os.getpid()}"[:63]]
    assert ours == {**ours, "alias": "side", "pid": os.getpid(), "idle": 1,
                    "idle_in_transaction": 1, "active": 0, "total": 2}
    assert rows["poolkit:default:web-7:4242"] == {
        "application_name": "poolkit:default:web-7:4242", "alias": "default",
        "host": "web-7", "pid": 4242, "active": 0, "idle": 0, "idle_in_transaction": 1,
        "other": 0, "total": 1}
    states = entry["server_status"]["database_connections"]
    assert states["idle_in_transaction"] >= 2
    assert states["idle"] >= 1
    # The command's own connection is not counted, nor named like a pool.
    assert not any(name.startswith("poolkit-ops") for name in rows)


def test_a_custom_application_name_template_keeps_the_attribution(settings):
    """The server view read "billing/side@1234" as nobody's: rows are matched by the pools'
    own templates, so a custom one names its alias and process as the default does."""
    config = _side(connections.settings["default"]["NAME"])
    config["ENGINES"]["side"]["application_name"] = "billing/{alias}@{pid}"
    config["ENGINES"]["plain"] = {**config["ENGINES"]["side"],
                                  "application_name": "billing-web"}
    settings.POOLKIT = config
    with get_engine("side").connect() as side, get_engine("plain").connect() as plain:
        side.execute(text("SELECT 1"))
        plain.execute(text("SELECT 1"))
        document, code = _json("--database", "side")
    assert code == 0
    rows = {row["application_name"]: row for row in
            _entry(document, "side")["server_status"]["applications"]}
    mine = rows[f"billing/side@{os.getpid()}"]
    assert (mine["alias"], mine["host"], mine["pid"], mine["total"]) == (
        "side", None, os.getpid(), 1)
    # No {pid} in the template: the alias still, the process not.
    assert (rows["billing-web"]["alias"], rows["billing-web"]["pid"]) == ("plain", None)


def test_the_command_never_builds_or_uses_an_application_pool(settings):
    settings.POOLKIT = _side(connections.settings["default"]["NAME"])
    _, code = _status()
    assert code == 0
    assert engine_registry.built("side", "sync") is None


def test_table_is_aligned_and_names_origins_and_the_server():
    output, code = _status()
    assert code == 0
    lines = output.splitlines()
    assert lines[0].startswith("poolstatus at ")
    header = next(line for line in lines if line.strip().startswith("SETTING"))
    row = next(line for line in lines if line.strip().startswith("pool_size"))
    assert row.index("preset:small_api") == header.index("ORIGIN")
    assert row.split() == ["pool_size", "10", "preset:small_api"]
    pool_header = next(line for line in lines if line.strip().startswith("THIS PROCESS"))
    pool_row = next(line for line in lines if line.strip().startswith("sync pool"))
    assert pool_row.index("10") == pool_header.index("SIZE")
    assert "  server: primary, PostgreSQL " in output
    assert "available;" in output
    assert "headroom" in output


def test_unreachable_server_exits_1_and_never_shows_the_password(settings):
    settings.POOLKIT = DOWN
    document, code = _json()
    assert code == 1
    assert document["status"] == "unreachable"
    down = _entry(document, "down")
    assert down["error"] == "connection refused"
    assert down["server_status"] is None
    assert down["target"] == {"host": "127.0.0.1", "port": 1, "database": "x",
                              "user": "someone"}
    assert _entry(document, "default")["error"] is None
    table, code = _status()
    assert code == 1
    assert "server: unreachable (connection refused)" in table
    for output in (json.dumps(document), table):
        assert "pw-never-shown" not in output
    # --database narrows the round: the reachable alias alone exits 0.
    assert _status("--database", "default")[1] == 0


def test_bad_arguments_exit_2():
    assert _status("--database", "nope")[1] == 2
    assert _status("--watch", "0")[1] == 2
    assert _status("--timeout", "0")[1] == 2


def test_watch_in_json_prints_one_document_per_round():
    output, code = _status("--format", "json", "--watch", "0.5", "--iterations", "3")
    assert code == 0
    documents = [json.loads(line) for line in output.splitlines()]
    assert len(documents) == 3
    assert all(document["status"] == "ok" for document in documents)


def test_watch_refreshes_until_interrupted():
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test",
                   "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/"
                                   + connections.settings["default"]["NAME"]}
    # SIGINT back to its default in the child: a test run started in the background (nohup,
    # `cmd &` in a script) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so Ctrl-C could not be tested.
    process = subprocess.Popen(
        [sys.executable, "manage.py", "poolstatus", "--watch", "0.5", "--database", "default"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("poolstatus at ")
        # Wait for a second round, so the loop is really running.
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 2 and time.monotonic() < deadline:
            if process.stdout.readline().startswith("poolstatus at "):
                seen += 1
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors
    assert "Traceback" not in errors


@pytest.fixture
def bouncer(admin):
    """PgBouncer (scripts/pgbouncer) in front of the test database; afterwards its server
    connections are closed (RECONNECT), or Django could not drop the test database."""
    dbname = connections.settings["default"]["NAME"]
    subprocess.run(["scripts/pgbouncer", "start"], check=True, capture_output=True,
                   timeout=120)
    yield f"postgresql://postgres@127.0.0.1:6432/{dbname}"
    with psycopg.connect("host=127.0.0.1 port=6432 user=postgres dbname=pgbouncer",
                         autocommit=True, cursor_factory=psycopg.ClientCursor) as console:
        console.execute(f"RECONNECT {dbname}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
            "application_name LIKE 'poolkit-ops:bouncer%%'", (dbname,)).fetchone()[0]:
        time.sleep(0.05)


def test_through_pgbouncer_the_server_still_answers(settings, admin, bouncer):
    # PgBouncer (transaction mode) ignores the startup options: the command's own
    # statement_timeout is set per transaction instead, which works through it.
    settings.POOLKIT = {**SMALL_API, "ENGINES": {"bouncer": {"url": bouncer}}}
    document, code = _json("--database", "bouncer")
    assert code == 0, document
    server = _entry(document, "bouncer")["server_status"]
    assert server["role"] == "primary"
    assert server["max_connections"] == int(admin.execute("SHOW max_connections").fetchone()[0])


def test_a_server_that_never_answers_cannot_hang_the_command(settings):
    # A socket that accepts connections (the kernel's backlog) and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings.POOLKIT = {**SMALL_API, "ENGINES": {"silent": {
            "url": f"postgresql://postgres@127.0.0.1:{port}/x"}}}
        started = time.monotonic()
        document, code = _json("--database", "silent", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert code == 1
    assert _entry(document, "silent")["error"] in ("connect timeout", "no answer in time")
    # libpq's shortest connect_timeout is 2 s; the bound is that plus --timeout plus 1 s.
    assert elapsed < 30


def test_the_server_query_is_read_only_and_bounded(server_dsn):
    from django_poolkit.ops.serverinfo import _guard

    with psycopg.connect(server_dsn, autocommit=True) as connection:
        def run(timeout_ms: int, sql: str) -> None:
            with connection.transaction():
                _guard(connection, timeout_ms)
                connection.execute(sql)

        with pytest.raises(psycopg.errors.QueryCanceled):
            run(50, "SELECT pg_sleep(5)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            run(1000, "CREATE TEMPORARY TABLE nope (id int)")
        # Both ended with their transaction.
        assert connection.execute("SHOW transaction_read_only").fetchone()[0] == "off"
        assert connection.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_a_broken_configuration_exits_2_with_the_problems(settings):
    settings.POOLKIT = {"DEPLOYMENT": {"workers": 0}}
    output = io.StringIO()
    with pytest.raises(CommandError, match=r'POOLKIT\["DEPLOYMENT"\]\["workers"\]') as raised:
        call_command("poolstatus", stdout=output)
    assert raised.value.returncode == 2


def test_origins_name_the_environment_and_the_sizing_formula(monkeypatch, settings):
    monkeypatch.setenv("POOLKIT_DEFAULT__POOL_TIMEOUT", "5")
    settings.POOLKIT = {"DATABASES": {"default": {"sizing": "cores", "cores": 3}}}
    document, code = _json("--database", "default")
    assert code == 0
    found = _entry(document, "default")["settings"]
    assert found["pool_timeout"] == {"value": 5.0, "origin": "environment"}
    assert found["pool_size"] == {"value": 6, "origin": "sizing:cores"}
    assert found["sizing"] == {"value": "cores", "origin": "setting"}
