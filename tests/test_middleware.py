"""PoolkitMiddleware: read-your-writes across requests (signed cookie and header, LSN and
time modes) in sync and async stacks, and HTTP 503 for an exhausted pool."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path, re_path

from django_poolkit import PoolTimeout
from django_poolkit.exceptions import NoHealthyReplica
from django_poolkit.testing import wait_for_replicas
from testproject.demo.models import Note

from .helpers.routing import DBS, replica_paused, replica_script

MIDDLEWARE = "django_poolkit.middleware.PoolkitMiddleware"


def write(request: HttpRequest) -> JsonResponse:
    note = Note.objects.create(title=request.GET.get("title", "note"))
    after = Note.objects.all()
    return JsonResponse({"wrote_to": note._state.db, "reads_from": after.db})


def read(request: HttpRequest) -> JsonResponse:
    notes = Note.objects.all()
    return JsonResponse({"db": notes.db, "titles": [note.title for note in notes]})


async def awrite(request: HttpRequest) -> JsonResponse:
    note = await Note.objects.acreate(title="async note")
    return JsonResponse({"wrote_to": note._state.db, "reads_from": Note.objects.all().db})


async def aread(request: HttpRequest) -> JsonResponse:
    notes = Note.objects.all()
    return JsonResponse({"db": notes.db, "titles": [note.title async for note in notes]})


def exhausted(request: HttpRequest) -> HttpResponse:
    raise PoolTimeout("default", 5, 10, 30.0, 15)


async def aexhausted(request: HttpRequest) -> HttpResponse:
    raise PoolTimeout("default", 5, 10, 30.0, 15)


def no_replica(request: HttpRequest) -> HttpResponse:
    raise NoHealthyReplica("main", {"replica": "lag 9.0 s > 5 s"})


def broken(request: HttpRequest) -> HttpResponse:
    raise ValueError("a plain bug")


class InnerTimeoutMiddleware:
    """A middleware below PoolkitMiddleware that runs out of connections (like a session
    middleware loading its session): Django makes a 500 of it before PoolkitMiddleware
    sees a response."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.path == "/inner/":
            raise PoolTimeout("default", 5, 10, 30.0, 15)
        return self.get_response(request)


urlpatterns = [
    path("write/", write), path("read/", read), path("awrite/", awrite), path("aread/", aread),
    path("exhausted/", exhausted), path("aexhausted/", aexhausted),
    path("no-replica/", no_replica), path("broken/", broken), path("inner/", read),
    re_path(r"^exhausted-any/(?s:.*)$", exhausted),  # any path, newlines included
]


@pytest.fixture
def site(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [MIDDLEWARE]


def test_pool_timeout_in_a_view_is_a_503_with_retry_after(site, caplog):
    with caplog.at_level(logging.WARNING, logger="django_poolkit.middleware"):
        response = Client().get("/exhausted/?token=secret")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "no-cache" in response["Cache-Control"]
    body = response.content.decode()
    assert body == ("Service temporarily unavailable: the database is busy. Please retry "
                    "shortly.\n")
    assert "default" not in body
    assert [r.getMessage() for r in caplog.records if r.name == "django_poolkit.middleware"] == [
        "GET /exhausted/ answered 503: pool 'default' exhausted: no connection free within 30 s "
        "(pool_size=5, max_overflow=10, checked out=15); raise pool_size/max_overflow for this "
        "alias, release connections sooner, or shed load"]


def test_no_healthy_replica_is_a_503(site):
    assert Client().get("/no-replica/").status_code == 503


def test_other_errors_stay_500(site):
    assert Client(raise_request_exception=False).get("/broken/").status_code == 500


def test_pool_timeout_below_the_middleware_is_a_503(settings, site):
    settings.MIDDLEWARE = [MIDDLEWARE, f"{__name__}.InnerTimeoutMiddleware"]
    response = Client(raise_request_exception=False).get("/inner/")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"


def test_a_subclass_sets_retry_after():
    from django_poolkit.middleware import PoolkitMiddleware

    class Patient(PoolkitMiddleware):
        retry_after = 7

    response = Patient(lambda request: HttpResponse()).process_exception(
        HttpRequest(), PoolTimeout("default", 1, 0, 1.0, 1))
    assert response is not None
    assert response["Retry-After"] == "7"


async def test_pool_timeout_in_an_async_view_is_a_503(site):
    response = await AsyncClient().get("/aexhausted/")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_read_your_writes_across_requests_with_the_signed_cookie(site, route):
    route(max_lag=3600, pin_seconds=300)
    with replica_paused():
        writer = Client()
        response = writer.post("/write/?title=mine")
        # The same request reads its own write from the primary:
        assert response.json() == {"wrote_to": "default", "reads_from": "default"}
        cookie = response.cookies["poolkit_pin"]
        assert cookie["httponly"]
        assert cookie["max-age"] == 300
        assert cookie["samesite"] == "Lax"
        assert response["X-Poolkit-Pin"] == cookie.value

        # The writer's next request: the replica has not replayed the write, so the primary.
        assert writer.get("/read/").json() == {"db": "default", "titles": ["mine"]}
        # Anyone else reads the (paused, stale) replica.
        assert Client().get("/read/").json() == {"db": "replica", "titles": []}
        # An API client echoing the header is pinned too.
        api = Client(headers={"X-Poolkit-Pin": cookie.value})
        assert api.get("/read/").json()["db"] == "default"
        # A forged or tampered token forces nothing.
        forged = Client()
        forged.cookies["poolkit_pin"] = cookie.value[:-3] + "abc"
        assert forged.get("/read/").json()["db"] == "replica"
        assert Client(headers={"X-Poolkit-Pin": "main"}).get("/read/").json()["db"] == "replica"

        # A request that only read sends no new cookie.
        assert "poolkit_pin" not in writer.get("/read/").cookies


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_the_lsn_pin_ends_as_soon_as_the_replica_has_replayed_the_write(site, route):
    route(max_lag=3600, pin_seconds=300)
    writer = Client()
    replica_script("pause")
    try:
        writer.post("/write/?title=mine")
        assert writer.get("/read/").json()["db"] == "default"
    finally:
        replica_script("resume")
    wait_for_replicas(["replica"])
    # Long before pin_seconds: the replica has the write, so the writer reads from it.
    assert writer.get("/read/").json() == {"db": "replica", "titles": ["mine"]}


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_time_mode_pins_for_the_whole_window(site, route):
    route(pin_mode="time", pin_seconds=300)
    writer = Client()
    writer.post("/write/")
    wait_for_replicas(["replica"])
    assert writer.get("/read/").json()["db"] == "default"
    assert Client().get("/read/").json()["db"] == "replica"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_off_mode_pins_within_the_request_only(site, route):
    route(pin_mode="off")
    writer = Client()
    response = writer.post("/write/")
    assert response.json()["reads_from"] == "default"
    assert "poolkit_pin" not in response.cookies
    assert writer.get("/read/").json()["db"] == "replica"


@pytest.mark.django_db(databases=DBS, transaction=True)
async def test_read_your_writes_in_an_async_stack(site, route):
    from asgiref.sync import sync_to_async

    await sync_to_async(route)(max_lag=3600, pin_seconds=300)
    with replica_paused():
        writer = AsyncClient()
        response = await writer.post("/awrite/")
        assert response.json() == {"wrote_to": "default", "reads_from": "default"}
        token = response.cookies["poolkit_pin"].value
        writer.cookies["poolkit_pin"] = token
        assert (await writer.get("/aread/")).json() == {"db": "default", "titles": ["async note"]}
        assert (await AsyncClient().get("/aread/")).json() == {"db": "replica", "titles": []}
        # The test client keeps connections open after a request (it disconnects
        # close_old_connections); the async views used asgiref's sync thread, so close there.
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_the_pin_cookie_follows_session_cookie_secure(site, route, settings):
    route(max_lag=3600)
    settings.SESSION_COOKIE_SECURE = True
    assert Client().post("/write/").cookies["poolkit_pin"]["secure"]
    settings.SESSION_COOKIE_SECURE = False
    assert not Client().post("/write/").cookies["poolkit_pin"]["secure"]
    # Its own setting still wins.
    route(max_lag=3600, cookie_secure=True)
    assert Client().post("/write/").cookies["poolkit_pin"]["secure"]


def test_the_503_log_line_escapes_the_path(site, caplog):
    with caplog.at_level(logging.WARNING, logger="django_poolkit.middleware"):
        forged = Client().get("/exhausted-any/x%0a2026-12-07 INFO forged%1b[31m%E2%80%A8")
        assert forged.status_code == 503
    messages = [r.getMessage() for r in caplog.records if r.name == "django_poolkit.middleware"]
    assert len(messages) == 1
    assert messages[0].startswith("GET /exhausted-any/x\\n2026-12-07 INFO forged\\x1b[31m")
    assert messages[0].isascii()
    assert messages[0].isprintable()
