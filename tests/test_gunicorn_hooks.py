"""The gunicorn hooks' log lines, called as gunicorn calls them (a worker with ``cfg`` and
``log``), without a server: tests/test_lifecycle_server.py runs the real one."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from django_poolkit import gunicorn

pytestmark = pytest.mark.django_db(transaction=True)


def _worker(threads: int) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(threads=threads),
                           log=logging.getLogger("test.gunicorn"))


def test_a_pool_smaller_than_threads_is_warned_at_worker_start(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 2},
                                      "replica": {"pool_size": 8, "max_overflow": 0}}}
    with caplog.at_level(logging.INFO, logger="test.gunicorn"):
        gunicorn.hooks()["post_worker_init"](_worker(threads=8))
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", 'poolkit: pool "default" opens at most 4 connection(s) per process '
                    "(pool_size 2 + max_overflow 2), but this worker runs 8 threads: under "
                    "load the others wait pool_timeout and fail with PoolTimeout; raise "
                    "pool_size or max_overflow to at least 8, or run fewer threads "
                    "(manage.py poolplan)")]


def test_pools_as_large_as_the_threads_say_nothing(settings, caplog):
    settings.POOLKIT = {"DATABASES": {"default": {"pool_size": 2, "max_overflow": 2}}}
    with caplog.at_level(logging.INFO, logger="test.gunicorn"):
        gunicorn.hooks()["post_worker_init"](_worker(threads=4))
    assert caplog.records == []


def test_a_worker_that_refused_to_start_logs_no_closed_pools_none(settings, caplog):
    """gunicorn runs worker_exit after post_worker_init exited with status 4."""
    settings.POOLKIT = {"DATABASES": {"default": {"pool_sise": 2}}}
    worker = _worker(threads=1)
    hooks = gunicorn.hooks()
    with caplog.at_level(logging.INFO, logger="test.gunicorn"):
        with pytest.raises(SystemExit) as exiting:
            hooks["post_worker_init"](worker)
        hooks["worker_exit"](worker, worker)
    assert exiting.value.code == gunicorn.APP_LOAD_ERROR
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("poolkit: configuration error, not starting: ")
