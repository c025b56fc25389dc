"""Test databases on the pooled backend: pools never stand in the way of the test runner.

PostgreSQL refuses ``DROP DATABASE`` and ``CREATE DATABASE ... TEMPLATE`` while another
session is connected to that database, and a pool keeps idle sessions open by design. So
before the runner creates, clones or destroys a database, every pool of this process that
connects to it is disposed (the ORM's, and any engine of ``get_engine()`` or
``POOLKIT["ENGINES"]`` pointing there). Pools are rebuilt lazily, for the new ``NAME``, by the
next checkout.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import django
from django.db.backends.postgresql import creation

from ....engines import engine_registry

__all__ = ["DatabaseCreation"]

logger = logging.getLogger(__name__)


class DatabaseCreation(creation.DatabaseCreation):
    """Django's PostgreSQL test-database code, disposing pools before each step that needs a
    database without other sessions."""

    def _release(self, database_name: str | None) -> None:
        """Close this process's pooled sessions on ``database_name``."""
        if database_name:
            disposed = engine_registry.dispose_database(database_name)
            if disposed:
                logger.debug("disposed pools of %s before test database work on %r",
                             ", ".join(map(repr, disposed)), database_name)

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        # An old copy of the test database may be dropped and recreated.
        self._release(self._get_test_db_name())  # type: ignore[attr-defined]
        return super()._create_test_db(  # type: ignore[misc]
            verbosity, autoclobber, keepdb)

    if django.VERSION >= (6, 0):
        # Django 6 deprecates ``serialize`` with a warning at stacklevel=2, which from behind
        # an override would name this file instead of the caller. So the override warns for
        # the caller itself, calls Django's method without the argument, and serializes as
        # Django would (RemovedInDjango2028Warning: drop ``serialize`` with Django's).
        def create_test_db(self, verbosity: int = 1, autoclobber: bool = False,
                           serialize: bool | None = None, keepdb: bool = False) -> str:
            """Django's, then :meth:`_poolkit_after_create` (see there)."""
            if serialize is not None:
                from django.utils.deprecation import (  # type: ignore[attr-defined]
                    RemovedInDjango2028Warning,
                )

                warnings.warn(
                    "DatabaseCreation.create_test_db(serialize) is deprecated. Call "
                    "DatabaseCreation.serialize_test_db() once all test databases are set "
                    "up instead if you need fixtures persistence between tests.",
                    stacklevel=2, category=RemovedInDjango2028Warning)
            name: str = super().create_test_db(
                verbosity=verbosity, autoclobber=autoclobber, keepdb=keepdb)
            if serialize:
                self.connection._test_serialized_contents = (  # type: ignore[attr-defined]
                    self.serialize_db_to_string())
            return self._poolkit_after_create(name)
    else:
        def create_test_db(self, verbosity: int = 1, autoclobber: bool = False,
                           serialize: bool | None = True, keepdb: bool = False) -> str:
            """Django's, then :meth:`_poolkit_after_create` (see there)."""
            name: str = super().create_test_db(
                verbosity=verbosity, autoclobber=autoclobber, serialize=serialize,
                keepdb=keepdb)
            return self._poolkit_after_create(name)

    def _poolkit_after_create(self, name: str) -> str:
        """Return the connection Django leaves open and dispose the pool it built while
        migrating: each test starts with an empty pool, and a test that asserts no connection
        is checked out is not fooled by the runner's own."""
        self.connection.close()
        self._release(name)
        return name

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        # The source must have no other session: return our own connection, then dispose.
        self.connection.close()
        self._release(self.connection.settings_dict["NAME"])
        self._release(self.get_test_db_clone_settings(suffix)["NAME"])
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self._release(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
