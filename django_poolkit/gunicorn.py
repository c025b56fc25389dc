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
  importing, and the ORM's connections: the workers would never use those connections (the
  fork hook drops them in each child without touching their sockets), so they would only
  hold server slots. Without ``--preload`` the master never imports the app (nor the
  ``wsgi.py`` that sets ``DJANGO_SETTINGS_MODULE``), has no pools, and the hook does
  nothing.
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

Without these hooks, a preloading master lets go all the same: poolkit's at-fork hook
(``apps.py``) calls :func:`release_in_master` before each fork of gunicorn's master, which
is recognised by its ``SIGCHLD`` handler (a method of gunicorn's ``Arbiter``).

``DJANGO_SETTINGS_MODULE`` comes from where gunicorn users set it: the app's ``wsgi.py``
(``os.environ.setdefault``), ``--env DJANGO_SETTINGS_MODULE=...`` or ``raw_env`` in a config
file (gunicorn puts both in the environment before any hook runs).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["child_exit", "hooks", "in_arbiter", "post_worker_init", "release_in_master",
           "when_ready", "worker_exit"]

logger = logging.getLogger(__name__)


#: gunicorn's exit status for "App failed to load": the master stops instead of respawning.
APP_LOAD_ERROR = 4


def _django_ready() -> bool:
    """Whether this process has set Django up (the app was imported)."""
    from django.apps import apps

    return apps.ready


def in_arbiter() -> bool:
    """Whether this process is gunicorn's master: its ``SIGCHLD`` handler is a method of
    gunicorn's ``Arbiter`` (installed before it forks any worker; a worker resets it)."""
    arbiter = sys.modules.get("gunicorn.arbiter")
    if arbiter is None:
        return False
    handler = signal.getsignal(signal.SIGCHLD)
    return isinstance(getattr(handler, "__self__", None), arbiter.Arbiter)


def _close_everything() -> list[str]:
    """Close this thread's ORM connections (a query at import leaves one checked out: the
    master has no request boundary) and then every pool; returns the pools closed."""
    from django.db import connections

    from .lifecycle import shutdown

    connections.close_all()
    return list(shutdown(timeout=0).pools)


def release_in_master() -> None:
    """Before gunicorn's master forks (``--preload``, with or without these hooks): close the
    connections it opened while loading the app, which no worker uses. Called by poolkit's
    at-fork hook; elsewhere, and in a master that has nothing open, it does nothing."""
    if not (in_arbiter() and _django_ready()):
        return
    from django.db import connections

    from .conf import get_settings
    from .engines import engine_registry

    pools = get_settings().pools
    if not any(engine_registry.built(alias, kind) is not None
               for alias in pools for kind in ("sync", "async")) and not any(
            wrapper.connection is not None for wrapper in connections.all(
                initialized_only=True)):
        return  # nothing open (every fork after the first)
    closed = _close_everything()
    logger.info("gunicorn master %s closed the pools it opened while loading the app (%s)",
                os.getpid(), ", ".join(closed))


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
        if validate:
            _fail_fast(server.log)
        closed = _close_everything()
        if closed:
            server.log.info("poolkit: master closed the pools it opened while loading "
                            "the app (%s)", ", ".join(closed))

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
