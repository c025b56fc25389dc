"""The staff dashboard without a browser: who may see it, what it shows, what it never waits
on, and what it never shows (a password). Real PostgreSQL and replica throughout."""

from __future__ import annotations

import json
import threading
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connections
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from django_poolkit import conf, get_engine
from django_poolkit.dashboard import data, views
from django_poolkit.dashboard.workers import worker_totals
from django_poolkit.testing import wait_for_replicas

from .helpers.backend import extra_alias
from .helpers.tcpproxy import proxy_to
from .helpers.users import pool_viewer

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SENTINEL = "Sentinel-Pa55word-9f2c"


@pytest.fixture(autouse=True)
def _fresh_dashboard():
    data.reset()
    yield
    data.reset()


@pytest.fixture
def staff_client(client):
    client.force_login(pool_viewer())
    return client


def _staff_request(path: str = "/poolkit/"):
    """A request of a superuser (who has every permission without a query)."""
    request = RequestFactory().get(path)
    request.user = get_user_model()(username="ops", is_staff=True, is_superuser=True,
                                    is_active=True)
    return request


def test_the_page_needs_no_static_files(staff_client):
    """Under gunicorn nobody serves STATIC_URL: the stylesheet and the script are inline,
    and every SVG has an intrinsic size for when even they are blocked (a strict CSP)."""
    import re

    from django.template.loader import get_template

    html = staff_client.get(reverse("poolkit_dashboard:index")).content.decode()
    assert "/static/django_poolkit/" not in html
    for name in ("style.html", "script.html"):
        source = get_template(f"django_poolkit/dashboard/{name}").template.source
        inner = source.split(">", 1)[1].rsplit("</", 1)[0]
        assert inner.strip()
        assert inner in html  # included unchanged: nothing in it is template syntax
    # The script runs where it stands: after the element it looks for.
    assert html.index('id="poolkit-dashboard"') < html.index('getElementById("poolkit-dashboard")')
    page = html[html.index('id="poolkit-dashboard"'):html.index('id="footer"')]
    svgs = re.findall(r"<svg[^>]*>", page)
    assert svgs
    assert [svg for svg in svgs if not re.search(r' width="[\d.]+" height="[\d.]+"', svg)] == []


def test_the_breadcrumbs_are_the_markup_django_5_and_6_style(staff_client):
    html = staff_client.get(reverse("poolkit_dashboard:index")).content.decode()
    assert ('<ol class="breadcrumbs pk-breadcrumbs"><li><a href="/admin/">Home</a></li>'
            '<li aria-current="page">Connection pools</li></ol>') in html
    assert "ol.pk-breadcrumbs {" in html
    assert ("#content nav.pk-toc a:link, #content nav.pk-toc a:visited "
            "{ text-decoration: none; }") in html


def test_anonymous_and_non_staff_are_sent_to_the_admin_login(client):
    page = client.get(reverse("poolkit_dashboard:index"))
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login") + "?next=/poolkit/")
    assert client.get(reverse("poolkit_dashboard:data")).status_code == 403

    user = get_user_model().objects.create_user("plain", password="x")
    client.force_login(user)
    assert client.get(reverse("poolkit_dashboard:index")).status_code == 302
    assert client.get(reverse("poolkit_dashboard:data")).json() == {
        "error": "staff only", "permission": "django_poolkit.view_dashboard"}


def test_staff_without_view_dashboard_are_refused(client):
    """is_staff alone opens nothing: the page holds host names, pids, every application_name
    on the server, database users and hosts."""
    staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    page = client.get(reverse("poolkit_dashboard:index"))
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login") + "?next=/poolkit/")
    answer = client.get(reverse("poolkit_dashboard:data"))
    assert answer.status_code == 403
    assert "pk-pools" not in answer.content.decode()


@pytest.mark.parametrize("who", ["permission", "group", "superuser"])
def test_view_dashboard_or_superuser_opens_the_page(client, who):
    if who == "superuser":
        user = get_user_model().objects.create_superuser("root", password="x")
    else:
        user = pool_viewer(through_group=who == "group")
    client.force_login(user)
    assert client.get(reverse("poolkit_dashboard:index")).status_code == 200
    assert client.get(reverse("poolkit_dashboard:data")).status_code == 200
    user.is_active = False
    user.save()
    client.force_login(user)
    assert client.get(reverse("poolkit_dashboard:data")).status_code == 403


def test_the_permission_needs_no_migration_of_the_project():
    """The app ships its one migration (a model without a table): nothing to make, no SQL."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
    out = StringIO()
    call_command("sqlmigrate", "django_poolkit", "0001", stdout=out)
    assert "(no-op)" in out.getvalue()
    assert "CREATE TABLE" not in out.getvalue()


_XFRAME = "django.middleware.clickjacking.XFrameOptionsMiddleware"


@pytest.mark.parametrize("middleware", ["without", "sameorigin"])
def test_every_answer_refuses_to_be_framed(staff_client, middleware):
    """X-Frame-Options: DENY and CSP frame-ancestors 'none' on the page, the JSON, a denial
    and a 405, without XFrameOptionsMiddleware or with it set to SAMEORIGIN."""
    others = [name for name in settings.MIDDLEWARE if name != _XFRAME]
    changes = ({"MIDDLEWARE": others} if middleware == "without"
               else {"MIDDLEWARE": [*others, _XFRAME], "X_FRAME_OPTIONS": "SAMEORIGIN"})
    with override_settings(**changes):
        answers = [staff_client.get(reverse("poolkit_dashboard:index")),
                   staff_client.get(reverse("poolkit_dashboard:data")),
                   staff_client.post(reverse("poolkit_dashboard:data")),
                   Client().get(reverse("poolkit_dashboard:index")),
                   Client().get(reverse("poolkit_dashboard:data"))]
    assert [answer.status_code for answer in answers] == [200, 200, 405, 302, 403]
    for answer in answers:
        assert answer["X-Frame-Options"] == "DENY"
        assert answer["Content-Security-Policy"] == "frame-ancestors 'none'"


@override_settings(ROOT_URLCONF="tests.urls_no_admin")
def test_without_the_admin_mounted_others_get_403():
    request = RequestFactory().get("/poolkit/")
    request.user = AnonymousUser()
    assert views.index(request).status_code == 403


def test_staff_sees_every_section_and_the_json_is_never_cached(staff_client):
    page = staff_client.get(reverse("poolkit_dashboard:index"))
    assert page.status_code == 200
    html = page.content.decode()
    for section in ("pk-health", "pk-pools", "pk-replicas", "pk-server", "pk-plan",
                    "pk-workers"):
        assert f'id="{section}"' in html
    assert "no-store" in page["Cache-Control"]
    assert 'id="pk-alias-default"' in html
    assert 'id="pk-alias-replica"' in html
    assert 'id="pk-refresh-status"' in html
    assert "<th" in html

    answer = staff_client.get(reverse("poolkit_dashboard:data"))
    assert answer.status_code == 200
    assert "no-store" in answer["Cache-Control"]
    body = answer.json()
    assert 'id="pk-pools"' in body["html"]
    document = body["data"]
    assert [entry["alias"] for entry in document["databases"]] == ["default", "replica"]
    default = document["databases"][0]
    assert {row["name"] for row in default["settings"]} >= {"pool_size", "pool_timeout"}
    pool_size = next(row for row in default["settings"] if row["name"] == "pool_size")
    assert pool_size["origin"].startswith("preset")  # testproject: {"preset": "small_api"}
    assert pool_size["main"] is True
    assert staff_client.post(reverse("poolkit_dashboard:data")).status_code == 405


def test_admin_index_links_to_the_dashboard(staff_client):
    user = get_user_model().objects.get(username="ops")
    user.is_superuser = True
    user.save()
    index = staff_client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert f'href="{reverse("poolkit_dashboard:index")}"' in index.content.decode()


def test_server_view_and_plan_come_from_the_bounded_operations_connection():
    wait_for_replicas(["replica"])  # the test database reaches the replica by replication
    document = data.collect(wait=30)
    default = document["databases"][0]
    assert default["server_status"]["state"] == "fresh"
    snapshot = default["server_status"]["snapshot"]
    assert snapshot["role"] == "primary"
    assert snapshot["max_connections"] > 0
    reading = document["databases"][1]["server_status"]
    assert reading["state"] == "fresh", reading
    assert reading["snapshot"]["role"] == "replica"
    assert document["plan"]["servers"]
    assert document["plan"]["fits"] is not None
    assert document["health"]["status"] in ("healthy", "degraded", "unhealthy")


def test_gauges_histograms_and_series_follow_the_pool():
    data.install()
    engine = get_engine("default")
    held = [engine.connect() for _ in range(3)]
    try:
        document = data.collect(wait=0)
        pool = document["databases"][0]["pools"][0]
        assert pool["gauges"]["pool_checked_out"] == 3
        assert sum(row["count"] for row in pool["wait_histogram"]) == 3
        assert data.series_for(document, "default")[-1]["checked_out"] == 3
    finally:
        for connection in held:
            connection.close()
    data._state.series[-1]["t"] = 0.0  # let the next read take a new sample at once
    document = data.collect(wait=0)
    pool = document["databases"][0]["pools"][0]
    assert pool["gauges"]["pool_checked_out"] == 0
    assert sum(row["count"] for row in pool["hold_histogram"]) == 3
    assert [point["checked_out"] for point in data.series_for(document, "default")][-1] == 0


def test_the_series_is_bounded():
    state = data._state
    for number in range(data.SERIES_POINTS + 50):
        data._sample(state, float(number))
    assert len(state.series) == data.SERIES_POINTS


def test_a_saturated_pool_does_not_hold_up_the_page():
    engine = get_engine("default")
    capacity = engine.pool.size() + engine.pool._max_overflow
    held = [engine.connect() for _ in range(capacity)]
    try:
        response = views.index(_staff_request())
        assert response.status_code == 200
        assert "saturated" in response.content.decode()
    finally:
        for connection in held:
            connection.close()


def test_a_hanging_server_is_reported_unavailable_not_waited_for():
    entry = connections.settings["default"]
    with proxy_to(entry["HOST"] or "127.0.0.1", int(entry["PORT"] or 5432),
                  mode="hang") as proxy, extra_alias("stuck", HOST="127.0.0.1",
                                                     PORT=str(proxy.port)):
        document = data.collect(wait=0.2)
        stuck = next(item for item in document["databases"] if item["alias"] == "stuck")
        assert stuck["server_status"]["state"] == "unavailable"
        html = views.index(_staff_request()).content.decode()
        assert "unavailable" in html
        # The read in flight ends by its own deadline, with a fixed phrase.
        reading = data._state.servers["stuck"].read()
        for _ in range(300):
            reading = data._state.servers["stuck"].read()
            if reading.error:
                break
            threading.Event().wait(0.1)
        assert reading.error in ("no answer in time", "connect timeout")


def test_no_password_appears_on_the_page_or_in_the_json(settings):
    for alias in ("default", "replica"):
        connections.settings[alias]["PASSWORD"] = SENTINEL
    try:
        conf.reload()
        with get_engine("default").connect():
            pass
        html = views.index(_staff_request()).content.decode()
        answer = views.data_view(_staff_request("/poolkit/data.json")).content.decode()
        assert SENTINEL not in html
        assert SENTINEL not in answer
        assert "postgres://" not in html
        assert "postgresql://" not in answer
        assert json.loads(answer)["data"]["databases"][0]["target"]["user"] == "postgres"
    finally:
        for alias in ("default", "replica"):
            connections.settings[alias]["PASSWORD"] = ""
        conf.reload()


WORKER = """
import sys
import django
django.setup()
from django_poolkit import get_engine, metrics
metrics.install()
engine = get_engine("default")
held = [engine.connect() for _ in range(int(sys.argv[1]))]
print("ready", flush=True)
sys.stdin.read()
for connection in held:
    connection.close()
"""


def test_every_workers_pools_summed_from_the_multiprocess_directory(tmp_path, monkeypatch):
    """Two real worker processes in Prometheus' multiprocess mode hold 2 and 3 connections;
    the page, served by a third process, shows 5 checked out over 2 live workers."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                   "DJANGO_SETTINGS_MODULE": "testproject.settings_test"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(count)], env=environment,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for count in (2, 3)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        totals = worker_totals(tmp_path)
        assert totals["live_workers"] == 2
        default = next(pool for pool in totals["pools"]
                       if pool["alias"] == "default" and pool["kind"] == "sync")
        assert default["pool_checked_out"] == 5
        assert default["checkouts"] == 5
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        html = views.index(_staff_request()).content.decode()
        assert "2 live worker(s)" in html
    finally:
        for worker in workers:
            worker.communicate("", timeout=60)


@pytest.mark.parametrize("last", [False, True], ids=["poolkit-first", "poolkit-last"])
def test_the_admin_link_does_not_depend_on_the_order_of_installed_apps(settings,
                                                                        staff_client, last):
    """The tutorial's INSTALLED_APPS += ["django_poolkit"] puts poolkit after the admin."""
    user = get_user_model().objects.get(username="ops")
    user.is_superuser = True
    user.save()
    if last:
        settings.INSTALLED_APPS = [
            *(name for name in settings.INSTALLED_APPS if name != "django_poolkit"),
            "django_poolkit"]
    index = staff_client.get(reverse("admin:index")).content.decode()
    assert index.count(f'href="{reverse("poolkit_dashboard:index")}"') == 1
    assert "poolkit." not in " ".join(message.id or "" for message in run_checks())


@pytest.mark.parametrize(("count", "caption", "first_x"), [
    (1, "Last 0 s (one point every 2 s, 1 point)", "300.0"),
    (16, "Last 30 s (one point every 2 s, 16 points)", "0.0"),
    (180, "Last 6.0 min (one point every 2 s, 180 points)", "0.0"),
])
def test_the_time_series_axis_spans_the_data_it_has(count, caption, first_x):
    """30 s of data was drawn on the right of a wider window, under "1 points"."""
    document = data.collect(wait=0)
    sample = {"checked_out": 1, "waiting": 0, "wait_ms": 0.0}
    document["series"]["points"] = [{"t": "2026-01-01T00:00:00+00:00",
                                     "aliases": {"default": sample}}] * count
    html = views._body(document, _staff_request())
    section = html[html.index('id="pk-alias-default"'):]
    assert caption in " ".join(section.split())
    line = section[section.index('class="pk-line-out" points="'):].split('"')[3]
    assert line.split()[0].split(",")[0] == first_x
    assert len(line.split()) == count
