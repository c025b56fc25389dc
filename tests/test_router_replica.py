"""Routing against the real streaming replica: reads land on a standby, writes and fresh
reads on the primary."""

from __future__ import annotations

import pytest
from django.db import connections, transaction

from django_poolkit import pinning, use_primary
from django_poolkit.routers import choose_read
from django_poolkit.routing.state import replica_state
from testproject.demo.models import Note

from .helpers.routing import DBS, replica_paused

pytestmark = pytest.mark.django_db(databases=DBS, transaction=True)


def on_standby(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return bool(cursor.fetchone()[0])


def test_the_test_database_reached_the_replica_by_replication(route):
    route()
    replica = connections["replica"]
    assert replica.settings_dict["NAME"] == connections["default"].settings_dict["NAME"]
    assert replica.settings_dict["PORT"] != connections["default"].settings_dict["PORT"]
    with replica.cursor() as cursor:
        cursor.execute("SELECT current_database(), pg_is_in_recovery(), "
                       "to_regclass('demo_note') IS NOT NULL")
        assert cursor.fetchone() == (replica.settings_dict["NAME"], True, True)


def test_reads_land_on_a_server_in_recovery(route):
    Note.objects.create(title="replicated")
    route()
    with pinning.scope():
        notes = Note.objects.all()
        assert notes.db == "replica"
        assert [note.title for note in notes] == ["replicated"]
        # The row can only come back from a standby:
        raw = Note.objects.raw("SELECT * FROM demo_note WHERE pg_is_in_recovery()")
        assert [note.title for note in raw] == ["replicated"]
        assert on_standby(notes.db)


def test_writes_go_to_the_primary_and_pin_the_scope(route):
    route()
    with pinning.scope():
        assert Note.objects.all().db == "replica"
        note = Note.objects.create(title="fresh")
        assert note._state.db == "default"
        assert not on_standby("default")
        # Read-your-writes in the same scope, even before the replica has it:
        assert Note.objects.all().db == "default"
        assert Note.objects.get(pk=note.pk).title == "fresh"
    with pinning.scope():
        assert Note.objects.all().db == "replica"


def test_reads_inside_atomic_on_the_primary_stay_there(route):
    route()
    with pinning.scope():
        with transaction.atomic():
            assert Note.objects.all().db == "default"
        assert Note.objects.all().db == "replica"


def test_use_primary_sends_reads_to_the_primary(route):
    route()
    with pinning.scope():
        with use_primary():
            assert Note.objects.all().db == "default"

        @use_primary
        def read() -> str:
            return Note.objects.all().db

        assert read() == "default"
        assert Note.objects.all().db == "replica"


def test_probe_reports_a_caught_up_replica(route):
    route()
    (cluster,) = replica_state.snapshot()
    (replica,) = cluster.replicas
    assert (replica.status, replica.in_rotation, replica.reason) == ("healthy", True, None)
    # Other tests may write to the cluster meanwhile: the replica is at most a moment behind.
    assert replica.lag_bytes is not None
    assert replica.lag_bytes < 1_000_000
    assert replica.lag_seconds is not None
    assert replica.lag_seconds < 5
    assert replica.replay_lsn is not None
    assert replica.replay_paused is False
    assert cluster.fallbacks == 0


def test_read_your_writes_across_requests_by_lsn(route):
    """A client that wrote reads from the primary while the replica is behind its write,
    and from the replica as soon as the replica has replayed it, well before pin_seconds."""
    from django_poolkit.routers import issue_token

    route(max_lag=3600, pin_seconds=300)
    with replica_paused():
        with pinning.scope():
            Note.objects.create(title="mine")
            token = issue_token()
        assert token is not None
        replica_state.refresh()
        (cluster,) = replica_state.snapshot()
        assert cluster.replicas[0].in_rotation  # behind, but within max_lag

        with pinning.scope(token):  # the writer's next request
            assert choose_read(*_main()).reason == "pinned_lsn"
            assert [n.title for n in Note.objects.all()] == ["mine"]
        with pinning.scope():  # anybody else: the replica, which has not replayed it
            assert Note.objects.all().db == "replica"
            assert list(Note.objects.all()) == []
        with pinning.scope("forged-token"):
            assert Note.objects.all().db == "replica"


def _main():
    from django_poolkit.routing.settings import routing_settings

    routing = routing_settings()
    assert routing is not None
    return routing.clusters["main"], routing


def test_routing_adds_no_round_trip(route):
    """Decisions read cached state only: no query on any alias, no checkout from any pool."""
    from django.test.utils import CaptureQueriesContext

    from django_poolkit.stats import counters_for

    route()
    with CaptureQueriesContext(connections["default"]) as on_primary, \
            CaptureQueriesContext(connections["replica"]) as on_replica:
        # (Entering CaptureQueriesContext connects: count checkouts from here.)
        before = {alias: counters_for(alias, "sync").snapshot()["checkouts"] for alias in DBS}
        for _ in range(200):
            with pinning.scope():
                assert Note.objects.all().db == "replica"
    assert (len(on_primary), len(on_replica)) == (0, 0)
    assert {alias: counters_for(alias, "sync").snapshot()["checkouts"] for alias in DBS} == before
