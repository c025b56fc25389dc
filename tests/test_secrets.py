"""No password in reprs, URLs, log lines, error messages or check output: tested with a
sentinel password that must appear nowhere."""

from __future__ import annotations

import copy
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import django.db
import pytest
import sqlalchemy.exc
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client, RequestFactory, override_settings
from django.utils.module_loading import import_string
from django.views.debug import ExceptionReporter
from sqlalchemy import text

from django_poolkit import PoolTimeout, conf, get_engine, pool_stats
from django_poolkit.engines import engine_registry

from .helpers.tcpproxy import free_port

SENTINEL = "s3ntinel-PW-7c41d"

pytestmark = pytest.mark.django_db(transaction=True)


def _everything(engine) -> str:
    pool_settings = conf.get_settings().pools
    return "\n".join([
        repr(engine), str(engine.url), repr(engine.url), repr(engine.pool),
        repr(engine_registry), repr(pool_settings), repr(pool_stats()),
        str(pool_stats().as_dict()),
    ])


def test_password_of_a_databases_alias_never_shows(caplog):
    settings_dict = connections.settings["default"]
    settings_dict["PASSWORD"] = SENTINEL  # the local server trusts 127.0.0.1: it is ignored
    try:
        with caplog.at_level(logging.DEBUG):
            engine = get_engine()
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            captured = _everything(engine)
            engine_registry.dispose()
    finally:
        settings_dict["PASSWORD"] = ""
    assert SENTINEL not in captured
    assert SENTINEL not in caplog.text
    assert "disposed sync engine" in caplog.text  # the log was really captured


def test_password_in_an_engine_url_never_shows_even_when_connecting_fails(settings, caplog):
    settings.POOLKIT = {"ENGINES": {"vault": {
        "url": f"postgresql://postgres:{SENTINEL}@127.0.0.1:1/postgres", "connect_timeout": 2}}}
    with caplog.at_level(logging.DEBUG):
        engine = get_engine("vault")
        with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
            engine.connect()
    chain = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error!s} {error!r}")
        error = error.__cause__ or error.__context__
    assert SENTINEL not in "\n".join(chain)
    assert SENTINEL not in _everything(engine)
    assert SENTINEL not in caplog.text


def test_invalid_engine_url_error_does_not_echo_the_url(settings):
    settings.POOLKIT = {"ENGINES": {"broken": {"url": f"mysql://u:{SENTINEL}@h/db"}}}
    with pytest.raises(conf.PoolkitConfigurationError) as raised:
        conf.get_settings()
    assert SENTINEL not in str(raised.value)
    assert 'POOLKIT["ENGINES"]["broken"]["url"]' in str(raised.value)


def test_manage_py_check_output_never_shows_the_password(tmp_path):
    settings_file = tmp_path / "sentinel_settings.py"
    settings_file.write_text(
        "from testproject.settings_test import *\n"
        f"POOLKIT = {{'ENGINES': {{'x': {{'url': 'postgresql://u:{SENTINEL}@h/db', "
        "'pool_sise': 3}}}\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "sentinel_settings",
             "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"}, check=False)
    assert result.returncode != 0
    assert "poolkit.E002" in result.stderr
    assert SENTINEL not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# -- every place a password can be given, every error path, everything captured (issue 14) --------

TOKEN = "secrets-token-" + "0123456789abcdef"
POOLKIT_FILTER = "django_poolkit.debug.PoolkitExceptionReporterFilter"
DJANGO_FILTER = "django.views.debug.SafeExceptionReporterFilter"


class Captures:
    """Every text an operator, a log reader or an HTTP client could see."""

    def __init__(self, reporter_filter: str = POOLKIT_FILTER) -> None:
        self.texts: list[tuple[str, str]] = []
        self.filter = reporter_filter

    def add(self, label: str, text: object) -> None:
        self.texts.append((label, str(text)))

    def error(self, label: str, error: BaseException) -> None:
        self.add(f"{label}: str", error)
        self.add(f"{label}: repr", repr(error))
        self.add(f"{label}: traceback", "".join(traceback.format_exception(error)))
        # Django's own report: what AdminEmailHandler mails (DEBUG off) and DEBUG shows. With
        # Django's own filter a DEBUG page shows every frame's variables, by Django's design.
        for debug in (False, True) if self.filter == POOLKIT_FILTER else (False,):
            # Django caches the default filter: the request names the one to test.
            request = RequestFactory().get("/boom/")
            request.exception_reporter_filter = import_string(self.filter)()
            with override_settings(DEBUG=debug):
                reporter = ExceptionReporter(request, type(error), error, error.__traceback__)
                self.add(f"{label}: report text DEBUG={debug}", reporter.get_traceback_text())
                self.add(f"{label}: report html DEBUG={debug}", reporter.get_traceback_html())

    def found(self) -> list[str]:
        return [label for label, text in self.texts if SENTINEL in text]


def _copy_of_default(**changes: Any) -> dict[str, Any]:
    """A copy of "default", on poolkit's pooled backend (Django's stock backend shows its own
    connect parameters in the reports of its connection errors: Django's matter)."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update({"TEST": {}, **changes})
    return entry


@pytest.fixture(params=[POOLKIT_FILTER, DJANGO_FILTER], ids=["poolkit-filter", "django-filter"])
def secret_everywhere(request: Any, settings: Any) -> Iterator[dict[str, Any]]:
    """The sentinel password in DATABASES, OPTIONS, a replica, a PgBouncer alias, an ENGINES
    URL's userinfo and query, an ENGINES password key and its environment variable. The
    aliases point at a refused port (and the PgBouncer one at a database PgBouncer does not
    have), so every connection fails; ``sec_live`` reaches the real server (trust auth).

    With Django's own report filter a password inside an ENGINES url shows in every report's
    settings (Django masks keys, not parts of a URL: poolkit.W001 says so), so there the urls
    carry another password and the sentinel sits in the places Django masks."""
    in_url = SENTINEL if request.param == POOLKIT_FILTER else "url-password-shown-by-django"
    dead = free_port()
    name = connections.settings["default"]["NAME"]
    aliases = {
        "sec_db": _copy_of_default(PASSWORD=SENTINEL, PORT=str(dead)),
        "sec_opt": _copy_of_default(PORT=str(dead), OPTIONS={"password": SENTINEL}),
        "sec_replica": _copy_of_default(PASSWORD=SENTINEL, PORT=str(dead),
                                        TEST={"MIRROR": "default"}),
        "sec_bouncer": _copy_of_default(PASSWORD=SENTINEL, PORT="6432",
                                        NAME="no_such_database_for_secrets"),
    }
    for alias, entry in aliases.items():
        connections.settings[alias] = entry
    base = f"postgresql://postgres@127.0.0.1:{dead}/{name}"
    engines = {
        "sec_url": {"url": f"postgresql://postgres:{in_url}@127.0.0.1:{dead}/{name}"},
        "sec_query": {"url": f"{base}?password={in_url}&sslmode=disable"},
        "sec_key": {"url": base, "password": SENTINEL},
        "sec_env": {"url": base},
        "sec_live": {"url": f"postgresql://postgres:{in_url}@127.0.0.1:5432/{name}",
                     "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2},
    }
    settings.POOLKIT = {
        "DATABASES": {"sec_bouncer": {"pgbouncer": "transaction", "connect_timeout": 2},
                      **{alias: {"connect_timeout": 2} for alias in aliases
                         if alias != "sec_bouncer"}},
        "ENGINES": {engine: {"connect_timeout": 2, **entry} for engine, entry in engines.items()},
        "HEALTH": {"token": TOKEN, "timeout": 2.0, "cache_ttl": 0, "primary": "default",
                   "databases": ["default", *aliases]},
        "ROUTING": {"probe_interval": None, "CLUSTERS": {"main": {
            "primary": "default", "replicas": ["sec_replica"]}}},
    }
    os.environ["POOLKIT_SEC_ENV__PASSWORD"] = SENTINEL
    conf.reload()
    try:
        yield {"aliases": list(aliases), "engines": list(engines), "filter": request.param}
    finally:
        os.environ.pop("POOLKIT_SEC_ENV__PASSWORD", None)
        engine_registry.dispose()
        for alias in aliases:
            connections.settings.pop(alias, None)
        conf.reload()


def test_the_sentinel_is_nowhere_on_any_error_path(
        secret_everywhere: dict[str, Any], caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    captures = Captures(secret_everywhere["filter"])
    pools = [*secret_everywhere["aliases"], *secret_everywhere["engines"]]
    with caplog.at_level(logging.DEBUG):
        config = conf.get_settings()
        captures.add("settings repr", repr(config))
        captures.add("pools repr", repr(config.pools))
        for pool in pools:
            engine = get_engine(pool)
            captures.add(f"{pool} engine", "\n".join(
                [repr(engine), str(engine.url), repr(engine.url), repr(engine.pool),
                 repr(config.pools[pool]), repr(pool_stats(pool)), str(pool_stats(pool))]))
            if pool == "sec_live":
                continue
            with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
                engine.connect()
            captures.error(f"{pool} connect", raised.value)
        # An exhausted pool whose URL holds the password: PoolTimeout's text and the 503.
        live = get_engine("sec_live")
        with live.connect(), pytest.raises(PoolTimeout) as timeout:
            live.connect()
        captures.error("sec_live PoolTimeout", timeout.value)
        # The ORM of the aliases (Django's own backend on them).
        for alias in secret_everywhere["aliases"]:
            wrapper = connections.create_connection(alias)  # the test case guards the others
            with pytest.raises(django.db.Error) as raised, wrapper.wrap_database_errors:
                wrapper.connect()  # what ensure_connection does, without the test's guard
            captures.error(f"{alias} ORM connect", raised.value)
        # HTTP: the health views with and without the token, the metrics.
        client = Client(raise_request_exception=False)
        for url in ("/health/ready/", "/health/db/"):
            for headers in ({}, {"X-Poolkit-Health-Token": TOKEN}):
                response = client.get(url, headers=headers)
                captures.add(f"GET {url} {bool(headers)}", response.content.decode())
        # Commands, both formats.
        for command, extra in (("poolcheck", ["--database", "sec_db", "--database", "sec_opt",
                                              "--database", "sec_replica",
                                              "--database", "sec_bouncer"]),
                               ("poolstatus", [arg for pool in pools
                                               for arg in ("--database", pool)]),
                               ("poolplan", ["--max-connections", "100"]),
                               ("poolplan", [])):
            for form in ("table", "json"):
                out, err = io.StringIO(), io.StringIO()
                try:
                    call_command(command, *extra, "--format", form, stdout=out, stderr=err)
                except CommandError as error:
                    captures.error(f"{command} {form} error", error)
                captures.add(f"{command} {form} stdout", out.getvalue())
                captures.add(f"{command} {form} stderr", err.getvalue())
        # A configuration error next to each password.
        for bad in ({"ENGINES": {"x": {"url": f"postgresql://u:{SENTINEL}@h:port/db"}}},
                    {"ENGINES": {"x": {"url": f"mysql://u:{SENTINEL}@h/db"}}},
                    {"ENGINES": {"x": {"url": f"postgresql://u@h/db?password={SENTINEL}",
                                       "pool_sise": 1}}},
                    {"ENGINES": {"x": {"url": "postgresql://u@h/db", "password": SENTINEL,
                                       "pool_size": "x"}}}):
            problems = conf.build_settings(bad, connections.settings, {})[1]
            captures.add("config problems", "\n".join(map(str, problems)))
            captures.add("config error", conf.PoolkitConfigurationError(problems))
    captures.add("logs at DEBUG", caplog.text)
    captures.add("log records", "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records))
    found = captures.found()
    if os.environ.get("SECRETS_DUMP"):
        with open(os.environ["SECRETS_DUMP"], "w") as dump:
            for label, text_ in captures.texts:
                if SENTINEL in text_:
                    lines = text_.splitlines()
                    for number, line in enumerate(lines):
                        if SENTINEL in line:
                            context = " / ".join(lines[max(0, number - 6):number + 1])
                            dump.write(f"{label} | {context[-700:]}\n")
    with capsys.disabled():
        print(f"\nsecrets ({secret_everywhere['filter'].rsplit('.', 1)[-1]}): "
              f"{len(captures.texts)} captured texts "
              f"({sum(len(text) for _, text in captures.texts)} characters), "
              f"{len(pools)} places holding the sentinel, {len(found)} occurrences")
    assert found == [], "\n".join(found)
    assert "built sync engine for 'sec_url'" in caplog.text  # the log was really captured


def test_django_own_error_reports_mask_the_password_key_and_its_variable(
        settings: Any) -> None:
    """Without poolkit's filter: the password key and POOLKIT_<NAME>__PASSWORD are masked by
    Django itself; a password inside the url is not, and poolkit.W001 says so."""
    from django.core.management import call_command as run

    name = connections.settings["default"]["NAME"]
    settings.POOLKIT = {"ENGINES": {
        "vault": {"url": f"postgresql://postgres@127.0.0.1:5432/{name}", "password": SENTINEL},
        "in_url": {"url": f"postgresql://postgres@127.0.0.1:5432/{name}?password=other-pw"}}}
    captures = Captures(DJANGO_FILTER)
    try:
        raise RuntimeError("provoked")
    except RuntimeError as error:
        request = RequestFactory().get("/", **{"POOLKIT_VAULT__PASSWORD": SENTINEL})
        request.exception_reporter_filter = import_string(DJANGO_FILTER)()
        for debug in (False, True):
            with override_settings(DEBUG=debug):
                reporter = ExceptionReporter(request, type(error), error, error.__traceback__)
                captures.add(f"report DEBUG={debug}", reporter.get_traceback_text())
    assert captures.found() == []
    assert "other-pw" in captures.texts[0][1]  # why W001 exists
    with pytest.raises(CommandError) as raised:
        run("check", "--fail-level", "WARNING", stdout=io.StringIO(), stderr=io.StringIO())
    assert 'poolkit.W001) The url of POOLKIT["ENGINES"]["in_url"] holds a password' in str(
        raised.value)
    assert '["vault"]' not in str(raised.value)
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = POOLKIT_FILTER
    run("check", "--fail-level", "WARNING", stdout=io.StringIO())
