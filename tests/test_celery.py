"""Celery: a real worker (prefork and threads pools) on the Redis broker, against the test
database, through one termination of every server connection of that database.

The worker runs ``tests/helpers/celery_app.py`` with the test project's settings
(``tests/helpers/celery_settings.py``) in a subprocess of its own session; it is killed when
the test ends, whatever happened. ``CELERY_TEST_BROKER`` overrides the broker (default: Redis
database 11 on 127.0.0.1:6379); each run has a queue of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import Error
from django.db import connection, transaction
from django.test import override_settings

from django_poolkit.contrib.celery import release_before_fork
from django_poolkit.db.checks import check_celery_reuse
from django_poolkit.engines import engine_registry

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("CELERY_TEST_BROKER", "redis://127.0.0.1:6379/11")
APP = "tests.helpers.celery_app"
#: Tasks per batch, one batch before and one after the termination (ORM, engine, mixed).
BATCH = 150
#: Seconds: the worker's start, and each batch. The whole test stays well under a minute.
START_TIMEOUT_S = 30.0
BATCH_TIMEOUT_S = 30.0


def _database_url() -> str:
    settings_dict = connection.settings_dict
    return (f"postgres://{settings_dict['USER'] or 'postgres'}@"
            f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
            f"{settings_dict['NAME']}")


def _environment(queue: str, reuse_max: int | None) -> dict[str, str]:
    environment = {
        **{name: value for name, value in os.environ.items()
           if not name.startswith("POOLKIT_") and name != "REPLICA_URLS"},
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.helpers.celery_settings",
        "PYTHONPATH": str(ROOT),
        "CELERY_TEST_BROKER": BROKER,
        "CELERY_TEST_QUEUE": queue,
    }
    if reuse_max is not None:
        environment["CELERY_TEST_DB_REUSE_MAX"] = str(reuse_max)
    return environment


@contextmanager
def worker(tmp_path: Path, pool: str, environment: dict[str, str]) -> Iterator[Any]:
    """A Celery worker in its own process group; SIGTERM, then SIGKILL, to that group at the
    end, so neither the worker nor a pool child outlives the test."""
    log = (tmp_path / f"worker-{pool}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", APP, "worker", "--pool", pool,
         "--concurrency", "2" if pool == "prefork" else "4", "--queues",
         environment["CELERY_TEST_QUEUE"], "--hostname", f"{environment['CELERY_TEST_QUEUE']}@%h",
         "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
        cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    process.log_path = tmp_path / f"worker-{pool}.log"
    try:
        yield process
    finally:
        # The worker and its pool's children: a warm shutdown, then SIGKILL for anything left.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        log.close()


def _client(queue: str) -> Any:
    from celery import Celery

    # No Django fixup: this process only sends tasks and reads results.
    return Celery("poolkit_celery_client", broker=BROKER, backend=BROKER, fixups=[],
                  set_as_current=False)


def _log_tail(process: Any) -> str:
    return "\n".join(process.log_path.read_text().splitlines()[-40:])


def _wait(results: list[Any], timeout: float, process: Any) -> list[Any]:
    """Every result, once ready (a task still unfinished at ``timeout`` fails the test)."""
    deadline = time.monotonic() + timeout
    pending = list(results)
    while pending:
        assert process.poll() is None, f"the worker exited:\n{_log_tail(process)}"
        assert time.monotonic() < deadline, (
            f"{len(pending)} of {len(results)} tasks unfinished after {timeout} s:\n"
            f"{_log_tail(process)}")
        pending = [result for result in pending if not result.ready()]
        if pending:
            time.sleep(0.05)
    return results


def _batch(client: Any, queue: str, start: int) -> list[Any]:
    names = ["orm", "engine", "mixed"]
    return [client.send_task(f"{APP}.{names[number % 3]}", args=[number], queue=queue)
            for number in range(start, start + BATCH)]


def _failures(results: list[Any]) -> list[str]:
    return [f"{result.state}: {result.result!r}" for result in results
            if result.state != "SUCCESS"]


def _held_by(admin: Any, database: str, pid: int) -> int:
    """Server sessions of ``database`` opened by the process ``pid`` (poolkit's
    application_name ends with the client's pid)."""
    return admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
        (database, f"poolkit:%:{pid}")).fetchone()[0]


def _terminate_every_connection(admin: Any, database: str) -> int:
    """``pg_terminate_backend`` of every session of ``database`` (only of it: the server is
    shared), then wait until the server has let them all go."""
    killed = admin.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()[0]
    deadline = time.monotonic() + 10
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                        (database,)).fetchone()[0]:
        assert time.monotonic() < deadline, "terminated sessions still listed after 10 s"
        time.sleep(0.05)
    return killed


def _run(tmp_path: Path, admin: Any, pool: str, reuse_max: int | None) -> dict[str, Any]:
    """Start a worker, run a batch, terminate every session of the test database, run another
    batch: what failed, and what the worker's main process held."""
    queue = f"poolkit-celery-{uuid.uuid4().hex[:12]}"
    database = connection.settings_dict["NAME"]
    client = _client(queue)
    with worker(tmp_path, pool, _environment(queue, reuse_max)) as process:
        _wait([client.send_task(f"{APP}.ping", queue=queue)], START_TIMEOUT_S, process)
        before = _wait(_batch(client, queue, 0), BATCH_TIMEOUT_S, process)
        held_by_main = _held_by(admin, database, process.pid)
        connection.close()  # this process's own session dies too: hold none
        killed = _terminate_every_connection(admin, database)
        after = _wait(_batch(client, queue, BATCH), BATCH_TIMEOUT_S, process)
        # Every third task is "mixed" (BATCH is a multiple of 3).
        mixed = [result.result for result in before[2::3] + after[2::3]
                 if result.state == "SUCCESS"]
        figures = {"killed": killed, "held_by_main": held_by_main,
                   "failed_before": _failures(before), "failed_after": _failures(after),
                   "mixed": mixed, "log": _log_tail(process),
                   "worker_log": process.log_path.read_text()}
    client.close()
    print(f"RESULT celery pool={pool} reuse_max={reuse_max} tasks={2 * BATCH} "
          f"killed={killed} failed_before={len(figures['failed_before'])} "
          f"failed_after={len(figures['failed_after'])} held_by_main={held_by_main}")
    return figures


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_no_task_fails_after_every_connection_is_terminated(tmp_path, admin, pool):
    figures = _run(tmp_path, admin, pool, reuse_max=None)
    assert figures["killed"] >= 1, figures["log"]
    assert figures["failed_before"] == [], figures["log"]
    assert figures["failed_after"] == [], figures["log"]
    # The ORM and get_engine() shared one server session in every mixed task.
    assert len(figures["mixed"]) == 2 * BATCH // 3
    assert all(orm_pid == engine_pid for orm_pid, engine_pid in figures["mixed"])
    if pool == "prefork":
        # The worker_init warm-up's connection went back before the pool forked.
        assert figures["held_by_main"] == 0, figures["log"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_db_reuse_max_fails_tasks_and_the_check_says_so(tmp_path, admin):
    queue = f"poolkit-celery-{uuid.uuid4().hex[:12]}"
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"], cwd=tmp_path,
        env=_environment(queue, reuse_max=1000), capture_output=True, text=True, timeout=60,
        check=False)
    assert "(poolkit.E012) CELERY_DB_REUSE_MAX" in result.stderr, result.stderr
    assert result.returncode == 1
    # What the check prevents: each worker process keeps its checkout across tasks, so after
    # one termination its tasks fail until Celery's fixup recycles the connection.
    figures = _run(tmp_path, admin, "prefork", reuse_max=1000)
    assert figures["failed_before"] == [], figures["log"]
    assert len(figures["failed_after"]) > 0, figures["log"]
    # Celery runs the system checks at start without showing them: poolkit logs this one.
    assert "poolkit.E012: CELERY_DB_REUSE_MAX=1000: " in figures["worker_log"]


def test_the_check_fires_for_db_reuse_max_on_a_pooled_alias():
    assert check_celery_reuse() == []
    with override_settings(CELERY_DB_REUSE_MAX=None):
        assert check_celery_reuse() == []
    with override_settings(CELERY_DB_REUSE_MAX=100):
        assert check_celery_reuse() == [Error(
            "CELERY_DB_REUSE_MAX=100: Celery's workers keep each task's connection for the next "
            'tasks instead of returning it to the pool ("default", "replica" use '
            "django_poolkit.db.backends.postgresql); after one idle kill or server restart the "
            "tasks of each worker process fail until Celery recycles it.",
            hint="Remove CELERY_DB_REUSE_MAX: the pool keeps connections open between tasks, "
                 "and its pre-ping replaces a dead one at the next task's checkout.",
            id="poolkit.E012")]


def test_the_check_is_silent_without_a_pooled_alias(settings, monkeypatch):
    # In place: override_settings(DATABASES=...) warns, and warnings are errors here.
    for database in settings.DATABASES.values():
        monkeypatch.setitem(database, "ENGINE", "django.db.backends.postgresql")
    with override_settings(CELERY_DB_REUSE_MAX=100):
        assert check_celery_reuse() == []


@pytest.mark.django_db(transaction=True)
def test_release_before_fork_returns_the_orm_connection_and_closes_the_pools():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert engine_registry.built("default", "sync").pool.checkedout() == 1
    release_before_fork()
    assert connection.connection is None
    assert engine_registry.built("default", "sync") is None


@pytest.mark.django_db(transaction=True)
def test_release_before_fork_leaves_an_open_transaction_alone():
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        release_before_fork()
        assert connection.connection is not None
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
