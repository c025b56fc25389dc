"""The app config: wiring only. ``ready()`` registers the checks and the fork and exit hooks;
it never reads ``POOLKIT`` or opens a connection.

Fork safety is this one hook: a forked child (gunicorn's workers, even with ``--preload``)
starts with none of its parent's per-process state. Each holder's ``after_fork_in_child``
drops what the parent's threads and sockets left behind; no module registers a hook of its
own at import time, with two exceptions on the parent's side of a fork. Before the fork,
gunicorn's master (and only it: it never queries again) closes what it opened while loading
the app (``gunicorn.release_in_master``). Celery's prefork main process runs no task, so
``contrib.celery`` (whose receivers ``ready()`` connects when Celery is loaded) returns what
it checked out."""

from __future__ import annotations

import atexit
import logging
import os
import sys

from django.apps import AppConfig

logger = logging.getLogger(__name__)

_hooks_installed = False


def _install_process_hooks() -> None:
    """Once per process: reset every per-process holder in forked children, stop the replica
    prober and close the pools at interpreter exit."""
    global _hooks_installed
    if _hooks_installed:
        return
    from . import gunicorn
    from .api import dispose_all
    from .dashboard import data as dashboard
    from .engines import engine_registry
    from .engines.leaks import leak_detector
    from .health.runner import checker
    from .routing.state import replica_state

    def after_fork_in_child() -> None:
        engine_registry.after_fork_in_child()  # the parent's engines, and the counters
        checker.after_fork_in_child()  # probe threads and the cached report
        replica_state.after_fork_in_child()  # the prober thread and the replica state
        leak_detector.after_fork_in_child()  # the watcher thread and tracked checkouts
        dashboard.after_fork_in_child()  # histograms, the series and background reads

    def before_fork() -> None:
        try:
            gunicorn.release_in_master()
        except Exception:  # never fail a fork: the master would only keep its connections
            logger.warning("poolkit: could not close the gunicorn master's connections "
                           "before a fork", exc_info=True)

    os.register_at_fork(before=before_fork, after_in_child=after_fork_in_child)
    atexit.register(dispose_all)
    # Registered after dispose_all, so it runs before it: no probe is left holding a
    # connection while the pools close.
    atexit.register(replica_state.stop)
    _hooks_installed = True


class PoolkitConfig(AppConfig):
    """django-poolkit's app config."""

    name = "django_poolkit"
    verbose_name = "Connection pools"
    # The app's own key type, whatever DEFAULT_AUTO_FIELD says, so its one migration
    # (models.Dashboard, which has no table) never changes with the project.
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .dashboard.adminlink import link_admin_index
        from .db import checks as backend_checks  # noqa: F401  (the pooled backend's checks)

        link_admin_index()
        _install_process_hooks()
        # A Celery worker imports Celery before it sets Django up; a process that has not
        # loaded Celery by now runs no worker.
        if "celery" in sys.modules:
            from .contrib.celery import connect_signals

            connect_signals()
