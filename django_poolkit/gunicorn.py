"""Gunicorn server hooks for poolkit's pools: use this module as a config, or import its hooks.

As a config module, with the defaults (no warm-up, a 10 s drain)::

    gunicorn -c python:django_poolkit.gunicorn --workers 4 --threads 8 \\
        --worker-class gthread project.wsgi

or in your own ``gunicorn.conf.py``, with options::

    from django_poolkit.gunicorn import hooks

    globals().update(hooks(warm_up=True, shutdown_timeout=20))

What the hooks do, and why:

- ``when_ready`` (master): with ``--preload`` (the master imported the app, so Django is set
  up), checks the configuration (fail fast) and closes every pool the master opened while
  importing: the workers would never use those connections (the fork hook drops them in
  each child without touching their sockets), so they would only hold server slots.
  Without ``--preload`` the master never imports the app (nor the ``wsgi.py`` that sets
  ``DJANGO_SETTINGS_MODULE``), has no pools, and the hook does nothing.
- ``post_worker_init`` (each worker, app loaded): checks the configuration
  (:func:`~django_poolkit.lifecycle.validate_configuration`); a broken one stops the server
  with one log line, exit status 4 ("App failed to load"), instead of every worker
  answering 500; warns about each pool smaller than ``--threads``. Then warms the pools up
  when asked, and starts the Prometheus histograms when prometheus-client is installed.
- ``worker_exit`` (each worker, after gunicorn finished its in-flight requests on
  ``SIGTERM``): waits up to ``shutdown_timeout`` seconds for checked-out connections,
  then closes every pool; one log line per worker that had pools says what it closed.
- ``child_exit`` (master): with ``PROMETHEUS_MULTIPROC_DIR``, drops the dead worker's live
  gauges.

``DJANGO_SETTINGS_MODULE`` comes from where gunicorn users set it: the app's ``wsgi.py``
(``os.environ.setdefault``), ``--env DJANGO_SETTINGS_MODULE=...`` or ``raw_env`` in a config
file (gunicorn puts both in the environment before any hook runs).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["child_exit", "hooks", "post_worker_init", "when_ready", "worker_exit"]


#: gunicorn's exit status for "App failed to load": the master stops instead of respawning.
APP_LOAD_ERROR = 4


def _django_ready() -> bool:
    """Whether this process has set Django up (the app was imported)."""
    from django.apps import apps

    return apps.ready


def _fail_fast(log: Any) -> None:
    """Validate the configuration; on a problem, one log line and exit (status 4)."""
    from django.conf import settings

    from .exceptions import PoolkitConfigurationError
    from .lifecycle import validate_configuration

    if not settings.configured:
        log.error("poolkit: DJANGO_SETTINGS_MODULE is not set: add os.environ.setdefault("
                  "\"DJANGO_SETTINGS_MODULE\", \"project.settings\") to your wsgi.py, or "
                  "pass --env DJANGO_SETTINGS_MODULE=project.settings to gunicorn")
        sys.exit(APP_LOAD_ERROR)
    try:
        validate_configuration()
    except PoolkitConfigurationError as error:
        log.error("poolkit: configuration error, not starting: %s", error)
        sys.exit(APP_LOAD_ERROR)


def _warn_small_pools(worker: Any) -> None:
    """One warning per pool that opens fewer connections than the worker has threads
    (``--threads``), as ``poolplan`` and ``poolkit.W042`` say: under load the other threads
    wait ``pool_timeout`` seconds and fail with ``PoolTimeout``."""
    from .conf import get_settings

    threads = int(getattr(worker.cfg, "threads", 1) or 1)
    for alias, pool in get_settings().pools.items():
        if pool.capacity is not None and pool.capacity < threads:
            worker.log.warning(
                'poolkit: pool "%s" opens at most %d connection(s) per process (pool_size %d '
                "+ max_overflow %d), but this worker runs %d threads: under load the others "
                "wait pool_timeout and fail with PoolTimeout; raise pool_size or max_overflow "
                "to at least %d, or run fewer threads (manage.py poolplan)", alias,
                pool.capacity, pool.pool_size, pool.max_overflow, threads, threads)


def hooks(*, warm_up: bool | Sequence[str] = False, shutdown_timeout: float = 10.0,
          validate: bool = True) -> dict[str, Callable[..., None]]:
    """The four hooks, configured: ``globals().update(hooks(...))`` in a gunicorn config.

    ``warm_up`` is False, True (every PostgreSQL pool) or a list of aliases. ``validate``
    (default True) stops the server at start when the configuration is broken.
    """

    def when_ready(server: Any) -> None:
        if not _django_ready():
            return  # no --preload: the master has not loaded the app, so it has no pools
        from .lifecycle import shutdown

        if validate:
            _fail_fast(server.log)
        report = shutdown(timeout=0)
        if report.pools:
            server.log.info("poolkit: master closed the pools it opened while loading "
                            "the app (%s)", ", ".join(report.pools))

    def post_worker_init(worker: Any) -> None:
        from . import lifecycle

        if validate:
            _fail_fast(worker.log)
            _warn_small_pools(worker)
        if warm_up:
            opened = lifecycle.warm_up(None if warm_up is True else list(warm_up))
            worker.log.info("poolkit: worker %s warmed up %s", os.getpid(), opened)
        if importlib.util.find_spec("prometheus_client") is not None:
            from .metrics import install

            install()

    def worker_exit(server: Any, worker: Any) -> None:
        from .lifecycle import shutdown

        report = shutdown(timeout=shutdown_timeout)
        if report.pools:  # not "closed pools none" from a worker that refused to start
            server.log.info("poolkit: worker %s %s", os.getpid(), report)

    def child_exit(server: Any, worker: Any) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and importlib.util.find_spec(
                "prometheus_client") is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    return {"when_ready": when_ready, "post_worker_init": post_worker_init,
            "worker_exit": worker_exit, "child_exit": child_exit}


_defaults = hooks()
when_ready = _defaults["when_ready"]
post_worker_init = _defaults["post_worker_init"]
worker_exit = _defaults["worker_exit"]
child_exit = _defaults["child_exit"]
