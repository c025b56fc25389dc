"""The pooled backend follows the hooks of Django's own backend, on every supported Django
(5.2, 6.0, 6.1): the behaviours Django's own test suite checks, on the real server.

- After ``_close()`` the wrapper no longer holds the psycopg connection it returned to the
  pool, so ``is_usable()`` is False (Django's own pool does the same).
- ``ensure_connection`` is not overridden: tools that patch
  ``BaseDatabaseWrapper.ensure_connection`` and call the wrapper's method do not recurse.
- A forked child forgets its parent's connection at fork time.
- ``create_test_db(serialize=...)``: on Django 6 the deprecation warning names the caller.
"""

from __future__ import annotations

import os
import warnings

import django
import pytest
from django.db import connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_poolkit import pool_stats
from django_poolkit.db.backends.postgresql.base import DatabaseWrapper
from testproject.demo.models import Note

from .helpers.backend import backend_pid, extra_alias

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "serialized"]),
              pytest.mark.usefixtures("orm_connection_returned")]


@pytest.fixture(scope="module", autouse=True)
def _serialized_alias(django_db_setup, django_db_blocker):
    """An alias whose test database the serialize test creates and destroys itself (added
    before pytest-django builds the test case, which checks the aliases a test names)."""
    default = connections.settings["default"]
    test = {**default["TEST"], "NAME": f"{default['NAME']}_serialized"}
    with extra_alias("serialized", TEST=test):
        yield


def test_is_usable_is_false_once_the_connection_went_back_to_the_pool():
    """Django's ``test_is_usable_after_database_disconnects``: ``_close()`` alone (the server
    going away, as Django emulates it) leaves nothing usable behind."""
    with connection.cursor():
        pass
    held = connection.connection
    connection._close()
    assert connection.connection is None
    assert connection.is_usable() is False
    # Returned, not closed: the pool holds it idle for the next checkout.
    assert not held.closed
    assert pool_stats().pool_checked_out == 0
    assert pool_stats().pool_checked_in == 1
    connection.close()
    assert Note.objects.count() == 0


def test_ensure_connection_is_django_s_own_method():
    """The fork check lives in hooks (``os.register_at_fork``, ``close_if_health_check_failed``),
    not in an override of a method debuggers and profilers patch."""
    assert "ensure_connection" not in DatabaseWrapper.__dict__


def test_patching_ensure_connection_on_the_base_class_does_not_recurse(monkeypatch):
    """As Django's ``AssertNumQueriesUponConnectionTests`` (and debug toolbars) do: patch the
    base class's method with one that calls the wrapper's method as found before the patch."""
    real_ensure_connection = connection.ensure_connection
    calls = []

    def patched(self):
        calls.append(self.alias)
        is_opening = self.connection is None
        real_ensure_connection()
        if is_opening:
            with self.cursor() as cursor:  # ensure_connection() again, which is patched
                cursor.execute("SELECT 1")

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", patched)
    assert Note.objects.count() == 0
    assert calls[0] == "default"
    assert pool_stats().pool_checked_out == 1


def test_a_forked_child_starts_without_its_parents_connection():
    """The at-fork hook lets go of the inherited connection before the child runs any code,
    so nothing in the child can reach the parent's session."""
    pid = backend_pid("default")
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            released = connection.connection is None and not connection.poolkit_checked_out
            os.write(writer, b"released" if released else b"held")
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert answer == "released"
    assert backend_pid("default") == pid


def test_create_test_db_serialize_follows_the_django_version():
    """Django 6 deprecates ``create_test_db(serialize)``; its warning must point at the caller
    (this file), not at the pooled backend's creation module. Django 5.2 takes it silently.
    Either way the database is serialized as asked."""
    wrapper = connections["serialized"]
    old_name = wrapper.settings_dict["NAME"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = wrapper.creation.create_test_db(verbosity=0, autoclobber=True,
                                                serialize=True)
    try:
        assert name == wrapper.settings_dict["TEST"]["NAME"]
        assert wrapper._test_serialized_contents.startswith("[")
        deprecations = [w for w in caught if "create_test_db(serialize)" in str(w.message)]
        if django.VERSION >= (6, 0):
            assert [w.filename for w in deprecations] == [__file__]
        else:
            assert deprecations == []
    finally:
        wrapper.creation.destroy_test_db(old_name, verbosity=0)
