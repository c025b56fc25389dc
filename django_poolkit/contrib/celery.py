"""Celery workers and poolkit's pools (the manual: docs/celery.rst).

Celery's Django fixup closes every connection before and after each task; on the pooled
backend that close returns the connection to its pool. What it leaves out is a prefork
worker's main process, which runs no task: a connection it checked out (a ``worker_init``
receiver, a query while the task modules were imported, or any query at all with
``CELERY_DB_REUSE_MAX``) stayed checked out there for the worker's life, one server session
per worker that nobody used. The app connects these receivers when Celery is loaded
(``apps.py``); nothing here imports Celery otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["connect_signals", "release_before_fork", "report_reuse_max"]

logger = logging.getLogger(__name__)

_UID = "django_poolkit.contrib.celery"


def release_before_fork(**kwargs: Any) -> None:
    """``worker_before_create_process`` (sent in a prefork worker's main process before each
    child is forked): return this thread's pooled ORM connections, then close the pools'
    idle connections. The child's pools start empty anyway (the fork hook), so the main
    process keeps no server session. A connection inside ``atomic()`` is left alone."""
    from django.db import connections

    from ..engines import engine_registry
    from ..engines.params import POOLED_BACKEND

    for wrapper in connections.all(initialized_only=True):
        if wrapper.settings_dict.get("ENGINE") == POOLED_BACKEND and \
                not wrapper.in_atomic_block:
            wrapper.close()
    engine_registry.dispose()


def report_reuse_max(**kwargs: Any) -> None:
    """``worker_init``: log ``poolkit.E012`` at ERROR. Celery's fixup runs the system checks
    at start but shows none of their messages."""
    from ..db.checks import check_celery_reuse

    for message in check_celery_reuse():
        logger.error("%s: %s %s", message.id, message.msg, message.hint)


def connect_signals() -> None:
    """Connect the receivers to Celery's worker signals (once per process; a Celery without
    ``worker_before_create_process``, older than 5.3, gets the check's log line only)."""
    from celery import signals

    before_fork = getattr(signals, "worker_before_create_process", None)
    if before_fork is not None:
        before_fork.connect(release_before_fork, dispatch_uid=_UID, weak=False)
    signals.worker_init.connect(report_reuse_max, dispatch_uid=_UID, weak=False)
