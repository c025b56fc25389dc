"""Replica health: exclusion on lag (with hysteresis) and on failure, readmission after a
good probe, fallback to the primary or an error, the background prober."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import OperationalError, connections
from django.test import RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from django_poolkit import health, pinning
from django_poolkit.exceptions import NoHealthyReplica
from django_poolkit.metrics import metrics_view
from django_poolkit.ops.serverinfo import measure
from django_poolkit.pinning import parse_lsn
from django_poolkit.routing.settings import ClusterConfig, ReplicaConfig
from django_poolkit.routing.state import ReplicaState, _Cluster, _Replica, replica_state
from django_poolkit.signals import replica_state_changed
from testproject.demo.models import Note

from .helpers.routing import DBS, replica_paused, replica_script, routing_config


@contextmanager
def state_changes() -> Iterator[list[dict[str, Any]]]:
    """Collect the ``replica_state_changed`` signals sent inside the block."""
    changes: list[dict[str, Any]] = []

    def receive(signal: Any, **kwargs: Any) -> None:
        changes.append(kwargs)

    replica_state_changed.connect(receive)
    try:
        yield changes
    finally:
        replica_state_changed.disconnect(receive)


def cluster_config(**options: Any) -> ClusterConfig:
    values: dict[str, Any] = {
        "name": "main", "primary": "default", "replicas": (ReplicaConfig("replica"),),
        "apps": (), "strategy": "round_robin", "max_lag": 10.0, "readmit_lag": 5.0,
        "max_lag_bytes": None, "readmit_lag_bytes": None, "fallback": "primary"}
    values.update(options)
    return ClusterConfig(**values)


def judge(found: _Cluster, replica: _Replica, *, behind: int, age: float | None,
          in_recovery: bool = True, paused: bool = False) -> _Replica:
    """Feed one probe result: the replica has replayed ``behind`` bytes less than the
    primary, and its last replayed commit is ``age`` seconds old."""
    primary = found.primary_lsn or 0
    replay = f"0/{primary - behind:X}"
    ReplicaState()._judge(found, replica, (in_recovery, replay, replay, age, paused), time.time())
    return replica


def fresh(config: ClusterConfig, primary_lsn: int | None = 0x10000) -> tuple[_Cluster, _Replica]:
    replica = _Replica("replica", config.name, 1.0)
    return _Cluster(config, {"replica": replica}, primary_lsn=primary_lsn), replica


def test_lag_in_seconds_excludes_and_readmits_with_hysteresis():
    found, replica = fresh(cluster_config())
    assert replica.status == "unknown"
    assert replica.in_rotation
    steps = [(12.0, "lagging"), (7.0, "lagging"), (5.0, "healthy"), (7.0, "healthy"),
             (10.5, "lagging")]
    seen = [(age, judge(found, replica, behind=100, age=age).status) for age, _ in steps]
    assert seen == steps
    assert replica.reason == "lag 10.5 s > 10 s"
    judge(found, replica, behind=100, age=8.0)
    assert replica.reason == "lag 8.0 s > 5 s (readmit threshold)"
    assert not replica.in_rotation
    assert replica.out_since is not None


def test_lag_in_bytes_excludes_and_readmits_with_hysteresis():
    found, replica = fresh(cluster_config(max_lag_bytes=1000, readmit_lag_bytes=200))
    statuses = [judge(found, replica, behind=behind, age=1.0).status
                for behind in (1001, 500, 200, 900)]
    assert statuses == ["lagging", "lagging", "healthy", "healthy"]
    judge(found, replica, behind=5000, age=1.0, paused=True)
    assert replica.reason == "lag 5000 bytes > 1000 bytes; replay is paused"
    assert replica.lag_bytes == 5000


def test_a_caught_up_replica_has_no_lag_however_old_its_last_commit():
    found, replica = fresh(cluster_config())
    judge(found, replica, behind=0, age=86400.0)
    assert (replica.status, replica.lag_seconds, replica.lag_bytes) == ("healthy", 0.0, 0)


def test_after_an_idle_spell_lag_is_bounded_by_the_last_caught_up_probe():
    found, replica = fresh(cluster_config())
    found.primary_probed_at = time.time() - 1.0
    judge(found, replica, behind=0, age=3600.0)  # idle for an hour, caught up
    assert replica.caught_up_at == found.primary_probed_at
    judge(found, replica, behind=100, age=3600.0)  # a new write, not replayed yet
    assert replica.status == "healthy"
    assert replica.lag_seconds is not None
    assert 0.9 < replica.lag_seconds < 600


def test_without_the_primary_lag_is_measured_against_what_was_received():
    found, replica = fresh(cluster_config(), primary_lsn=None)
    ReplicaState()._judge(found, replica, (True, "0/100", "0/100", 3600.0, False), time.time())
    assert (replica.status, replica.lag_bytes) == ("healthy", 0)
    ReplicaState()._judge(found, replica, (True, "0/100", "0/200", 3600.0, False), time.time())
    assert (replica.status, replica.lag_bytes) == ("lagging", 0x100)


def test_one_rule_measures_lag_for_every_reader():
    """``serverinfo.measure`` is the rule the router, the health probe and poolstatus share.
    An idle primary is not lag: caught up is 0 s however old the last replayed commit."""
    now = time.time()
    caught_up = measure((True, "0/100", "0/100", 86400.0, False), now)
    assert (caught_up.role, caught_up.lag_seconds, caught_up.lag_bytes) == ("replica", 0.0, 0)
    # Without the primary's position, behind means behind what it received...
    behind = measure((True, "0/100", "0/180", 7.5, True), now)
    assert (behind.lag_seconds, behind.lag_bytes, behind.replay_paused) == (7.5, 0x80, True)
    # ...with it, behind the primary, bounded by the last time it was seen caught up.
    against = measure((True, "0/100", "0/100", 3600.0, False), now, primary_lsn=0x200,
                      caught_up_at=now - 2.0)
    assert (against.lag_seconds, against.lag_bytes) == (2.0, 0x100)
    assert measure((False, None, None, None, None), now).role == "primary"


def test_a_server_not_in_recovery_is_taken_out():
    found, replica = fresh(cluster_config())
    judge(found, replica, behind=0, age=None, in_recovery=False)
    assert replica.status == "not_replica"
    assert replica.reason is not None
    assert "not in recovery" in replica.reason


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_paused_replica_falls_behind_and_reads_fall_back_to_the_primary(route):
    route(cluster={"max_lag_bytes": 0})
    with replica_paused():
        Note.objects.create(title="after the pause")
        (cluster,) = replica_state.refresh()
        (replica,) = cluster.replicas
        assert (replica.status, replica.in_rotation, replica.replay_paused) == (
            "lagging", False, True)
        assert replica.lag_bytes is not None
        assert replica.lag_bytes > 0
        assert replica.reason is not None
        # "(readmit threshold)" when an earlier probe had already taken it out of rotation
        # (another run on the same replica may pause its replay too).
        assert re.fullmatch(r"lag \d+ bytes > 0 bytes( \(readmit threshold\))?; replay is paused",
                            replica.reason), replica.reason

        # No replica qualifies: the read falls back to the primary, and the state says so.
        with pinning.scope():  # a new request: this one's own write does not pin it
            assert Note.objects.all().db == "default"
            assert [n.title for n in Note.objects.all()] == ["after the pause"]
        (cluster,) = replica_state.snapshot()
        assert cluster.degraded
        assert cluster.fallbacks >= 1
        assert cluster.last_fallback_reason is not None
        assert "replica: lag" in cluster.last_fallback_reason
        assert cluster.as_dict()["replicas"][0]["status"] == "lagging"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_lag_in_seconds_on_a_paused_replica(route):
    route(cluster={"max_lag": 0.001})
    with replica_paused():
        Note.objects.create(title="x")
        (cluster,) = replica_state.refresh()
        (replica,) = cluster.replicas
        assert replica.status == "lagging"
        assert replica.lag_seconds is not None
        assert replica.lag_seconds > 0.001


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_fallback_raise(route):
    route(cluster={"max_lag_bytes": 0, "fallback": "raise"})
    with replica_paused():
        Note.objects.create(title="x")
        replica_state.refresh()
        with pinning.scope(), pytest.raises(
                NoHealthyReplica, match=r"no replica of cluster 'main' can serve reads "
                r"\(replica: lag \d+ bytes > 0 bytes( \(readmit threshold\))?; replay is "
                r"paused\)"):
            list(Note.objects.all())


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_a_lagging_replica_is_readmitted_once_caught_up(route):
    # Thresholds well above the WAL other tests on this cluster may write meanwhile.
    route(cluster={"max_lag_bytes": 1_000_000})
    with replica_paused():
        with connections["default"].cursor() as cursor:  # several MB of WAL
            cursor.execute("INSERT INTO demo_note (title, body, created_at) "
                           "SELECT md5(i::text), md5((i * 7)::text) || md5(i::text), now() "
                           "FROM generate_series(1, 30000) AS i")
        (replica,) = replica_state.refresh()[0].replicas
        assert replica.status == "lagging"
        assert replica.lag_bytes is not None
        assert replica.lag_bytes > 1_000_000
    from django_poolkit.testing import wait_for_replicas

    wait_for_replicas(["replica"])  # probes again at the end
    assert replica_state.snapshot()[0].replicas[0].status == "healthy"
    with pinning.scope():
        assert Note.objects.all().db == "replica"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_a_stopped_replica_is_taken_out_and_readmitted_after_a_good_probe(route):
    """The one test that stops the replica: kept short, and it always starts it again."""
    route()
    assert Note.objects.all().db == "replica"
    connections["replica"].close()
    replica_script("stop")
    try:
        # Before any probe: the read routed to the stopped replica fails, and its pool's
        # failed connect takes it out for the next read at once.
        with pytest.raises(OperationalError):
            list(Note.objects.all())
        assert Note.objects.all().db == "default"
        (replica,) = replica_state.snapshot()[0].replicas
        assert (replica.status, replica.reason) == (
            "down", "connection failed: 1 connect error(s) in its pool since the last probe")
        (cluster,) = replica_state.refresh()
        (replica,) = cluster.replicas
        assert (replica.status, replica.in_rotation) == ("down", False)
        assert replica.reason is not None
        assert replica.reason.startswith("connection failed: OperationalError")
        assert "password" not in replica.reason
        assert replica.failures == 1
        assert Note.objects.all().db == "default"
        assert replica_state.snapshot()[0].fallbacks == 2
    finally:
        replica_script("start")
    with state_changes() as changes:
        (cluster,) = replica_state.refresh()
    assert (cluster.replicas[0].status, cluster.replicas[0].failures) == ("healthy", 0)
    assert [(c["previous"], c["status"], c["in_rotation"]) for c in changes] == [
        ("down", "healthy", True)]
    assert Note.objects.all().db == "replica"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_the_background_prober_refreshes_the_state_off_the_request_path(route):
    route(probe_interval=0.05)
    replica_state.reset()  # forget the probe wait_for_replicas made
    assert replica_state.snapshot()[0].replicas[0].status == "unknown"
    assert not replica_state.prober_running
    assert Note.objects.all().db == "replica"  # unknown replicas serve plain reads
    assert replica_state.prober_running
    deadline = time.monotonic() + 30
    while replica_state.snapshot()[0].replicas[0].status == "unknown":
        assert time.monotonic() < deadline, "the prober never probed"
        time.sleep(0.02)
    first = replica_state.snapshot()[0].replicas[0].last_probe_at
    while replica_state.snapshot()[0].replicas[0].last_probe_at == first:
        assert time.monotonic() < deadline, "the prober probed only once"
        time.sleep(0.02)
    replica_state.stop()
    assert not replica_state.prober_running


def test_report_failure_takes_a_replica_out(settings):
    from .helpers.routing import routing_config

    settings.POOLKIT = routing_config()
    with state_changes() as changes:
        replica_state.report_failure("replica", OSError("connection reset"))
        replica_state.report_failure("replica", OSError("connection reset"))
    (replica,) = replica_state.snapshot()[0].replicas
    assert (replica.status, replica.reason) == ("down", "connection failed: OSError: "
                                                       "connection reset")
    # One signal per change, not per failure.
    assert changes == [{"sender": "replica", "alias": "replica", "cluster": "main",
                        "previous": "unknown", "status": "down",
                        "reason": "connection failed: OSError: connection reset",
                        "in_rotation": False}]


def test_a_failing_state_receiver_is_logged_and_the_state_still_changes(settings, caplog):
    from .helpers.routing import routing_config

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    settings.POOLKIT = routing_config()
    replica_state_changed.connect(broken)
    try:
        replica_state.report_failure("replica", OSError("connection reset"))
    finally:
        replica_state_changed.disconnect(broken)
    assert replica_state.snapshot()[0].replicas[0].status == "down"
    assert "replica_state_changed receiver" in caplog.text
    assert "RuntimeError: receiver bug" in caplog.text


def test_lsn_parsing_matches_the_server(admin):
    text = admin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    delta = admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
    assert parse_lsn(text) <= int(delta)


def test_a_forked_child_starts_over(settings):
    """A lock held at fork time (a probe in progress) would never be released in the child;
    the child gets fresh locks and no prober."""
    import os

    from .helpers.routing import routing_config

    settings.POOLKIT = routing_config()
    replica_state.snapshot()  # first use: installs the fork hook
    with replica_state._probe_lock:
        pid = os.fork()
        if pid == 0:  # the child
            ok = (replica_state._probe_lock.acquire(blocking=False)
                  and not replica_state.prober_running and replica_state._clusters == {})
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_health_poolstatus_and_metrics_report_the_routers_measurement(route, settings):
    """One measurement per routed replica: the health report, ``poolstatus`` and the lag
    metric give the router's figure, not one of their own."""
    route()
    token = "t" * 32
    settings.POOLKIT = {**routing_config(), "HEALTH": {
        "token": token, "databases": ["default", "replica"], "cache_ttl": 0, "timeout": 5}}
    with replica_paused():
        Note.objects.create(title="behind")
        (cluster,) = replica_state.refresh()
        (replica,) = cluster.replicas
        assert replica.lag_bytes is not None
        assert replica.lag_bytes > 0
        assert replica.lag_seconds is not None
        measured = replica_state.measurement("replica")
        assert measured is not None
        assert (measured.lag_seconds, measured.measured_at) == (
            replica.lag_seconds, replica.last_ok_at)
        health.checker.clear()
        assert health.checker.check().databases["replica"].lag_s == replica.lag_seconds
        request = RequestFactory().get("/metrics/", headers={"X-Poolkit-Health-Token": token})
        request.user = AnonymousUser()
        families = text_string_to_metric_families(metrics_view(request).content.decode())
        lags = {sample.labels["alias"]: sample.value for family in families
                for sample in family.samples if sample.name == "poolkit_replica_lag_seconds"}
        assert lags["replica"] == replica.lag_seconds
        out = io.StringIO()
        call_command("poolstatus", "--format", "json", "--database", "replica", stdout=out)
        (entry,) = json.loads(out.getvalue())["databases"]
        assert entry["server_status"]["replay_lag_s"] == round(replica.lag_seconds, 3)
        # With no measurement in this process (a fresh manage.py), poolstatus measures by the
        # same rule against the primary's position: behind, since replay is paused.
        replica_state.reset()
        out = io.StringIO()
        call_command("poolstatus", "--format", "json", "--database", "replica", stdout=out)
        (entry,) = json.loads(out.getvalue())["databases"]
        assert entry["server_status"]["replay_lag_s"] > 0
