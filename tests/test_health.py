"""The health endpoints against the real PostgreSQL: statuses, pool saturation, refused
connections, secrets, caching and single-flight, and the views under ASGI.

Fault tests that stop or pause a server are in ``test_health_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import AsyncClient, Client, override_settings

from django_poolkit import conf, get_engine, health
from django_poolkit.engines import engine_registry
from django_poolkit.exceptions import Problem

from .helpers.health import HEALTHY_TIMEOUT, TOKEN, TOKEN_HEADER, poolkit, timed, with_token
from .helpers.tcpproxy import free_port, proxy_to
from .helpers.threads import fan_out
from .helpers.users import pool_viewer

#: A bound on a hang, generous so that a loaded 2-core machine cannot fail it: the tests
#: prove what answered (the probe's deadline, a status, a counter), not how fast.
HANG_S = 10.0

pytestmark = pytest.mark.postgres


def wait_for_replica(seconds: float = 15.0) -> str:
    """Add nothing; wait until the streaming replica on 5433 (scripts/replica) has replayed
    the creation of this session's test database, and return its port."""
    name = settings.DATABASES["default"]["NAME"]
    deadline = time.monotonic() + seconds
    while True:
        try:
            psycopg.connect(host="127.0.0.1", port=5433, user="postgres", dbname=name,
                            connect_timeout=2).close()
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, f"the replica on 5433 never had {name}"
            time.sleep(0.1)
        else:
            return "5433"


# -- settings -------------------------------------------------------------------------------


def problems_for(section: Any) -> list[Problem]:
    return conf.build_settings({"HEALTH": section}, settings.DATABASES, {})[1]


def test_health_settings_defaults() -> None:
    built, problems = conf.build_settings({}, settings.DATABASES, {})
    assert problems == []
    assert built is not None
    assert built.sections["HEALTH"] == health.HealthSettings()
    assert health.HealthSettings().timeout == 0.5


def test_health_settings_are_validated_with_paths_and_ids() -> None:
    assert problems_for(["timeout"]) == [Problem(
        'POOLKIT["HEALTH"]', "must be a dict, got list",
        'Write {"timeout": 0.5, "cache_ttl": 2}.', "poolkit.E030")]
    assert problems_for({"timout": 1}) == [Problem(
        'POOLKIT["HEALTH"]["timout"]', 'unknown key; did you mean "timeout"?',
        "Accepted keys: " + ", ".join(f'"{key}"' for key in health.SETTING_RULES) + ".",
        "poolkit.E031")]
    assert problems_for({"timeout": 0}) == [Problem(
        'POOLKIT["HEALTH"]["timeout"]', "must be a number of seconds >= 0.001 and <= 30, got 0",
        "Keep it below your probe's timeout (Kubernetes: 1 s), e.g. 0.5.", "poolkit.E032")]
    assert problems_for({"saturation": 1.5})[0].check_id == "poolkit.E032"
    assert problems_for({"saturated_status": "broken"})[0].check_id == "poolkit.E032"
    assert problems_for({"databases": ["defualt"]}) == [Problem(
        'POOLKIT["HEALTH"]["databases"]',
        'names the unknown database alias "defualt"; did you mean "default"?',
        "settings.DATABASES has: " + ", ".join(f'"{alias}"' for alias in settings.DATABASES)
        + ".", "poolkit.E033")]
    assert [p.check_id for p in problems_for({"replicas": ["default"]})] == ["poolkit.E034"]
    assert [p.check_id for p in problems_for({"replicas": [], "min_replicas": 1})] == [
        "poolkit.E034"]


def test_a_short_token_is_rejected_without_echoing_it() -> None:
    [problem] = problems_for({"token": "s3cret"})
    assert problem.check_id == "poolkit.E032"
    assert "s3cret" not in str(problem)
    assert "secrets.token_urlsafe" in problem.hint


def test_health_settings_never_show_the_token() -> None:
    assert TOKEN not in repr(health.HealthSettings(token=TOKEN))


# -- live, ready, db ------------------------------------------------------------------------


@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_live_touches_no_database(monkeypatch: pytest.MonkeyPatch, client: Client) -> None:
    # Even with every database unreachable, live answers at once and starts no probe.
    monkeypatch.setitem(connections.settings["default"], "PORT", str(free_port()))
    before = health.checker.probes_started
    response, took = timed(lambda: client.get("/health/live/"))
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}
    assert health.checker.probes_started == before
    assert took < HANG_S


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_ready_and_db_are_healthy_and_say_only_the_status_to_anonymous(
        client: Client) -> None:
    for path in ("/health/ready/", "/health/db/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "healthy"}
        assert response["Content-Type"] == "application/json"
        assert "no-cache" in response["Cache-Control"]
        assert "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_db_details_with_the_token(client: Client) -> None:
    get_engine().connect().close()  # build the pool, so its gauges are live
    body = with_token(client, "/health/db/").json()
    assert body["status"] == "healthy"
    assert body["reasons"] == []
    default = body["databases"]["default"]
    assert default["status"] == "healthy"
    assert default["role"] == "primary"
    assert default["expected_role"] == "primary"
    assert 0 < default["latency_ms"] < HANG_S * 1000
    assert default["lag_s"] is None
    assert default["error"] is None
    assert default["pool"]["built"] is True
    assert default["pool"]["pool_size"] == 10
    assert default["pool"]["pool_checked_out"] >= 0
    assert default["pool"]["saturated"] is False
    assert default["name"] == settings.DATABASES["default"]["NAME"]
    ready = with_token(client, "/health/ready/").json()
    assert set(ready) == {"status", "reasons", "checked_at", "age_s", "duration_ms"}


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_a_wrong_token_gets_the_status_only(client: Client) -> None:
    response = client.get("/health/db/", headers={TOKEN_HEADER: TOKEN[:-1] + "x"})
    assert response.json() == {"status": "healthy"}


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(), DEBUG=True)
def test_debug_shows_details(client: Client) -> None:
    assert "databases" in client.get("/health/db/").json()


@pytest.mark.django_db
@override_settings(
    POOLKIT=poolkit(staff_details=True),
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    MIDDLEWARE=[*settings.MIDDLEWARE, "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware"],
)
def test_staff_see_details_other_users_do_not(client: Client,
                                              django_user_model: Any) -> None:
    """Details need staff with ``view_dashboard`` (or a superuser): ``is_staff`` alone shows
    host names and errors to every staff user."""
    user = django_user_model.objects.create_user("plain", password="x")
    client.force_login(user)
    assert client.get("/health/db/").json() == {"status": "healthy"}
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get("/health/db/").json() == {"status": "healthy"}
    client.force_login(pool_viewer())
    assert "databases" in client.get("/health/db/").json()
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert "databases" in client.get("/health/db/").json()


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_only_get_and_head(client: Client) -> None:
    assert client.head("/health/ready/").status_code == 200
    for method in (client.post, client.put, client.delete):
        response = method("/health/ready/")
        assert response.status_code == 405
        assert response["Allow"] == "GET, HEAD"
        assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True)
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_the_views_stay_out_of_atomic_requests(monkeypatch: pytest.MonkeyPatch,
                                               client: Client) -> None:
    # Django refuses async views under ATOMIC_REQUESTS unless they are marked non-atomic for
    # every alias.
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    assert client.get("/health/ready/").status_code == 200


# -- failure statuses -----------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_primary_down_is_unhealthy_503_within_the_timeout(
        client: Client, add_alias: Callable[..., str]) -> None:
    # Nothing listens on the port: every connect is refused.
    add_alias("gone", PORT=str(free_port()))
    with override_settings(POOLKIT=poolkit(primary="gone")):
        response, took = timed(lambda: with_token(client, "/health/db/"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["databases"]["gone"]["error"] == "connection refused"
    assert body["databases"]["default"]["status"] == "healthy"
    assert took < HANG_S


@pytest.mark.django_db
@override_settings(POOLKIT=poolkit(timeout=HEALTHY_TIMEOUT))
def test_a_secondary_database_down_is_degraded_200(
        client: Client, add_alias: Callable[..., str]) -> None:
    add_alias("analytics", PORT=str(free_port()))
    conf.reload()
    response = with_token(client, "/health/db/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["databases"]["analytics"]["status"] == "unhealthy"
    assert body["databases"]["analytics"]["expected_role"] == "other"
    assert body["reasons"] == ["analytics: unreachable (connection refused)"]


@pytest.mark.django_db
def test_a_blackholed_server_answers_within_the_timeout(
        client: Client, add_alias: Callable[..., str]) -> None:
    # The proxy completes the TCP handshake and never answers: libpq alone would wait
    # connect_timeout (at least 2 s); the probe's own deadline answers first.
    with proxy_to("127.0.0.1", 5432, mode="hang") as proxy:
        add_alias("black", HOST="127.0.0.1", PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(primary="black", databases=["black"])):
            response, took = timed(lambda: with_token(client, "/health/ready/"))
            assert response.status_code == 503
            # The reason names the probe's own deadline: it, not libpq's, ended the wait.
            assert response.json()["reasons"] == ["black: unreachable (no answer within 0.3 s)"]
            assert took < HANG_S
            # The next round waits on the probe still stuck instead of opening another one.
            started = health.checker.probes_started
            accepted = proxy.accepted
            assert with_token(client, "/health/ready/").status_code == 503
            assert health.checker.probes_started == started
            assert proxy.accepted == accepted


@pytest.mark.django_db(transaction=True)
def test_a_saturated_pool_is_reported_fast_and_no_slot_is_taken(
        client: Client, add_alias: Callable[..., str]) -> None:
    add_alias("small")
    pool_settings = {**settings.POOLKIT, "DATABASES": {"small": {
        "pool_size": 1, "max_overflow": 0, "pool_timeout": 30}}}
    section = poolkit(primary="small", databases=["small"])["HEALTH"]
    with override_settings(POOLKIT={**pool_settings, "HEALTH": section}):
        engine = get_engine("small")
        with engine.connect() as held:
            response, took = timed(lambda: with_token(client, "/health/db/"))
            assert response.status_code == 503
            body = response.json()
            pool = body["databases"]["small"]["pool"]
            assert pool["saturated"] is True
            assert pool["pool_checked_out"] == 1
            assert pool["pool_capacity"] == 1
            assert body["reasons"] == [
                "small: pool saturated (1 of 1 connections checked out)"]
            # Far below pool_timeout (30 s): the probe never queued for the pool's only slot.
            assert took < HANG_S
            assert held.exec_driver_sql("SELECT 1").scalar() == 1
        assert engine.pool.checkedout() == 0
    degraded = {**pool_settings, "HEALTH": {**section, "saturated_status": "degraded"}}
    with override_settings(POOLKIT=degraded), get_engine("small").connect():
        response = client.get("/health/ready/")
        assert (response.status_code, response.json()) == (200, {"status": "degraded"})


@pytest.fixture
def limited_role(admin: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    """A login role allowed one connection, with a sentinel password; dropped afterwards."""
    name = f"poolkit_health_limited_{secrets.token_hex(4)}"
    password = f"s3ntinel-PW-{secrets.token_hex(6)}"
    admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 1 PASSWORD '{password}'")
    try:
        yield name, password
    finally:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (name,))
        admin.execute(f"DROP ROLE {name}")


@pytest.mark.django_db(transaction=True)
def test_refused_new_connections_are_detected_while_open_ones_still_answer(
        client: Client, add_alias: Callable[..., str], limited_role: tuple[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    role, password = limited_role
    add_alias("limited", USER=role, PASSWORD=password)
    with override_settings(POOLKIT=poolkit(primary="limited")), \
            caplog.at_level(logging.DEBUG, logger="django_poolkit"):
        assert client.get("/health/ready/").status_code == 200
        # The pool holds the role's only connection: SELECT 1 on it stays green...
        with get_engine("limited").connect() as open_connection:
            assert open_connection.exec_driver_sql("SELECT 1").scalar() == 1
            response = with_token(client, "/health/db/")
            assert open_connection.exec_driver_sql("SELECT 1").scalar() == 1
        # ...while the probe's fresh connection is refused with SQLSTATE 53300.
        assert response.status_code == 503
        body = response.json()
        assert body["databases"]["limited"]["error"] == "too many connections"
        assert body["databases"]["limited"]["pool"]["pool_checked_out"] == 1
        # Checked in, the connection stays open in the pool and still counts against the
        # limit; once the pool lets it go, new connections are accepted again.
        assert client.get("/health/ready/").status_code == 503
        engine_registry.dispose("limited")
        assert client.get("/health/ready/").status_code == 200
        text = response.content.decode() + caplog.text
    assert password not in text
    assert role not in response.content.decode()
    assert "database 'limited' is unhealthy (was healthy)" in caplog.text


@pytest.mark.django_db
def test_no_password_dsn_or_driver_text_in_any_answer(
        client: Client, add_alias: Callable[..., str], admin: psycopg.Connection[Any],
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    password = f"s3ntinel-PW-{secrets.token_hex(6)}"
    add_alias("refused", USER="sentinel_user", PASSWORD=password, PORT=str(free_port()))
    add_alias("nouser", USER="sentinel_user", PASSWORD=password)  # no such role
    with proxy_to("127.0.0.1", 5432, mode="reset") as proxy:
        add_alias("reset", USER="sentinel_user", PASSWORD=password, PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(primary="refused"), DEBUG=True), \
                caplog.at_level(logging.DEBUG):
            bodies = [with_token(client, path).content.decode()
                      for path in ("/health/db/", "/health/ready/", "/health/live/")]
            from django.core.management import CommandError, call_command
            with pytest.raises(CommandError):
                call_command("poolcheck", "--format", "json")
            with pytest.raises(CommandError):
                call_command("poolcheck")
    databases = json.loads(bodies[0])["databases"]
    assert databases["refused"]["error"] == "connection refused"
    assert databases["nouser"]["error"] == "database or role does not exist"
    assert databases["reset"]["error"] in ("server closed the connection", "OperationalError")
    everything = "\n".join([*bodies, caplog.text, *capsys.readouterr()])
    for secret in (password, "sentinel_user", "password=", "postgresql://", "postgres://"):
        assert secret not in everything


# -- cache and single-flight ----------------------------------------------------------------


@pytest.mark.django_db
def test_cached_for_the_ttl(client: Client) -> None:
    with override_settings(POOLKIT=poolkit(cache_ttl=60, databases=["default"])):
        started = health.checker.probes_started
        first = with_token(client, "/health/db/").json()
        for _ in range(20):
            again = with_token(client, "/health/db/").json()
        assert health.checker.probes_started == started + 1
        assert again["checked_at"] == first["checked_at"]
    with override_settings(POOLKIT=poolkit(cache_ttl=0, databases=["default"])):
        with_token(client, "/health/db/")
        with_token(client, "/health/db/")
        assert health.checker.probes_started == started + 3


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_requests_becomes_a_trickle_of_probes() -> None:
    """50 threads hammer /health/ready/ for 2 s; each process probes at most once per TTL."""
    ttl, seconds, threads = 0.5, 2.0, 50
    counts = [0] * threads
    statuses: set[int] = set()

    def hammer(index: int) -> None:
        own = Client()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            statuses.add(own.get("/health/ready/").status_code)
            counts[index] += 1

    with override_settings(POOLKIT=poolkit(cache_ttl=ttl, databases=["default"],
                                           timeout=HEALTHY_TIMEOUT)):
        started = health.checker.probes_started
        began = time.monotonic()
        fan_out(hammer, threads)
        elapsed = time.monotonic() - began
        probes = health.checker.probes_started - started
    assert statuses == {200}
    assert sum(counts) > 4 * probes
    assert 1 <= probes <= elapsed / ttl + 2


def test_concurrent_callers_share_one_round(add_alias: Callable[..., str]) -> None:
    """20 callers arrive while a round waits out a blackholed server: one probe serves all."""
    with proxy_to("127.0.0.1", 5432, mode="hang") as proxy:
        add_alias("black", PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(cache_ttl=0, databases=["black"])):
            started = health.checker.probes_started
            # All 20 start together (fan_out's start barrier).
            reports = fan_out(lambda _: health.checker.check(), 20)
            assert health.checker.probes_started - started == 1
            assert proxy.accepted == 1
    assert len(reports) == 20
    assert len({id(report) for report in reports}) == 1
    assert reports[0].status == "degraded"  # "black" is not the primary


# -- async ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_async_views_do_not_block_the_event_loop(
        add_alias: Callable[..., str]) -> None:
    """While the probe waits out its 0.3 s deadline on a blackholed server, a ticker on the
    same loop keeps running."""
    with proxy_to("127.0.0.1", 5432, mode="hang") as proxy:
        add_alias("black", PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(primary="black")):
            ticks: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                while not stop.is_set():
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            started = time.monotonic()
            response = await AsyncClient().get("/health/ready/")
            took = time.monotonic() - started
            stop.set()
            await task
    assert response.status_code == 503
    assert took >= 0.3
    # The loop kept ticking while the request waited (a blocked loop ticks at most at the
    # edges of the wait): counted, not timed, so a loaded machine cannot fail it.
    during = [tick for tick in ticks if started < tick < started + took]
    assert len(during) >= 5, (took, len(ticks))


@pytest.mark.django_db(transaction=True)
async def test_many_asgi_requests_on_one_loop_share_one_probe(
        add_alias: Callable[..., str]) -> None:
    """200 concurrent ASGI requests while the primary is blackholed: they all wait on the
    same round together, so together they take about one timeout, with one probe."""
    with proxy_to("127.0.0.1", 5432, mode="hang") as proxy:
        add_alias("black", PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(primary="black", databases=["black"])):
            started = health.checker.probes_started
            client = AsyncClient()
            began = time.monotonic()
            responses = await asyncio.gather(
                *(client.get("/health/ready/") for _ in range(200)))
            took = time.monotonic() - began
            assert health.checker.probes_started - started == 1
    assert {response.status_code for response in responses} == {503}
    # One after another they would take 200 x 0.3 s = 60 s; together, one timeout plus
    # the test client's own cost for 200 requests (seconds on 2 busy cores). The one probe
    # above is the proof; this bound only catches a hang.
    assert took < 45


# -- the evaluation rules -------------------------------------------------------------------


def _ok(role: str = "primary", lag: float | None = None) -> health.ProbeResult:
    return health.ProbeResult(ok=True, role=role, lag_s=lag, latency_ms=1.0)  # type: ignore[arg-type]


def test_replica_policy_and_lag(add_alias: Callable[..., str]) -> None:
    add_alias("replica1", TEST={"MIRROR": "default"})
    add_alias("replica2", TEST={"MIRROR": "default"})
    pools = {alias: {} for alias in ("default", "replica1", "replica2")}
    config = health.HealthSettings(max_replica_lag=5, min_replicas=1,
                                   databases=("default", "replica1", "replica2"))
    assert config.replica_aliases() == ("replica1", "replica2")

    def status(**results: health.ProbeResult) -> str:
        return health.evaluate(config, results, pools).status

    down = health.ProbeResult(ok=False, error="connection refused")
    assert status(default=_ok(), replica1=_ok("replica", 0.1),
                  replica2=_ok("replica", 0.0)) == "healthy"
    assert status(default=_ok(), replica1=_ok("replica", 9.0),
                  replica2=_ok("replica", 0.0)) == "degraded"
    assert status(default=_ok(), replica1=down, replica2=_ok("replica", 0.0)) == "degraded"
    assert status(default=_ok(), replica1=down, replica2=_ok("replica", 9.0)) == "unhealthy"
    # The primary's server in recovery (a failover the app missed): writes would fail.
    assert status(default=_ok("replica", 0.0), replica1=_ok("replica"),
                  replica2=_ok("replica")) == "unhealthy"
    report = health.evaluate(config, {"default": _ok(), "replica1": down,
                                      "replica2": _ok("replica", 9.0)}, pools)
    assert report.reasons == (
        "replica1: unreachable (connection refused)", "replica2: replica lag 9.0 s > 5 s",
        "0 healthy replicas, 1 required")


def test_a_routed_replica_is_judged_on_the_routers_measurement(
        add_alias: Callable[..., str]) -> None:
    """The router measured 40 s behind (against the primary); the health probe alone, which
    cannot see the primary, found it caught up with what it received. One value is reported
    and judged against HEALTH's own limit; without a router measurement, the probe's."""
    add_alias("replica1", TEST={"MIRROR": "default"})
    config = health.HealthSettings(max_replica_lag=30, databases=("default", "replica1"))
    results = {"default": _ok(), "replica1": _ok("replica", 0.0)}
    pools: dict[str, dict[str, Any]] = {"default": {}, "replica1": {}}
    routed = {"status": "lagging", "in_rotation": False, "reason": "lag 40.0 s > 5 s",
              "lag_s": 40.0, "lag_bytes": 4096, "measured_at": "2026-12-07T05:00:00+00:00",
              "out_since": None}
    report = health.evaluate(config, results, pools, routing={"replica1": routed})
    verdict = report.databases["replica1"]
    assert verdict.lag_s == 40.0
    assert verdict.reasons == (
        "replica1: replica lag 40.0 s > 30 s",
        "replica1: out of the router's rotation (lagging: lag 40.0 s > 5 s)")
    unmeasured = {**routed, "status": "unknown", "in_rotation": True, "reason": None,
                  "lag_s": None, "lag_bytes": None, "measured_at": None}
    report = health.evaluate(config, results, pools, routing={"replica1": unmeasured})
    assert report.databases["replica1"].lag_s == 0.0
    assert report.status == "healthy"


@pytest.mark.django_db
def test_a_real_replica_reports_its_role_and_lag(
        client: Client, add_alias: Callable[..., str]) -> None:
    # scripts/replica runs a streaming replica of this cluster on 5433: the test database
    # exists there too.
    add_alias("replica1", PORT=wait_for_replica(), TEST={"MIRROR": "default"})
    with override_settings(POOLKIT=poolkit(timeout=2, databases=["default", "replica1"])):
        body = with_token(client, "/health/db/").json()
    replica = body["databases"]["replica1"]
    assert replica["role"] == "replica"
    assert replica["expected_role"] == "replica"
    assert replica["lag_s"] is not None
    assert replica["lag_s"] >= 0
    assert body["databases"]["default"]["role"] == "primary"


@pytest.mark.django_db
def test_the_router_replica_state_is_part_of_the_story(
        client: Client, add_alias: Callable[..., str]) -> None:
    """The health report and the router read the same replica state: a replica the router
    took out of rotation is degraded here too, with the router's reason."""
    from django_poolkit.routing.state import replica_state

    add_alias("replica1", PORT=wait_for_replica())
    add_alias("fake", PORT="5432")  # "replica" that is really the primary
    routing = {"CLUSTERS": {"main": {"primary": "default", "replicas": ["replica1", "fake"]}},
               "probe_interval": None}
    section = poolkit(databases=["default", "replica1", "fake"], timeout=2)
    with override_settings(POOLKIT={**section, "ROUTING": routing}):
        try:
            replica_state.refresh()
            body = with_token(client, "/health/db/").json()
        finally:
            replica_state.reset()
            engine_registry.dispose()
    assert body["status"] == "degraded"
    replica = body["databases"]["replica1"]
    assert replica["expected_role"] == "replica"
    assert replica["routing"]["status"] == "healthy"
    assert replica["routing"]["in_rotation"] is True
    # One measurement: the report's lag is the router's, with the time it was taken.
    assert replica["routing"]["measured_at"] is not None
    assert replica["lag_s"] == replica["routing"]["lag_s"]
    fake = body["databases"]["fake"]
    assert fake["role"] == "primary"
    assert fake["routing"]["status"] == "not_replica"
    assert fake["status"] == "degraded"
    assert fake["reasons"][0].startswith("fake: out of the router's rotation (not_replica: ")


@pytest.mark.django_db
def test_the_probe_session_is_short_read_only_named_and_closed(
        monkeypatch: pytest.MonkeyPatch, admin: psycopg.Connection[Any]) -> None:
    # The probe's query, swapped for one that reports the session it runs in (its five
    # columns: in recovery, replay and receive positions, replay age, paused).
    monkeypatch.setattr(health.probe, "ROLE_AND_LAG_SQL", """
        SELECT NOT (current_setting('statement_timeout') = '300ms'
                    AND current_setting('default_transaction_read_only') = 'on'
                    AND current_setting('application_name') LIKE 'poolkit-health:default:%'),
               NULL, NULL, NULL, NULL""")
    assert health.probe_database("default", 0.3).role == "primary"
    # The server enforces the deadline too: a query slower than the timeout is cancelled.
    monkeypatch.setattr(health.probe, "ROLE_AND_LAG_SQL",
                        "SELECT pg_sleep(5) IS NULL, NULL, NULL, NULL, NULL")
    result, took = timed(lambda: health.probe_database("default", 0.3))
    assert result.error == "statement timeout (SQLSTATE 57014)"  # cancelled, not finished
    assert took < HANG_S
    # Closed: the backends go away (the server notices a closed socket a moment later).
    deadline = time.monotonic() + 5
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (f"poolkit-health:default:{os.getpid()}",)).fetchone() != (0,):
        assert time.monotonic() < deadline, "a probe connection was left open"
        time.sleep(0.05)


def test_sqlite_aliases_are_probed_and_never_created(
        add_alias: Callable[..., str], tmp_path: Any) -> None:
    path = tmp_path / "demo.sqlite3"
    add_alias("lite", ENGINE="django.db.backends.sqlite3", NAME=str(path), HOST="", PORT="")
    config = health.HealthSettings(databases=("lite",), primary="lite", cache_ttl=0)
    report = health.HealthChecker(config).check()
    assert report.status == "unhealthy"
    assert report.databases["lite"].error == "database file missing or unreadable"
    assert not path.exists()
    sqlite3.connect(path).close()
    report = health.HealthChecker(config).check()
    assert report.status == "healthy"
    assert report.databases["lite"].role == "primary"
    assert report.databases["lite"].vendor == "sqlite"


@pytest.mark.django_db
def test_a_forked_child_does_not_wait_on_its_parents_probes(
        add_alias: Callable[..., str]) -> None:
    """The parent's probe stuck on a blackholed server has no thread in a child: the child
    must start its own probe, not wait on a future nobody will complete."""
    with proxy_to("127.0.0.1", 5432, mode="hang") as proxy:
        add_alias("black", PORT=str(proxy.port))
        with override_settings(POOLKIT=poolkit(databases=["black"])):
            assert health.checker.check().databases["black"].status == "unhealthy"
            proxy.mode = "forward"  # new connections get through; the stuck one stays stuck
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report the database's status, then leave
                try:
                    report = health.checker.check()
                    os.write(write, report.databases["black"].status.encode())
                finally:
                    os._exit(0)
            os.close(write)
            with os.fdopen(read) as pipe:
                answer = pipe.read()
            os.waitpid(pid, 0)
    assert answer == "healthy"
