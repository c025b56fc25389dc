"""The findings of the hostile review (issue 14), one test per finding: each failed before its
fix. The table of bad inputs is ``test_bad_inputs.py``; secrets are ``test_secrets.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.urls import include, path

from django_poolkit import conf
from django_poolkit.engines import engine_registry
from django_poolkit.stats import counters_for

from .test_health import TOKEN, poolkit

pytestmark = pytest.mark.postgres

urlpatterns = [
    path("health/", include("django_poolkit.urls")),
    path("metrics/", include("django_poolkit.metrics")),
]

SESSION_STACK = [
    *settings.MIDDLEWARE,
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def _database_work() -> int:
    """Checkouts and failed connects of the application's pool for "default" (the health
    probes use connections of their own, outside the pool)."""
    counters = counters_for("default", "sync")
    return counters.checkouts + counters.connect_errors


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
    before = _database_work()
    client.cookies[settings.SESSION_COOKIE_NAME] = "anonymous-cookie-12345678"
    answers = [client.get(url).status_code
               for url in ("/health/ready/", "/health/db/", "/health/live/", "/metrics/")
               for _ in range(15)]
    assert answers == [200] * 45 + [403] * 15
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

