"""The Celery app and tasks of the worker that ``tests/test_celery.py`` starts
(``celery -A tests.helpers.celery_app worker``), laid out as Celery's Django guide says.

Each task reports what it saw, so the test can count failures and check which server session
served the ORM and ``get_engine()``. A ``worker_init`` receiver queries the database in the
worker's main process before the pool forks (a warm-up many projects do): the connection it
checks out must not stay checked out there.
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.helpers.celery_settings")

app = Celery("poolkit_celery_test")
app.config_from_object("django.conf:settings", namespace="CELERY")

BACKEND_PID = "SELECT pg_backend_pid()"


@signals.worker_init.connect
def warm_up(**kwargs):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(BACKEND_PID)


@app.task
def ping():
    return os.getpid()


@app.task
def orm(number):
    from testproject.demo.models import Note

    note = Note.objects.create(title=f"orm {number}")
    return Note.objects.filter(pk=note.pk).count()


@app.task
def engine(number):
    from sqlalchemy import text

    from django_poolkit import get_engine

    with get_engine().connect() as connection:
        return connection.execute(text("SELECT CAST(:n AS integer)"), {"n": number}).scalar()


@app.task
def mixed(number):
    """The ORM and ``get_engine()`` in one task: the server pids of both."""
    from django.db import connection
    from sqlalchemy import text

    from django_poolkit import get_engine
    from testproject.demo.models import Note

    Note.objects.create(title=f"mixed {number}")
    with connection.cursor() as cursor:
        cursor.execute(BACKEND_PID)
        orm_pid = cursor.fetchone()[0]
    with get_engine().connect() as sa:
        engine_pid = sa.execute(text(BACKEND_PID)).scalar()
    return [orm_pid, engine_pid]
