"""The pooled backend's lean ``connect()``: the wrapper ends in the state Django's own
``connect()`` leaves, ``connection_created`` still fires, and the settings checks it skips on
a repeat run again as soon as what they read changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections
from django.db.backends.signals import connection_created

from django_poolkit.exceptions import PoolkitConfigurationError

from .helpers.backend import extra_alias

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "lean"])


@pytest.fixture(scope="module", autouse=True)
def _alias(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    with extra_alias("lean"):
        yield


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    yield
    connections["lean"].close()


def test_a_pool_checkout_leaves_the_wrapper_as_djangos_connect_would() -> None:
    wrapper = connections["lean"]
    created: list[object] = []

    def receiver(sender: object, connection: object, **kwargs: object) -> None:
        created.append(connection)

    connection_created.connect(receiver)
    try:
        for _ in range(2):  # a new server connection, then a checkout of the pooled one
            wrapper.connect()
            assert wrapper.poolkit_checked_out
            assert wrapper.autocommit is True
            assert wrapper.connection.autocommit is True
            assert wrapper.in_atomic_block is False
            assert wrapper.savepoint_ids == []
            assert wrapper.needs_rollback is False
            assert wrapper.health_check_done is True
            assert wrapper.close_at is not None  # CONN_MAX_AGE=0: closed at request end
            assert wrapper.run_on_commit == []
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT current_setting('TimeZone')")
                assert cursor.fetchone()[0] == wrapper.timezone_name
            wrapper.close()
    finally:
        connection_created.disconnect(receiver)
    assert created == [wrapper, wrapper]


def test_the_settings_checks_run_again_when_what_they_read_changes() -> None:
    wrapper = connections["lean"]
    wrapper.connect()
    wrapper.close()
    wrapper.settings_dict["CONN_MAX_AGE"] = 60  # poolkit.E010: the pool keeps connections
    try:
        with pytest.raises(PoolkitConfigurationError, match="CONN_MAX_AGE"):
            wrapper.connect()
        assert not wrapper.poolkit_checked_out  # refused before any checkout
    finally:
        wrapper.settings_dict["CONN_MAX_AGE"] = 0
    wrapper.connect()
    assert wrapper.poolkit_checked_out
