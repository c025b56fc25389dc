"""System checks: ``manage.py check`` reports a misconfigured ``POOLKIT`` as ``poolkit.E0xx``
errors with the key path and a hint, never a traceback.

Check ids are API, so the tests compare whole ``CheckMessage`` objects (msg, hint, id).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import Error, run_checks
from django.core.checks import Warning as CheckWarning
from django.test import override_settings

from django_poolkit import conf
from django_poolkit.checks import check_poolkit_settings

ROOT = Path(__file__).resolve().parent.parent
SENTINEL = "s3ntinel-PW-9f2"
#: The test project's aliases (other features add some, e.g. a non-pooled one).
DATABASES = list(settings.DATABASES)
FOUNDATION_IDS = {f"poolkit.E00{number}" for number in range(1, 8)}


@pytest.fixture(autouse=True)
def _no_poolkit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks read os.environ: keep the caller's POOLKIT_* variables out of these tests."""
    for name in list(os.environ):
        if name.startswith("POOLKIT_") or name == "ENV":
            monkeypatch.delenv(name)


def poolkit_messages(**kwargs: Any) -> list[Any]:
    """The messages of the foundation's check among everything ``run_checks()`` reports."""
    return [message for message in run_checks(**kwargs) if message.id in FOUNDATION_IDS]


def test_a_clean_configuration_gives_no_messages() -> None:
    assert check_poolkit_settings() == []
    assert poolkit_messages() == []
    with override_settings(POOLKIT={"DEFAULTS": {"sizing": "production", "cores": 2},
                                    "ENGINES": {"stats": {"url": "sqlite:///stats.db"}}}):
        assert poolkit_messages() == []


def test_run_checks_returns_the_exact_errors() -> None:
    broken = {"DATABASES": {"default": {"pool_sise": 10, "max_overflow": -5}}}
    with override_settings(POOLKIT=broken):
        assert poolkit_messages() == [
            Error('POOLKIT["DATABASES"]["default"]["pool_sise"]: unknown key; did you mean '
                  '"pool_size"?',
                  hint="Accepted keys: " + ", ".join(f'"{name}"' for name in conf.KNOBS) + ".",
                  id="poolkit.E002"),
            Error('POOLKIT["DATABASES"]["default"]["max_overflow"]: must be an integer >= 0 '
                  "and <= 10000, or -1 for no limit, got -5.",
                  hint="Extra connections opened when the pool is exhausted, closed again on "
                  "checkin.", id="poolkit.E003"),
        ]


@pytest.mark.parametrize(
    ("poolkit", "expected"),
    [
        pytest.param("small_api", Error(
            "POOLKIT: must be a dict, got str.",
            hint="Write POOLKIT = {...} with the keys "
            + ", ".join(dict.fromkeys([*conf.TOP_LEVEL_KEYS, *conf.SECTION_PARSERS])) + ".",
            id="poolkit.E001"), id="E001"),
        pytest.param({"DATABASES": {"xyzzy": {}}}, Error(
            'POOLKIT["DATABASES"]["xyzzy"]: unknown database alias.',
            hint="settings.DATABASES has: " + ", ".join(f'"{alias}"' for alias in DATABASES)
            + ".", id="poolkit.E004"), id="E004"),
        pytest.param({"DATABASES": {"default": {"sizing": "async"}}}, Error(
            'POOLKIT["DATABASES"]["default"]: sizing "async" needs "concurrency" (expected '
            "concurrent requests).",
            hint='Set "concurrency", or pick another sizing formula.', id="poolkit.E005"),
            id="E005"),
        pytest.param({"ENGINES": {"stats": {"url": f"mysql://u:{SENTINEL}@h/stats"}}}, Error(
            'POOLKIT["ENGINES"]["stats"]["url"]: uses "mysql", which poolkit does not pool.',
            hint="Use a postgresql:// or sqlite:// URL.", id="poolkit.E007"), id="E007"),
    ],
)
def test_each_check_id(poolkit: Any, expected: Error) -> None:
    with override_settings(POOLKIT=poolkit):
        assert poolkit_messages() == [expected]


def test_environment_problems_are_checks_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLKIT_POOL_SIZ", "3")
    assert poolkit_messages() == [Error(
        'environment variable POOLKIT_POOL_SIZ: unknown setting "POOL_SIZ"; did you mean '
        '"POOLKIT_POOL_SIZE"?',
        hint="Variables are POOLKIT_<SETTING> or POOLKIT_<ALIAS>__<SETTING> with SETTING one of "
        + ", ".join(name.upper() for name in conf.KNOBS) + ".", id="poolkit.E006")]


@pytest.mark.parametrize(("name", "url"), [
    ("stats", f"postgresql://u:{SENTINEL}@warehouse:port/stats"),
    ("stats", f"mysql://u:{SENTINEL}@warehouse/stats"),
    ("default", f"postgresql://u:{SENTINEL}@warehouse/stats"),  # named like a DATABASES alias
])
def test_no_check_message_shows_a_password(name: str, url: str) -> None:
    with override_settings(POOLKIT={"ENGINES": {name: {"url": url, "pool_size": 0}}}):
        messages = poolkit_messages()
    assert len(messages) == 2  # the url or name problem, and pool_size
    for message in messages:
        assert SENTINEL not in f"{message.msg} {message.hint} {message!r} {message}"


def _manage(settings_module: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("POOLKIT_")}
    environ["DJANGO_SETTINGS_MODULE"] = settings_module
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environ, capture_output=True,
        text=True, timeout=60, check=False)


def test_manage_py_check_reports_errors_without_a_traceback() -> None:
    """The real command on the test project, with tests/settings_broken.py's POOLKIT."""
    result = _manage("tests.settings_broken", "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert SENTINEL not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines[0] == "SystemCheckError: System check identified some issues:"
    assert (
        '?: (poolkit.E002) POOLKIT["DATABASES"]["default"]["pool_sise"]: unknown key; did you '
        'mean "pool_size"?') in lines
    assert ('?: (poolkit.E003) POOLKIT["DATABASES"]["default"]["max_overflow"]: must be an '
            "integer >= 0 and <= 10000, or -1 for no limit, got -5.") in lines
    assert ("\tHINT: Extra connections opened when the pool is exhausted, closed again on "
            "checkin.") in lines
    assert ('?: (poolkit.E007) POOLKIT["ENGINES"]["analytics"]["url"]: is not a database URL '
            "SQLAlchemy can parse.") in lines
    assert "System check identified 3 issues (0 silenced)." in lines


def test_a_broken_configuration_with_the_metrics_mounted_prints_only_the_report() -> None:
    """Importing the metrics URLconf registers its collector: that must read no state (it
    printed a 14-line "collecting failed" traceback before the report)."""
    result = _manage("tests.settings_broken_metrics", "check")
    assert result.returncode == 1
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    assert "collecting failed" not in output
    assert output.startswith("SystemCheckError: System check identified some issues:")


def test_manage_py_check_passes_on_the_test_project() -> None:
    result = _manage("testproject.settings_test", "check")
    assert result.returncode == 0, result.stderr
    assert "poolkit." not in result.stdout + result.stderr


_ROUTED = {"ROUTING": {"CLUSTERS": {"main": {"primary": "default", "replicas": ["replica"]}}}}
_ROUTER = "django_poolkit.routers.PrimaryReplicaRouter"
_MIDDLEWARE = "django_poolkit.middleware.PoolkitMiddleware"


@pytest.mark.parametrize(("routers", "middleware", "expected"), [
    ([], [_MIDDLEWARE], ["poolkit.W020"]),
    ([_ROUTER], [], ["poolkit.W021"]),
    ([_ROUTER], [_MIDDLEWARE], []),
])
def test_replicas_without_the_router_or_the_middleware_are_warned(
        routers: list[str], middleware: list[str], expected: list[str]) -> None:
    with override_settings(POOLKIT=_ROUTED, DATABASE_ROUTERS=routers, MIDDLEWARE=middleware):
        found = [message.id for message in run_checks() if message.id.startswith("poolkit.")]
    assert found == expected


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by checks only
def test_a_routed_replica_on_the_stock_backend_is_warned() -> None:
    stock = {**settings.DATABASES, "replica": {**settings.DATABASES["replica"],
                                               "ENGINE": "django.db.backends.postgresql"}}
    with override_settings(POOLKIT=_ROUTED, DATABASE_ROUTERS=[_ROUTER],
                           MIDDLEWARE=[_MIDDLEWARE], DATABASES=stock):
        found = [message for message in run_checks() if message.id == "poolkit.W023"]
    assert found == [CheckWarning(
        'DATABASES["replica"], a replica of cluster "main", uses ENGINE '
        '"django.db.backends.postgresql", not the pooled backend: the reads routed to it '
        "bypass its pool (with CONN_MAX_AGE 0, each request opens a new server connection), "
        "and the dashboard shows that pool idle.",
        hint='Set DATABASES["replica"]["ENGINE"] = "django_poolkit.db.backends.postgresql" '
             'and "CONN_MAX_AGE": 0, as for the primary.', id="poolkit.W023")]


def test_no_routing_no_wiring_warning() -> None:
    with override_settings(POOLKIT={}, DATABASE_ROUTERS=[], MIDDLEWARE=[]):
        assert [message.id for message in run_checks()
                if message.id in ("poolkit.W020", "poolkit.W021")] == []


def _w022(**overrides: Any) -> list[Any]:
    with override_settings(**overrides):
        return [message for message in run_checks() if message.id == "poolkit.W022"]


def test_pools_without_the_middleware_are_warned_a_timeout_is_a_500() -> None:
    pooled = ", ".join(f'DATABASES["{alias}"]' for alias in DATABASES
                       if settings.DATABASES[alias]["ENGINE"].startswith("django_poolkit"))
    assert _w022(POOLKIT={"ENGINES": {"stats": {"url": "sqlite:///stats.db"}}},
                 MIDDLEWARE=[]) == [CheckWarning(
        f'{pooled}, POOLKIT["ENGINES"]["stats"] are pooled, but PoolkitMiddleware is not in '
        "MIDDLEWARE: a request that waits pool_timeout for a connection fails with a 500 "
        "instead of a 503 with Retry-After.",
        hint='Add "django_poolkit.middleware.PoolkitMiddleware" near the top of MIDDLEWARE, '
             "above the middleware that reads the database (or silence poolkit.W022 in a "
             "project that serves no HTTP requests).", id="poolkit.W022")]
    assert _w022(MIDDLEWARE=[_MIDDLEWARE]) == []
    # Routed replicas: W021 already says it.
    assert _w022(POOLKIT=_ROUTED, DATABASE_ROUTERS=[_ROUTER], MIDDLEWARE=[]) == []


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # read by checks only
def test_no_pool_no_middleware_warning() -> None:
    stock = {alias: {**database, "ENGINE": "django.db.backends.postgresql"}
             for alias, database in settings.DATABASES.items()}
    assert _w022(DATABASES=stock, POOLKIT={}, MIDDLEWARE=[]) == []


def test_the_pooled_backend_without_the_app_is_warned(settings) -> None:
    from django.apps import apps as registry

    from django_poolkit.db.checks import check_app_installed

    assert check_app_installed() == []
    settings.INSTALLED_APPS = [name for name in settings.INSTALLED_APPS
                               if name != "django_poolkit"]
    try:
        pooled = [f'DATABASES["{alias}"]' for alias in DATABASES
                  if settings.DATABASES[alias]["ENGINE"].startswith("django_poolkit")]
        assert check_app_installed() == [CheckWarning(
            f"{', '.join(pooled)} use django_poolkit.db.backends.postgresql, but "
            '"django_poolkit" is not in INSTALLED_APPS: POOLKIT is not checked, the pools '
            "are not closed at exit, and a forked worker (gunicorn --preload, Celery prefork) "
            "keeps its parent's pools.",
            hint='Add "django_poolkit" to INSTALLED_APPS.', id="poolkit.W015")]
    finally:
        registry.clear_cache()


@pytest.mark.parametrize("engine", ["django_poolkit", "django_poolkit.db.backends.postgres"])
def test_a_wrong_engine_under_django_poolkit_names_the_backend(tmp_path: Path,
                                                               engine: str) -> None:
    (tmp_path / "wrong_engine_settings.py").write_text(
        "from testproject.settings_test import *  # noqa: F403\n"
        f'DATABASES["default"]["ENGINE"] = "{engine}"  # noqa: F405\n')
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("POOLKIT_")}
    environ.update(DJANGO_SETTINGS_MODULE="wrong_engine_settings",
                   PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f'django.core.exceptions.ImproperlyConfigured: DATABASES ENGINE "{engine}" is not a '
        'database backend: the pooled backend is "django_poolkit.db.backends.postgresql" (and '
        '"django_poolkit" belongs in INSTALLED_APPS).')


def test_a_missing_psycopg_says_how_to_install_it() -> None:
    """pip install django-poolkit without [binary] on a host without libpq."""
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from django.core.management import execute_from_command_line\n"
            "execute_from_command_line(['manage.py', 'check'])\n")
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("POOLKIT_")}
    environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings_test"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "ImportError: django-poolkit needs psycopg 3 and a libpq, and importing psycopg failed")
    assert "pip install 'django-poolkit[binary]'" in result.stderr
