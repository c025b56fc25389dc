"""The findings of the hostile review (issue 14), one test per finding: each failed before its
fix. The table of bad inputs is ``test_bad_inputs.py``; secrets are ``test_secrets.py``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from sqlalchemy import text

from django_poolkit import conf, get_engine
from django_poolkit.engines import engine_registry
from django_poolkit.stats import counters_for

from .helpers.health import TOKEN, poolkit

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent

urlpatterns = [
    path("health/", include("django_poolkit.urls")),
    path("metrics/", include("django_poolkit.metrics")),
]

SESSION_STACK = [*settings.MIDDLEWARE, *(
    name for name in ("django.contrib.sessions.middleware.SessionMiddleware",
                      "django.contrib.auth.middleware.AuthenticationMiddleware")
    if name not in settings.MIDDLEWARE)]


def _database_work() -> int:
    """Checkouts and failed connects of the application's pool for "default" (the health
    probes use connections of their own, outside the pool)."""
    counters = counters_for("default", "sync")
    return int(counters.get("checkouts") + counters.get("connect_errors"))


@pytest.fixture
def session_stack(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = SESSION_STACK
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"


@contextlib.contextmanager
def database_down() -> Iterator[None]:
    """Point "default" at a port nothing listens on (the probe and the ORM both fail)."""
    entry = connections.settings["default"]
    saved = entry["PORT"]
    connections["default"].close()
    entry["PORT"] = "1"
    engine_registry.dispose()
    conf.reload()
    try:
        yield
    finally:
        connections["default"].close()
        entry["PORT"] = saved
        engine_registry.dispose()
        conf.reload()


# -- 2. an anonymous session cookie costs no database work -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_session_cookie_makes_no_database_query(session_stack: None,
                                                             settings: Any) -> None:
    settings.POOLKIT = poolkit(timeout=2.0, cache_ttl=60)
    client = Client()
    assert client.get("/health/ready/").status_code == 200  # the cached round
    client.cookies[settings.SESSION_COOKIE_NAME] = "anonymous-cookie-12345678"
    # The test client runs the views' sync parts in this thread: every ORM query is seen.
    with CaptureQueriesContext(connections["default"]) as queries:  # (checks out once)
        before = _database_work()
        answers = [client.get(url).status_code
                   for url in ("/health/ready/", "/health/db/", "/health/live/", "/metrics/")
                   for _ in range(15)]
    assert answers == [200] * 45 + [403] * 15
    assert [query["sql"] for query in queries.captured_queries] == []
    assert _database_work() - before == 0


@pytest.mark.django_db(transaction=True)
def test_database_down_with_a_session_cookie_answers_503_and_403(session_stack: None,
                                                                 settings: Any) -> None:
    # staff_details on: the one path that reads the session must still never turn into a 500.
    settings.POOLKIT = poolkit(staff_details=True)
    client = Client(raise_request_exception=False)
    client.cookies[settings.SESSION_COOKIE_NAME] = "anonymous-cookie-12345678"
    with database_down():
        ready = client.get("/health/ready/")
        database = client.get("/health/db/")
        metrics = client.get("/metrics/")
        with_token = client.get("/metrics/", headers={"X-Poolkit-Health-Token": TOKEN})
    assert (ready.status_code, database.status_code) == (503, 503)
    assert ready.json() == {"status": "unhealthy"}
    assert metrics.status_code == 403
    assert with_token.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_metrics_stay_out_of_atomic_requests(session_stack: None, settings: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings.POOLKIT = poolkit()
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    before = _database_work()
    client = Client()
    assert client.get("/metrics/").status_code == 403
    assert client.get("/metrics/", headers={"X-Poolkit-Health-Token": TOKEN}).status_code == 200
    assert _database_work() - before == 0



# -- 3. a password in an ENGINES URL, its query, or beside it ---------------------------------


def _engine_url(userinfo: str, query: str = "") -> str:
    return (f"postgresql://{userinfo}@127.0.0.1:5432/"
            + connections.settings["default"]["NAME"] + query)


@pytest.mark.django_db(transaction=True)
def test_a_password_in_the_url_query_never_shows(settings: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    settings.POOLKIT = {"ENGINES": {"vault": {
        "url": _engine_url("postgres:first-pw-1", "?password=second-pw-2&sslmode=prefer")}}}
    with caplog.at_level(logging.DEBUG):
        engine = get_engine("vault")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    seen = "\n".join([caplog.text, repr(engine), str(engine.url), repr(engine.url),
                      engine.url.render_as_string(hide_password=False)])
    assert "built sync engine for 'vault'" in caplog.text
    assert "first-pw-1" not in seen
    assert "second-pw-2" not in seen
    assert engine.url.password is None  # the manual's promise (docs/configuration.rst)
    assert engine.url.query == {"sslmode": "prefer"}  # the rest of the query is kept


@pytest.mark.django_db(transaction=True)
def test_the_password_key_wins_and_django_error_reports_mask_it(settings: Any) -> None:
    settings.POOLKIT = {"ENGINES": {"vault": {
        "url": _engine_url("postgres:in-url-pw"), "password": "beside-pw-3"}}}
    engine = get_engine("vault")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    spec_password = engine.dialect.create_connect_args(engine.url)[1].get("password")
    assert spec_password is None  # never in the URL: only in connect_args
    from django_poolkit.engines.params import spec_for_url

    pool = conf.get_settings().pools["vault"]
    assert spec_for_url("vault", pool.url or "", pool).connect_args["password"] == "beside-pw-3"
    report = _error_report()
    assert "beside-pw-3" not in report
    assert "********************" in report  # Django's mask, under the "password" key


def _error_report() -> str:
    """Django's own error report text (what AdminEmailHandler mails and DEBUG pages show)."""
    from django.test import RequestFactory
    from django.views.debug import ExceptionReporter

    try:
        raise RuntimeError("provoked")
    except RuntimeError:
        import sys

        info = sys.exc_info()
    request = RequestFactory().get("/")
    reporter = ExceptionReporter(request, *info)
    return reporter.get_traceback_text() + reporter.get_traceback_html()


# -- 5. an unescaped "@" in the password --------------------------------------------------------


def test_the_userinfo_ends_at_the_last_at_sign() -> None:
    url = conf.parse_url("postgresql://app:p@tail@db.example:6543/prod?sslmode=require")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app", "p@tail", "db.example", 6543, "prod")
    assert dict(url.query) == {"sslmode": "require"}
    assert conf.parse_url("postgresql://a@b@host/db").username == "a@b"
    # One "@", or one in the query only: SQLAlchemy's own reading.
    assert conf.parse_url("postgresql://u:pw@host/db?application_name=a@b").host == "host"
    assert conf.parse_url("postgresql://host/db").host == "host"


@pytest.mark.django_db(transaction=True)
def test_commands_print_the_host_not_the_rest_of_the_password(settings: Any) -> None:
    settings.POOLKIT = {"ENGINES": {"at": {"url": _engine_url("postgres:p@tail-of-pw")}}}
    output, table = io.StringIO(), io.StringIO()
    call_command("poolstatus", "--database", "at", "--format", "json", stdout=output)
    call_command("poolstatus", "--database", "at", stdout=table)
    document = json.loads(output.getvalue())
    entry = document["databases"][0]
    assert (entry["server"], entry["target"]["host"]) == ("127.0.0.1:5432", "127.0.0.1")
    assert "tail-of-pw" not in output.getvalue() + table.getvalue()
    assert "127.0.0.1" in table.getvalue()
    engine = get_engine("at")
    assert engine.url.host == "127.0.0.1"
    with engine.connect() as connection:  # trust auth: the password is not checked
        connection.execute(text("SELECT 1"))


# -- 8. environment variables: one rule for empty values, strict digits --------------------------


@pytest.mark.parametrize(("variable", "value"), [
    ("POOLKIT_STATEMENT_TIMEOUT", ""), ("POOLKIT_PGBOUNCER", ""), ("POOLKIT_CLIENT_TIMEOUT", ""),
    ("POOLKIT_LEAK_DETECTION_THRESHOLD", " "), ("POOLKIT_APPLICATION_NAME", ""),
    ("POOLKIT_POOL_SIZE", ""), ("POOLKIT_POOL_SIZE", "\u0661\u0660"),
    ("POOLKIT_POOL_SIZE", "1_000"),
    ("POOLKIT_POOL_SIZE", "+7"), ("POOLKIT_POOL_TIMEOUT", "1_0"),
])
def test_an_empty_or_loose_variable_is_an_error_naming_it(variable: str, value: str) -> None:
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x",
                             "OPTIONS": {}}}
    built, problems = conf.build_settings({"DEFAULTS": {"pgbouncer": "transaction"}},
                                          databases, {variable: value})
    assert built is None
    assert [(problem.path, problem.check_id) for problem in problems] == [
        (f"environment variable {variable}", "poolkit.E006")]
    assert repr(value) in problems[0].message


# -- 9. command arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(("command", "argument", "value", "accepted"), [
    ("poolstatus", "--watch", "nan", "a number of seconds >= 0.5 and <= 86400"),
    ("poolstatus", "--watch", "inf", "a number of seconds >= 0.5 and <= 86400"),
    ("poolstatus", "--watch", "1e-300", "a number of seconds >= 0.5 and <= 86400"),
    ("poolplan", "--queries-per-request", "1e-320", "a number >= 0.001 and <= 10000"),
    ("poolplan", "--queries-per-request", "inf", "a number >= 0.001 and <= 10000"),
    ("poolplan", "--threads", "\u0661\u0660", "an integer >= 1 and <= 1000000"),
    ("poolcheck", "--timeout", "nan", "a number of seconds >= 0.001 and <= 30"),
])
def test_a_bad_number_argument_is_a_usage_error(command: str, argument: str, value: str,
                                                accepted: str) -> None:
    with pytest.raises(CommandError) as raised:
        call_command(command, argument, value)
    assert raised.value.returncode == 2
    assert str(raised.value) == f"Error: argument {argument}: must be {accepted}, got {value!r}"


def test_a_bad_watch_exits_2_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "poolstatus", "--watch", "nan"], capture_output=True,
        text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings_test"})
    assert result.returncode == 2
    assert "argument --watch: must be a number of seconds >= 0.5 and <= 86400, got 'nan'" in (
        result.stderr)
    assert "Traceback" not in result.stderr


# -- 6 and 7. numbers and strings that broke at run time are refused at first use --------------


@pytest.mark.parametrize(("poolkit_", "path"), [
    ({"DEFAULTS": {"pool_timeout": 1e10}}, 'POOLKIT["DEFAULTS"]["pool_timeout"]'),
    ({"DEFAULTS": {"statement_timeout": 2**31}}, 'POOLKIT["DEFAULTS"]["statement_timeout"]'),
    ({"DEFAULTS": {"application_name": "billing{v2}"}},
     'POOLKIT["DEFAULTS"]["application_name"]'),
    ({"ROUTING": {"pin_seconds": float("inf"), "CLUSTERS": {
        "main": {"primary": "default", "replicas": ["replica"]}}}},
     'POOLKIT["ROUTING"]["pin_seconds"]'),
    ({"HEALTH": {"databases": []}}, 'POOLKIT["HEALTH"]["databases"]'),
])
def test_first_use_names_the_key_instead_of_failing_later(settings: Any, poolkit_: dict[str, Any],
                                                          path: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.POOLKIT = poolkit_
    with pytest.raises(ImproperlyConfigured) as raised:
        get_engine("default")
    assert path in str(raised.value)
    assert "must be" in str(raised.value)


@pytest.mark.django_db(transaction=True)
def test_braces_in_application_name_are_written_doubled(settings: Any) -> None:
    settings.POOLKIT = {"ENGINES": {"named": {"url": _engine_url("postgres"),
                                              "application_name": "{{v2}}:{alias}"}}}
    with get_engine("named").connect() as connection:
        name = connection.execute(text("SELECT current_setting('application_name')")).scalar()
    assert name == "{v2}:named"


def test_isolation_level_7_is_a_check_error_not_a_key_error() -> None:
    databases = {"default": {"ENGINE": "django_poolkit.db.backends.postgresql", "NAME": "x",
                             "OPTIONS": {"isolation_level": 7}}}
    problems = conf.build_settings({}, databases, {})[1]
    assert [(p.check_id, p.path) for p in problems] == [
        ("poolkit.E003", 'DATABASES["default"]["OPTIONS"]["isolation_level"]')]
    assert "got 7" in problems[0].message


# -- 1. operations connections use the engine's own connect arguments (issue 15's builder) -------


def test_commands_keep_the_sslmode_of_an_engine_url(settings: Any) -> None:
    # The test server runs without TLS: with sslmode=require the engine cannot connect, so
    # poolstatus must not call the server reachable (it used to drop the query).
    settings.POOLKIT = {"ENGINES": {"tls": {
        "url": _engine_url("postgres", "?sslmode=require"), "connect_timeout": 2}}}
    output = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("poolstatus", "--database", "tls", "--format", "json", stdout=output)
    assert raised.value.returncode == 1
    entry = json.loads(output.getvalue())["databases"][0]
    assert entry["alias"] == "tls"
    assert entry["error"]
