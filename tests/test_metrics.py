"""Prometheus metrics after real traffic: names, values, low-cardinality labels, the
protected view and its URL include."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.db import connections
from django.test import RequestFactory
from django.urls import include, path, reverse
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from django_poolkit import get_engine
from django_poolkit.metrics import COUNTERS, GAUGES, PoolCollector, metrics_view

from .helpers.users import pool_viewer

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-0123456789"
urlpatterns = [path("ops/metrics/", include("django_poolkit.metrics"))]


@pytest.fixture
def side(settings):
    """An engine of its own on the test database: the ORM's checkouts of "default" would
    blur exact counts."""
    settings.POOLKIT = {
        "DATABASES": {"default": {"preset": "small_api"}},
        "ENGINES": {"side": {"url": "postgresql://postgres@127.0.0.1:5432/"
                             + connections.settings["default"]["NAME"], "pool_size": 2}},
        "HEALTH": {"token": TOKEN, "databases": ["default"]},
    }
    return get_engine("side")


def _scrape(**headers: str) -> tuple[int, str]:
    request = RequestFactory().get("/metrics/", headers=headers)
    request.user = AnonymousUser()
    response = metrics_view(request)
    return response.status_code, response.content.decode()


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def test_metrics_after_real_traffic(side):
    # The histograms live for the whole process (other tests feed them too): compare deltas.
    before = _samples(_scrape(**{"X-Poolkit-Health-Token": TOKEN})[1])
    for _ in range(3):
        with side.connect() as connection:
            connection.execute(text("SELECT pg_sleep(0.01)"))
    held = side.connect()  # one checked out while scraped
    try:
        status, body = _scrape(**{"X-Poolkit-Health-Token": TOKEN})
    finally:
        held.close()
    assert status == 200
    samples = _samples(body)
    labels = (("alias", "side"), ("kind", "sync"))

    def grew(name: str, *extra: tuple[str, str]) -> float:
        key = (name, (*labels, *extra))
        return samples[key] - before.get(key, 0.0)

    assert samples[("poolkit_pool_size", labels)] == 2
    assert samples[("poolkit_pool_checked_out", labels)] == 1
    assert samples[("poolkit_pool_capacity", labels)] == 12
    assert samples[("poolkit_checkouts_total", labels)] == 4
    assert samples[("poolkit_checkins_total", labels)] == 3
    assert samples[("poolkit_connections_opened_total", labels)] == 1
    assert samples[("poolkit_timeouts_total", labels)] == 0
    assert grew("poolkit_checkout_wait_seconds_count") == 4
    assert grew("poolkit_connection_hold_seconds_count") == 3
    # Every hold included a 10 ms sleep: none fits the 5 ms bucket, all fit 10 s.
    assert grew("poolkit_connection_hold_seconds_bucket", ("le", "0.005")) == 0
    assert grew("poolkit_connection_hold_seconds_bucket", ("le", "10.0")) == 3
    assert grew("poolkit_connection_hold_seconds_sum") >= 0.03
    assert samples[("poolkit_database_up", (("alias", "default"),))] == 1
    assert samples[("poolkit_database_status", (("alias", "default"),))] == 0
    names = {name for name, _ in samples}
    assert {f"{name}_total" for name in COUNTERS} <= names
    assert set(GAUGES) <= names
    # Low cardinality: no label but alias, kind and the histogram's le.
    assert {key for _, pairs in samples for key, _ in pairs} <= {"alias", "kind", "le"}


def test_the_view_is_protected(side, settings):
    assert _scrape()[0] == 403
    assert _scrape(**{"X-Poolkit-Health-Token": TOKEN + "x"})[0] == 403
    assert _scrape(**{"X-Poolkit-Health-Token": TOKEN})[0] == 200
    assert _scrape(Authorization=f"Bearer {TOKEN}")[0] == 200
    assert _scrape(Authorization="Bearer nope")[0] == 403
    factory = RequestFactory()
    settings.POOLKIT = {**settings.POOLKIT,
                        "HEALTH": {**settings.POOLKIT["HEALTH"], "staff_details": True}}
    request = factory.get("/metrics/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = "session"
    request.user = User(username="root", is_staff=True, is_superuser=True, is_active=True)
    assert metrics_view(request).status_code == 200
    request.user = pool_viewer()
    assert metrics_view(request).status_code == 200
    # is_staff alone is not enough: details need view_dashboard.
    request.user = User.objects.create_user("staff", is_staff=True)
    assert metrics_view(request).status_code == 403
    request.user = User(username="someone", is_staff=False, is_active=True)
    assert metrics_view(request).status_code == 403
    assert metrics_view(factory.post("/metrics/")).status_code == 405
    settings.DEBUG = True
    assert _scrape()[0] == 200


def test_mounted_with_include(side, settings, client):
    settings.ROOT_URLCONF = __name__
    url = reverse("poolkit_metrics:metrics")
    assert url == "/ops/metrics/"
    response = client.get(url, headers={"X-Poolkit-Health-Token": TOKEN})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]
    assert client.get(url).status_code == 403


def test_the_routers_replica_state(settings):
    from django_poolkit.routing.state import replica_state

    settings.POOLKIT = {
        "ROUTING": {"CLUSTERS": {"main": {"primary": "default", "replicas": ["replica"]}}},
        "HEALTH": {"token": TOKEN, "databases": ["default"]},
    }
    replica_state.refresh()
    samples = _samples(_scrape(**{"X-Poolkit-Health-Token": TOKEN})[1])
    assert samples[("poolkit_replica_in_rotation",
                    (("alias", "replica"), ("cluster", "main")))] == 1
    assert samples[("poolkit_router_fallbacks_total", (("cluster", "main"),))] == 0


def test_registering_the_collector_reads_no_state(settings, caplog):
    """A registry describes a collector when it is registered (at import of the URLconf,
    so during manage.py check): a broken configuration must not be read, nor logged."""
    settings.POOLKIT = {"DATABASES": {"default": {"pool_sise": 10}}}
    target = CollectorRegistry(auto_describe=True)
    with caplog.at_level(logging.DEBUG, logger="django_poolkit"):
        target.register(PoolCollector())
    assert caplog.records == []
    assert {"poolkit_pool_size", "poolkit_database_up",
            "poolkit_replica_in_rotation"} <= {family.name for family in
                                                PoolCollector().describe()}


def test_a_broken_configuration_is_one_log_line_at_scrape_time(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_sise": 10}}}
    with caplog.at_level(logging.DEBUG, logger="django_poolkit"):
        assert list(PoolCollector().collect()) == []
    assert [(record.levelname, record.exc_info, record.getMessage())
            for record in caplog.records] == [
        ("ERROR", None, "poolkit metrics: not collecting, the configuration is broken "
                        "(1 problem(s); run manage.py check)")]
