"""django_poolkit.routing.testing: test databases with a real replica, under pytest-django
and under Django's own test runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import TransactionTestCase, override_settings

from django_poolkit import pinning
from django_poolkit.routing.testing import (
    ReplicaNotCaughtUp,
    check_replica_aliases,
    replica_database,
    wait_for_replicas,
)
from testproject.demo.models import Note

from .helpers.routing import DBS, ROUTER, replica_paused, routing_config

ROOT = Path(__file__).resolve().parent.parent


def test_replica_database_builds_a_mirror_entry():
    entry = replica_database("postgres://app:s3cret@replica.internal:5433/app?sslmode=require",
                             ENGINE="django_poolkit.db.backends.postgresql")
    assert entry["HOST"] == "replica.internal"
    assert entry["PORT"] == 5433
    assert entry["ENGINE"] == "django_poolkit.db.backends.postgresql"
    assert entry["OPTIONS"] == {"sslmode": "require"}
    assert entry["TEST"] == {"MIRROR": "default"}


def test_check_replica_aliases_wants_a_mirror_of_the_primary(settings):
    settings.POOLKIT = routing_config()
    check_replica_aliases()
    connections.settings["replica"]["TEST"]["MIRROR"] = None
    try:
        with pytest.raises(ImproperlyConfigured, match=r'DATABASES\["replica"\]\["TEST"\]'
                           r'\["MIRROR"\] must be "default" \(its primary\), got None'):
            check_replica_aliases()
    finally:
        connections.settings["replica"]["TEST"]["MIRROR"] = "default"


@pytest.mark.django_db(databases=DBS, transaction=True)
def test_wait_for_replicas_times_out_on_a_paused_replica():
    wait_for_replicas(["replica"])
    with replica_paused():
        Note.objects.create(title="unreplayed")
        with pytest.raises(ReplicaNotCaughtUp, match=r"replica 'replica' has not replayed "
                           r"[0-9A-F]+/[0-9A-F]+ of 'default' within 0.3 s \(replayed .*\); "
                           r"replay is paused"):
            wait_for_replicas(["replica"], timeout=0.3)


@override_settings(POOLKIT=routing_config(), DATABASE_ROUTERS=[ROUTER])
class ReplicaRunnerCase(TransactionTestCase):
    """A user's test, as Django's runner runs it (and pytest-django too): rows written in
    the test are read back through the real replica."""

    databases = frozenset(DBS)

    def test_rows_come_back_through_the_replica(self) -> None:
        pinning.clear()
        self.addCleanup(pinning.clear)  # the write below pins this context
        Note.objects.create(title="through the replica")
        wait_for_replicas()
        with pinning.scope():
            notes = Note.objects.all()
            assert notes.db == "replica"
            assert [note.title for note in notes] == ["through the replica"]
            with connections["replica"].cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                assert cursor.fetchone()[0] is True


def test_replica_test_runner_with_django_manage_test():
    """Django's runner creates test_<name> on the primary only; the replica reads it."""
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/poolkit")
    env = {**os.environ, "DATABASE_URL": url.rsplit("/", 1)[0] + "/poolkit_router_runner",
           "DJANGO_SETTINGS_MODULE": "testproject.settings_test", "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "django", "test", "--noinput", "-v", "2",
         "--testrunner", "django_poolkit.testing.ReplicaTestRunner",
         "tests.test_router_testing.ReplicaRunnerCase"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Creating test database for alias 'default' ('test_poolkit_router_runner')" in output
    assert "Creating test database for alias 'replica'" not in output
    assert "Ran 1 test" in output
    assert "OK" in output


DEMO = """
import django
django.setup()
from django.conf import settings
from django.db import connections
from django_poolkit import pinning
from django_poolkit.routing.state import replica_state
from testproject.demo.models import Note

print(settings.DATABASE_ROUTERS, settings.MIDDLEWARE[1], settings.TEST_RUNNER)
print(settings.POOLKIT["ROUTING"])
replica_state.refresh()
with pinning.scope():
    alias = Note.objects.all().db
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        print(alias, cursor.fetchone()[0])
replica_state.stop()
"""


def test_the_demo_project_routes_when_replica_urls_is_set():
    env = {**os.environ, "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
           "REPLICA_URLS": "postgres://postgres@127.0.0.1:5433/postgres",
           "DJANGO_SETTINGS_MODULE": "testproject.settings", "PYTHONPATH": str(ROOT),
           "LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "error"}
    done = subprocess.run([sys.executable, "-c", DEMO], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "['django_poolkit.routers.PrimaryReplicaRouter'] "
        "django_poolkit.middleware.PoolkitMiddleware "
        "django_poolkit.testing.ReplicaTestRunner",
        "{'CLUSTERS': {'main': {'primary': 'default', 'replicas': ['replica1']}}}",
        "replica1 True",
    ]
