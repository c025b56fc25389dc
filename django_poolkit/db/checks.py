"""Configuration rules of the pooled ORM backend, shared by the system check and the
runtime check in ``DatabaseWrapper.check_settings()``.

- poolkit.E010: ``CONN_MAX_AGE`` is not 0 on an alias using the pooled backend.
- poolkit.E011: ``OPTIONS["pool"]`` (Django's own psycopg pool) on an alias using the pooled
  backend.
- poolkit.E012: Celery's ``CELERY_DB_REUSE_MAX`` set while an alias uses the pooled backend.
- poolkit.W010: ``pgbouncer="transaction"`` with ``OPTIONS["assume_role"]``.
- poolkit.W011: ``pgbouncer`` set and ``statement_timeout`` not None: it cannot be sent.
- poolkit.W012: ``pgbouncer="transaction"`` with a ``reset_on_return`` other than rollback.
- poolkit.W013: ``pgbouncer="transaction"`` overrides ``OPTIONS["prepare_threshold"]`` or
  ``DISABLE_SERVER_SIDE_CURSORS=False``.
- poolkit.W014: ``pgbouncer`` set and ``OPTIONS["options"]`` given: PgBouncer refuses or drops
  the ``options`` startup parameter.
- poolkit.W015: the pooled backend is an ENGINE but ``django_poolkit`` is not in
  ``INSTALLED_APPS``. The backend imports this module (Django loads the default alias's
  backend while it imports the models), so the check is registered even then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning

from ..check_ids import (
    E_CELERY_REUSE,
    E_CONN_MAX_AGE,
    E_NATIVE_POOL,
    W_APP_NOT_INSTALLED,
    W_PGBOUNCER_OPTIONS,
    W_PGBOUNCER_OVERRIDE,
    W_PGBOUNCER_RESET,
    W_PGBOUNCER_ROLE,
    W_PGBOUNCER_TIMEOUT,
)
from ..engines.params import POOLED_BACKEND
from ..exceptions import Problem

__all__ = [
    "backend_problems",
    "check_app_installed",
    "check_celery_reuse",
    "check_pgbouncer",
    "check_pooled_backend",
    "pgbouncer_warnings",
]

def backend_problems(alias: str, database: Mapping[str, Any]) -> list[Problem]:
    """What is wrong with one ``DATABASES`` entry that uses the pooled backend."""
    problems = []
    path = f'DATABASES["{alias}"]'
    max_age = database.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        problems.append(Problem(
            f'{path}["CONN_MAX_AGE"]',
            f"must be 0 with {POOLED_BACKEND}, got {max_age!r}: the pool keeps connections "
            "open, and a connection Django kept would be held outside the pool's budget",
            'Set "CONN_MAX_AGE": 0. To keep connections warm, size the pool (pool_size) and '
            "set pool_recycle for their maximum age.", E_CONN_MAX_AGE))
    native = (database.get("OPTIONS") or {}).get("pool")
    if native:
        problems.append(Problem(
            f'{path}["OPTIONS"]["pool"]',
            f"Django's own connection pool cannot be combined with {POOLED_BACKEND}: two "
            "pools cannot both own the connections",
            'Remove "pool" from OPTIONS and configure the pool in '
            f'POOLKIT["DATABASES"]["{alias}"]{_native_pool_translation(native)}.',
            E_NATIVE_POOL))
    return problems


# psycopg_pool.ConnectionPool's options (Django's OPTIONS["pool"]) and poolkit's knobs.
_NATIVE_POOL_KNOBS = {"timeout": "pool_timeout", "max_lifetime": "pool_recycle"}


def _native_pool_translation(native: Any) -> str:
    """The POOLKIT equivalent of Django's pool options, for the E011 hint (empty when there
    is nothing to translate, as for ``"pool": True``)."""
    if not isinstance(native, Mapping):
        return ""
    knobs: dict[str, Any] = {}
    min_size, max_size = native.get("min_size"), native.get("max_size")
    if isinstance(min_size, int):
        knobs["pool_size"] = min_size
        if isinstance(max_size, int) and max_size >= min_size:
            knobs["max_overflow"] = max_size - min_size
    elif isinstance(max_size, int):
        knobs["pool_size"] = max_size
        knobs["max_overflow"] = 0
    for option, knob in _NATIVE_POOL_KNOBS.items():
        if isinstance(native.get(option), int | float):
            knobs[knob] = int(native[option]) if knob == "pool_recycle" else native[option]
    if not knobs:
        return ""
    return ", for these options: " + ", ".join(f'"{k}": {v!r}' for k, v in knobs.items())


@register()
def check_pooled_backend(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report :func:`backend_problems` for every alias on the pooled backend."""
    from django.conf import settings

    messages: list[CheckMessage] = []
    for alias, database in settings.DATABASES.items():
        if database.get("ENGINE") != POOLED_BACKEND:
            continue
        for problem in backend_problems(alias, database):
            messages.append(Error(f"{problem.path}: {problem.message}.", hint=problem.hint,
                                  id=problem.check_id))
    return messages


@register()
def check_celery_reuse(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """poolkit.E012: ``CELERY_DB_REUSE_MAX`` (read by Celery's Django fixup from Django's
    settings) makes a worker skip its close after each task, so a pooled connection stays
    checked out across tasks: what E010 forbids for ``CONN_MAX_AGE``."""
    from django.conf import settings

    reuse_max = getattr(settings, "CELERY_DB_REUSE_MAX", None)
    pooled = [alias for alias, database in settings.DATABASES.items()
              if database.get("ENGINE") == POOLED_BACKEND]
    if not reuse_max or not pooled:
        return []
    aliases = ", ".join(f'"{alias}"' for alias in pooled)
    return [Error(
        f"CELERY_DB_REUSE_MAX={reuse_max!r}: Celery's workers keep each task's connection for "
        f"the next tasks instead of returning it to the pool ({aliases} "
        f"{'uses' if len(pooled) == 1 else 'use'} {POOLED_BACKEND}); after one idle kill or "
        "server restart the tasks of each worker process fail until Celery recycles it.",
        hint="Remove CELERY_DB_REUSE_MAX: the pool keeps connections open between tasks, and "
             "its pre-ping replaces a dead one at the next task's checkout.",
        id=E_CELERY_REUSE)]


def pgbouncer_warnings(alias: str, database: Mapping[str, Any], pool: Any) -> list[Problem]:
    """What poolkit cannot do for ``alias`` behind PgBouncer (``pool``: its PoolSettings)."""
    mode = pool.pgbouncer
    if mode is None:
        return []
    found = []
    path = f'POOLKIT["DATABASES"]["{alias}"]'
    options = database.get("OPTIONS") or {}
    transaction = mode == "transaction"
    if transaction and options.get("assume_role"):
        found.append(Problem(
            f'DATABASES["{alias}"]["OPTIONS"]["assume_role"]',
            "SET ROLE does not hold behind PgBouncer in transaction mode: the next transaction "
            "may run on another server connection, and this one keeps the role for its next "
            "client", "Connect as the role itself (USER), or use PgBouncer in session mode.",
            W_PGBOUNCER_ROLE))
    if pool.statement_timeout is not None:
        found.append(Problem(
            f"{path}: statement_timeout={pool.statement_timeout}",
            "cannot be applied behind PgBouncer: poolkit sends it in the startup options, "
            "which PgBouncer refuses or drops",
            "Set statement_timeout to None here and enforce a limit on the server (ALTER ROLE "
            "... SET statement_timeout) or with PgBouncer's query_timeout.",
            W_PGBOUNCER_TIMEOUT))
    if transaction and (pool.reset_on_return or "rollback") != "rollback":
        found.append(Problem(
            f"{path}: reset_on_return={pool.reset_on_return!r}",
            "resets whichever server connection PgBouncer picks for that statement, not the "
            "session this client used", 'Use "rollback"; PgBouncer owns the server sessions.',
            W_PGBOUNCER_RESET))
    overridden = []
    if transaction and options.get("prepare_threshold") is not None:
        overridden.append(f'OPTIONS["prepare_threshold"]={options["prepare_threshold"]!r}')
    if transaction and database.get("DISABLE_SERVER_SIDE_CURSORS") is False:
        overridden.append("DISABLE_SERVER_SIDE_CURSORS=False")
    if overridden:
        found.append(Problem(
            f'DATABASES["{alias}"]', f"{' and '.join(overridden)} ignored: PgBouncer in "
            "transaction mode needs prepare_threshold=None and no server-side cursors",
            "Remove the setting; poolkit applies what transaction pooling needs.",
            W_PGBOUNCER_OVERRIDE))
    if options.get("options"):
        found.append(Problem(
            f'DATABASES["{alias}"]["OPTIONS"]["options"]',
            "PgBouncer fails the connection on the options startup parameter, or drops it "
            "(ignore_startup_parameters = options)",
            "Move these settings to the server (ALTER ROLE/DATABASE ... SET).",
            W_PGBOUNCER_OPTIONS))
    return found


@register()
def check_pgbouncer(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn, per alias with ``pgbouncer`` set, about what poolkit cannot support there."""
    from django.conf import settings

    from ..conf import get_settings
    from ..exceptions import PoolkitConfigurationError

    try:
        config = get_settings()
    except PoolkitConfigurationError:
        return []  # poolkit.E0xx report it
    messages: list[CheckMessage] = []
    for alias, database in settings.DATABASES.items():
        pool = config.for_alias(alias)
        if pool is None:
            continue
        for problem in pgbouncer_warnings(alias, database, pool):
            messages.append(CheckWarning(f"{problem.path}: {problem.message}.", hint=problem.hint,
                                    id=problem.check_id))
    return messages


@register()
def check_app_installed(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W015: the pooled backend without the app, which wires what the backend cannot."""
    from django.apps import apps
    from django.conf import settings

    if apps.is_installed("django_poolkit"):
        return []
    aliases = [f'DATABASES["{alias}"]' for alias, database in settings.DATABASES.items()
               if database.get("ENGINE") == POOLED_BACKEND]
    if not aliases:
        return []
    return [CheckWarning(
        f"{', '.join(aliases)} {'uses' if len(aliases) == 1 else 'use'} {POOLED_BACKEND}, "
        'but "django_poolkit" is not in INSTALLED_APPS: POOLKIT is not checked, the pools '
        "are not closed at exit, and a forked worker (gunicorn --preload, Celery prefork) "
        "keeps its parent's pools.",
        hint='Add "django_poolkit" to INSTALLED_APPS.', id=W_APP_NOT_INSTALLED)]
