"""Leak detection: a connection held past ``leak_detection_threshold`` is logged once with
the stack that checked it out; the testing helper finds connections still out."""

from __future__ import annotations

import logging
import time

import pytest
from django.db import connection

from django_poolkit import get_engine, unshared
from django_poolkit.engines.leaks import leak_detector
from django_poolkit.testing import assert_no_checked_out_connections, checked_out_connections

pytestmark = pytest.mark.django_db(transaction=True)

LEAK_LOGGER = "django_poolkit.engines.leaks"


@pytest.fixture(autouse=True)
def _closed():
    connection.close()
    yield
    connection.close()


def _wait_for(caplog, text: str, timeout: float = 5.0) -> list[logging.LogRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [record for record in caplog.records if text in record.getMessage()]
        if found:
            return found
        time.sleep(0.02)
    return []


def _leaky_helper():
    """Stands for application code that checks a connection out and forgets it."""
    return get_engine().connect()


def test_a_connection_held_too_long_is_logged_once_with_its_checkout_stack(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"leak_detection_threshold": 0.2}}}
    caplog.set_level(logging.INFO, logger=LEAK_LOGGER)
    held = _leaky_helper()
    try:
        found = _wait_for(caplog, "longer than leak_detection_threshold=0.2 s")
        assert len(found) == 1
        message = found[0].getMessage()
        assert found[0].levelno == logging.WARNING
        assert message.startswith("pool 'default' (sync): connection #")
        assert "in _leaky_helper" in message
        assert "test_backend_leaks.py" in message
        assert "sqlalchemy" not in message
        time.sleep(0.3)  # several more scans: still one report for this checkout
        assert len(_wait_for(caplog, "longer than leak_detection_threshold")) == 1
    finally:
        held.close()
    assert _wait_for(caplog, "reported as leaked came back after")


def test_the_orm_connection_is_watched_too(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"leak_detection_threshold": 0.2}}}
    connection.ensure_connection()
    found = _wait_for(caplog, "longer than leak_detection_threshold=0.2 s")
    assert len(found) == 1
    assert "connection.ensure_connection()" in found[0].getMessage()


def test_a_connection_returned_in_time_is_not_reported(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"leak_detection_threshold": 1}}}
    for _ in range(3):
        with get_engine().connect():
            pass
    assert leak_detector.held() == []
    time.sleep(0.3)
    assert "leak_detection_threshold" not in caplog.text


def test_off_by_default():
    with get_engine().connect():
        assert leak_detector.held() == []


def test_testing_helper_finds_connections_still_out(settings):
    settings.POOLKIT = {"DATABASES": {"default": {"leak_detection_threshold": 60}}}
    assert_no_checked_out_connections()
    connection.ensure_connection()
    # This thread's own ORM connection is not a leak (Django's TestCase keeps it open)...
    assert_no_checked_out_connections()
    assert checked_out_connections(include_orm=True) == {("default", "sync"): 1}
    shared = _leaky_helper()  # shares the ORM's connection: still counted while open
    assert checked_out_connections() == {("default", "sync"): 1}
    shared.close()
    assert_no_checked_out_connections()
    with unshared():
        held = _leaky_helper()
    try:
        with pytest.raises(AssertionError) as failure:
            assert_no_checked_out_connections()
        text = str(failure.value)
        assert text.startswith("1 connection(s) still checked out of pool 'default' (sync)")
        assert "in _leaky_helper" in text
    finally:
        held.close()
    assert_no_checked_out_connections()
