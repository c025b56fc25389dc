"""Scenario 13: a password never shows, whatever fails.

A random sentinel password sits in ``DATABASES[...]["PASSWORD"]``, in ``OPTIONS["password"]``
and in an ``ENGINES`` URL, for roles of a scratch cluster of part B's own (port 5450) that must
log in with a SCRAM password. Then everything that could print it is provoked and captured:
successful connections and authentication failures (ORM, ``get_engine()``,
``get_async_engine()``) with every logger at DEBUG (SQLAlchemy's engine and pool loggers,
psycopg, Django, poolkit), the reprs of engines, pools, URLs, pooled connections, settings and
stats, the formatted exception chains, ``manage.py check``, ``poolstatus`` and ``poolcheck``
(table and JSON), and the health views, with the server up and with it stopped. The figure is
the number of occurrences of the sentinel in everything captured.

``tests/test_secrets.py`` covers the same promise without a password-checking server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import logging
import os
import secrets
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings
from sqlalchemy import text

from django_poolkit import conf, get_async_engine, get_engine, pool_stats
from django_poolkit.engines import engine_registry

from ..helpers.results import record

PORT = 5450  # part B's scratch cluster (5450-5459); never the main server
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "scratch-cluster"
DATA = Path(f"/var/lib/postgresql/poolkit-scratch-{PORT}/data")
ADMIN_DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"
POOLED = "django_poolkit.db.backends.postgresql"
TOKEN = secrets.token_urlsafe(32)
SENTINEL = f"S3ntinel-{secrets.token_hex(10)}"
LOGGERS = ["", "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool", "psycopg", "django",
           "django.db.backends", "django_poolkit", "asyncio"]


def cluster(command: str) -> None:
    subprocess.run([str(SCRIPT), command, str(PORT)], check=True, capture_output=True,
                   timeout=120)


@pytest.fixture(scope="module")
def scratch_b(scratch_clusters: set[int]) -> Iterator[int]:
    """Part B's scratch cluster, running before and after the module; stopped when the test
    session ends (``scratch_clusters``)."""
    scratch_clusters.add(PORT)
    cluster("start")
    yield PORT
    cluster("start")


@pytest.fixture
def unblocked(django_db_blocker: Any) -> Iterator[None]:
    """Database access outside pytest-django's test case: nothing here touches the test
    database, and the aliases are added at run time (which its ``databases`` check
    refuses)."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def roles(scratch_b: int) -> Iterator[tuple[str, str]]:
    """Two roles that must log in with SCRAM: one whose password is the sentinel, one whose
    password is something else (the sentinel is then a wrong password)."""
    suffix = secrets.token_hex(4)
    good, locked = f"relb_ok_{suffix}", f"relb_locked_{suffix}"
    hba = DATA / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {good} LOGIN PASSWORD '{SENTINEL}'")
        admin.execute(f"CREATE ROLE {locked} LOGIN PASSWORD '{secrets.token_hex(12)}'")
        hba.write_text(f"host all {good} 127.0.0.1/32 scram-sha-256\n"
                       f"host all {locked} 127.0.0.1/32 scram-sha-256\n{original}")
        admin.execute("SELECT pg_reload_conf()")
    try:
        yield good, locked
    finally:
        hba.write_text(original)
        cluster("start")  # running again if the test stopped it
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE IF EXISTS {good}")
            admin.execute(f"DROP ROLE IF EXISTS {locked}")


class Captured(logging.Handler):
    """Every log record (formatted with its traceback) and every other text the test
    produced, by source."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts: list[tuple[str, str]] = []
        self._levels: dict[str, int] = {}

    def emit(self, log_record: logging.LogRecord) -> None:
        try:
            self.texts.append(("log", self.format(log_record)))
        except Exception as error:  # a record that cannot be formatted is still evidence
            self.texts.append(("log", f"{log_record.msg!r} {log_record.args!r} {error!r}"))

    def add(self, source: str, value: Any) -> None:
        self.texts.append((source, value if isinstance(value, str) else repr(value)))

    def error(self, source: str, call: Callable[[], Any]) -> None:
        """Run ``call``, expecting it to fail; keep the formatted chain, str and repr."""
        try:
            call()
        except Exception as error:
            self.add(source, "".join(traceback.format_exception(error)))
            self.add(source, f"{error!s} {error!r} {error.args!r}")
        else:
            raise AssertionError(f"{source}: expected a failure")

    def __enter__(self) -> Captured:
        root = logging.getLogger()
        root.addHandler(self)
        for name in LOGGERS:
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)

    def occurrences(self, secret: str) -> Counter[str]:
        return Counter({source: text.count(secret) for source, text in self.texts
                        if secret in text})


@contextlib.contextmanager
def aliases(entries: dict[str, dict[str, Any]]) -> Iterator[None]:
    """``DATABASES`` aliases on the scratch cluster for one test (pooled backend)."""
    for name, changes in entries.items():
        entry = copy.deepcopy(connections.settings["default"])
        entry.update({"ENGINE": POOLED, "HOST": "127.0.0.1", "PORT": str(PORT),
                      "NAME": "postgres", "TEST": {}, "CONN_MAX_AGE": 0, **changes})
        connections.settings[name] = entry
    conf.reload()
    try:
        yield
    finally:
        for name in entries:
            with contextlib.suppress(Exception):
                connections[name].close()
            with contextlib.suppress(AttributeError, KeyError):
                del connections[name]
            connections.settings.pop(name, None)
        engine_registry.dispose()
        conf.reload()


def _orm(alias: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


def _engine(name: str) -> Any:
    with get_engine(name).connect() as connection:
        return connection.execute(text("SELECT current_user")).scalar()


def _async_engine(name: str) -> Any:
    async def run() -> Any:
        engine = get_async_engine(name)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(text("SELECT current_user"))).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _command(captured: Captured, *args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except BaseException as error:  # CommandError / SystemExit: poolcheck's "unhealthy"
        captured.add(f"command {args}", "".join(traceback.format_exception(error)))
    captured.add(f"command {args}", out.getvalue() + err.getvalue())


def _views(captured: Captured, client: Client) -> list[int]:
    codes = []
    for path in ("/health/live/", "/health/ready/", "/health/db/"):
        for headers in ({}, {"X-Poolkit-Health-Token": TOKEN}):
            response = client.get(path, headers=headers)
            codes.append(response.status_code)
            captured.add(f"view {path}", response.content.decode())
    return codes


SCOPE = ("--database", "relb_settings", "--database", "relb_options", "--database",
         "relb_wrong")
COMMANDS = [("poolstatus", *SCOPE), ("poolstatus", "--format", "json", *SCOPE),
            ("poolcheck", *SCOPE), ("poolcheck", "--format", "json", *SCOPE)]

CHECK_SETTINGS = '''
from testproject.settings_test import *  # noqa: F403
DATABASES["relb_settings"] = {**DATABASES["default"], "HOST": "127.0.0.1", "PORT": "%(port)s",
    "NAME": "postgres", "USER": "%(good)s", "PASSWORD": "%(secret)s", "CONN_MAX_AGE": 60}
DATABASES["relb_options"] = {**DATABASES["default"], "HOST": "127.0.0.1", "PORT": "%(port)s",
    "NAME": "postgres", "USER": "%(good)s", "PASSWORD": "",
    "OPTIONS": {"password": "%(secret)s", "pool": True}}
POOLKIT = {"ENGINES": {"relb_url": {
    "url": "postgresql://%(good)s:%(secret)s@127.0.0.1:%(port)s/postgres", "pool_sise": 3}}}
'''


def test_scenario_13_secrets_under_faults(roles, unblocked, tmp_path):
    good, locked = roles
    entries = {
        "relb_settings": {"USER": good, "PASSWORD": SENTINEL},
        "relb_options": {"USER": good, "PASSWORD": "", "OPTIONS": {"password": SENTINEL}},
        "relb_wrong": {"USER": locked, "PASSWORD": SENTINEL},
    }
    url = f"postgresql://{{user}}:{SENTINEL}@127.0.0.1:{PORT}/postgres"
    poolkit = {
        "ENGINES": {"relb_url": {"url": url.format(user=good), "pool_size": 1},
                    "relb_url_wrong": {"url": url.format(user=locked), "pool_size": 1}},
        "HEALTH": {"token": TOKEN, "timeout": 1, "cache_ttl": 0, "primary": "relb_settings",
                   "databases": ["relb_settings", "relb_options", "relb_wrong"]},
    }
    provoked = Counter[str]()
    with aliases(entries), override_settings(POOLKIT=poolkit, DEBUG=True), \
            Captured() as captured:
        # Up: successful connections through every path, then their reprs.
        for alias in ("relb_settings", "relb_options"):
            assert _orm(alias) == good
            assert _engine(alias) == good
            assert _async_engine(alias) == good
            engine = get_engine(alias)
            fairy = engine.raw_connection()
            captured.add("repr", [engine, engine.pool, engine.url, str(engine.url), fairy,
                                  connections[alias], pool_stats(alias),
                                  pool_stats(alias).as_dict()])
            fairy.close()
        assert _engine("relb_url") == good
        captured.add("repr", [get_engine("relb_url"), get_engine("relb_url").url,
                              conf.get_settings(), conf.get_settings().pools, engine_registry])
        # Authentication failures, every path.
        for source, call in [("orm auth", lambda: _orm("relb_wrong")),
                             ("engine auth", lambda: _engine("relb_wrong")),
                             ("async auth", lambda: _async_engine("relb_wrong")),
                             ("url auth", lambda: _engine("relb_url_wrong")),
                             ("async url auth", lambda: _async_engine("relb_url_wrong"))]:
            captured.error(source, call)
            provoked[source] += 1
        client = Client()
        _views(captured, client)  # relb_wrong cannot log in: its detail says so
        for command in COMMANDS:
            _command(captured, *command)
        # Down: the server stopped under pools with idle connections.
        cluster("stop")
        for source, call in [("orm down", lambda: _orm("relb_settings")),
                             ("engine down", lambda: _engine("relb_options")),
                             ("async down", lambda: _async_engine("relb_settings")),
                             ("url down", lambda: _engine("relb_url"))]:
            with contextlib.suppress(Exception):
                connections["relb_settings"].close()
            captured.error(source, call)
            provoked[source] += 1
        assert set(_views(captured, client)) >= {503}
        for command in COMMANDS:
            _command(captured, *command)
        cluster("start")
    # manage.py check, in its own process, with the sentinel in every place of the settings.
    (tmp_path / "relb_check_settings.py").write_text(
        CHECK_SETTINGS % {"port": PORT, "good": good, "secret": SENTINEL})
    check = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, check=False,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "relb_check_settings",
             "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    captured.add("manage.py check", check.stdout + check.stderr)

    found = captured.occurrences(SENTINEL)
    logs = sum(1 for source, _ in captured.texts if source == "log")
    met = sum(found.values()) == 0
    record("13 secrets", bar="occurrences of the sentinel password in everything captured: 0",
           met=met, occurrences=sum(found.values()), where=dict(found),
           texts_captured=len(captured.texts), log_records=logs,
           characters_captured=sum(len(text_) for _, text_ in captured.texts),
           failures_provoked=sum(provoked.values()))
    # The faults really happened and were captured.
    assert check.returncode != 0, check.stderr
    for check_id in ("poolkit.E002", "poolkit.E010", "poolkit.E011"):
        assert check_id in check.stderr, check.stderr
    assert any("password authentication failed" in text_ for _, text_ in captured.texts)
    assert any("refused" in text_ for _, text_ in captured.texts)
    assert logs > 100
    assert sum(found.values()) == 0, found
