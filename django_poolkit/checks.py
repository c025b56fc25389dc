"""System checks. Ids are API: never reused, every one documented in docs/checks.rst.

- poolkit.E001: a section of ``POOLKIT`` has the wrong type.
- poolkit.E002: an unknown key (the message suggests the nearest valid one).
- poolkit.E003: a value of the wrong type or out of range (the message states the rule).
- poolkit.E004: ``POOLKIT["DATABASES"]`` names an alias ``settings.DATABASES`` lacks.
- poolkit.E005: settings that cannot be combined.
- poolkit.E006: a ``POOLKIT_*`` environment variable is unknown or invalid.
- poolkit.E007: a ``POOLKIT["ENGINES"]`` entry has no usable ``url``.
- poolkit.W001: a ``POOLKIT["ENGINES"]`` url (or ``POOLKIT_<NAME>__URL``) holds a password
  that Django's error reports would show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, register

from .check_ids import (
    E_DEPLOYMENT_UNKNOWN_POOL,
    W_BOUNCER_BUDGET,
    W_BUDGET_EXCEEDED,
    W_BUDGET_UNKNOWN,
    W_NO_MIDDLEWARE,
    W_NO_MIDDLEWARE_TIMEOUT,
    W_NO_ROUTER,
    W_THREADS_OVER_POOL,
    W_UNPOOLED_REPLICA,
    W_URL_SECRET,
)
from .conf import validate

__all__ = ["check_poolkit_settings"]


@register()
def check_poolkit_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report every configuration problem as an error, the same ones ``get_engine()`` would
    raise, without a traceback."""
    return [
        Error(_sentence(f"{problem.path}: {problem.message}"), hint=problem.hint,
              id=problem.check_id)
        for problem in validate()
    ]


@register()
def check_url_passwords(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W001: a password inside an ENGINES url, where Django's error reports show it (they
    mask keys named like PASSWORD, not a part of a URL)."""
    from django.conf import settings
    from django.core.checks import Warning as CheckWarning
    from django.utils.module_loading import import_string

    from .conf import get_settings
    from .debug import PoolkitExceptionReporterFilter, url_holds_password
    from .exceptions import PoolkitConfigurationError

    reporter = settings.DEFAULT_EXCEPTION_REPORTER_FILTER
    reporter_class = import_string(reporter) if isinstance(reporter, str) else reporter
    if isinstance(reporter_class, type) and issubclass(reporter_class,
                                                       PoolkitExceptionReporterFilter):
        return []
    try:
        config = get_settings()
    except PoolkitConfigurationError:
        return []  # check_poolkit_settings reports it
    prefix = config.env_prefix or "POOLKIT_"

    def variable(name: str) -> str:
        return prefix + "".join(char if char.isalnum() else "_" for char in name).upper()

    return [CheckWarning(
        f'The url of POOLKIT["ENGINES"]["{name}"] holds a password: Django\'s error reports '
        "(DEBUG pages, the e-mails of AdminEmailHandler) show it, since they mask keys named "
        "like PASSWORD, not a part of a URL.",
        hint=f'Give it as POOLKIT["ENGINES"]["{name}"]["password"] (or the variable '
             f"{variable(name)}__PASSWORD), or set DEFAULT_EXCEPTION_REPORTER_FILTER = "
             '"django_poolkit.debug.PoolkitExceptionReporterFilter".', id=W_URL_SECRET)
        for name, pool in config.pools.items()
        if pool.url is not None and url_holds_password(pool.url)]


def _sentence(text: str) -> str:
    """End the message with a full stop, unless it already ends a question (did you mean)."""
    return text if text.endswith(("?", ".", "!")) else f"{text}."


# Connection budget (django_poolkit.ops.deployment). poolkit.E040-E042 come from
# validate() above: POOLKIT["DEPLOYMENT"] not a dict, unknown key, bad value.
# - poolkit.E043: POOLKIT["DEPLOYMENT"]["databases"] names a pool nobody configured.
# - poolkit.W040: the deployment's pools can open more connections than the server accepts
#   (a Tags.database check: runs with ``manage.py check --database ALIAS``).
# - poolkit.W041: the budget check could not read the server's max_connections.
# - poolkit.W042: a process has more request threads than a pool has connections.
# - poolkit.W043: behind PgBouncer, the pools go beyond a limit that refuses connections
#   (the running max_client_conn, or the server's max_connections behind PgBouncer's pools).

from django.core import checks as django_checks  # noqa: E402  (kept with its section)


def _deployment_and_settings() -> tuple[Any, Any] | None:
    """The declared deployment and the settings, or None (nothing declared, or settings
    that check_poolkit_settings already reports as errors)."""
    from .conf import get_settings
    from .exceptions import PoolkitConfigurationError
    from .ops.deployment import deployment_settings

    try:
        deployment = deployment_settings()
        config = get_settings()
    except PoolkitConfigurationError:
        return None
    return None if deployment is None else (deployment, config)


@register()
def check_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E043 and W042: the declared deployment against the configured pools (no I/O)."""
    from .ops.deployment import check_pool_names

    found = _deployment_and_settings()
    if found is None:
        return []
    deployment, config = found
    messages: list[CheckMessage] = []
    for name, suggestion in check_pool_names(deployment, config):
        messages.append(Error(
            f'POOLKIT["DEPLOYMENT"]["databases"] names the unknown pool "{name}"'
            + (f'; did you mean "{suggestion}"?' if suggestion else "."),
            hint="Pools are the aliases of settings.DATABASES and the names of "
                 'POOLKIT["ENGINES"]: ' + ", ".join(f'"{n}"' for n in config.pools) + ".",
            id=E_DEPLOYMENT_UNKNOWN_POOL))
    for alias, pool in config.pools.items():
        if deployment.databases is not None and alias not in deployment.databases:
            continue
        capacity = pool.capacity
        if capacity is not None and capacity < deployment.threads:
            messages.append(django_checks.Warning(
                f'Pool "{alias}" opens at most {capacity} connections per process '
                f"(pool_size {pool.pool_size} + max_overflow {pool.max_overflow}), but each "
                f"process runs {deployment.threads} request threads.",
                hint="Under full load the other threads wait pool_timeout seconds and fail "
                     "with PoolTimeout: raise pool_size or max_overflow to at least "
                     f"{deployment.threads}, or run fewer threads (manage.py poolplan).",
                id=W_THREADS_OVER_POOL))
    return messages


@register(django_checks.Tags.database)
def check_connection_budget(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W040/W041: every pool of every process against the server's ``max_connections``.

    Reads the servers of the aliases Django passes (``check --database``; on Django 6.1
    ``check --tag database`` passes every alias), each over one short-lived connection
    outside the pools; a plain ``manage.py check`` runs no database check. Without a
    ``POOLKIT["DEPLOYMENT"]`` there is nothing to add up and nothing is read.
    """
    from .exceptions import ServerUnreachable
    from .ops.bouncer import read_bouncer
    from .ops.deployment import server_of
    from .ops.plan import build_plan
    from .ops.serverinfo import read_limits

    found = _deployment_and_settings()
    if not databases or found is None:
        return []
    deployment, config = found
    selected = {server_of(alias, config.pools[alias]) for alias in databases
                if alias in config.pools}

    def limits(alias: str) -> Any:
        if server_of(alias, config.pools[alias]) not in selected:
            raise ServerUnreachable("not selected")
        return read_limits(alias)

    def bouncer(alias: str) -> Any:
        if server_of(alias, config.pools[alias]) not in selected:
            raise ServerUnreachable("not selected")
        return read_bouncer(alias)

    plan = build_plan(deployment, config, limits, bouncer=bouncer)
    messages: list[CheckMessage] = []
    for behind in plan.bouncers:
        if behind.pgbouncer not in selected:
            continue
        if behind.error is not None:
            messages.append(django_checks.Warning(
                f"Cannot check the connection budget behind PgBouncer {behind.pgbouncer}: "
                f"{behind.error}.",
                hint="Run the check where PgBouncer's admin console is reachable (the "
                     "pgbouncer_admin setting says where it is, with a user in its "
                     "stats_users).", id=W_BUDGET_UNKNOWN))
        elif not behind.fits:
            refused = [limit for limit in behind.limits if limit.effect == "refused"
                       and limit.hit]
            clients = ("an unlimited number of client connections (max_overflow=-1)"
                       if behind.clients is None else f"{behind.clients} client connections")
            messages.append(django_checks.Warning(
                f"The deployment ({deployment.hosts} host(s) x {deployment.workers} "
                f"worker(s)) can open {clients} to PgBouncer {behind.pgbouncer} "
                f"({', '.join(behind.aliases)}), beyond "
                + ", ".join(f"{limit.name} {limit.value} (admits {limit.admits}, asked "
                            f"{_text(limit.demand)})" for limit in refused)
                + ": those connections are refused.",
                hint="Raise max_client_conn (or max_connections), or shrink the pools "
                     "(pool_size + max_overflow per process): run manage.py poolplan for "
                     "the limits in the order they are hit.", id=W_BOUNCER_BUDGET))
    for budget in plan.servers:
        if budget.server not in selected:
            continue
        if budget.limits is None:
            messages.append(django_checks.Warning(
                f"Cannot check the connection budget of {budget.server}: {budget.error}.",
                hint="Run the check where the database is reachable, or plan offline with "
                     "manage.py poolplan --max-connections N.", id=W_BUDGET_UNKNOWN))
        elif not budget.fits:
            available = budget.limits.available
            opened = ("an unlimited number of connections (max_overflow=-1)"
                      if budget.configured_total is None
                      else f"up to {budget.configured_total} connections")
            messages.append(django_checks.Warning(
                f"The deployment ({deployment.hosts} host(s) x {deployment.workers} "
                f"worker(s)) can open {opened} to {budget.server} "
                f"({', '.join(budget.aliases)}), but the server accepts {available} "
                f"(max_connections {budget.limits.max_connections} minus reserved slots).",
                hint=(f"The recommended pools need {budget.recommended_total}: "
                      if budget.recommended_fits else
                      f"Even the recommended pools need {budget.recommended_total}: put "
                      "PgBouncer in transaction mode in front of the server; ")
                + "run manage.py poolplan for the sizes and settings.",
                id=W_BUDGET_EXCEEDED))
    return messages


def _text(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


# Routing wiring (django_poolkit.routers, django_poolkit.middleware):
# - poolkit.W020: POOLKIT["ROUTING"] declares replicas but no DATABASE_ROUTERS entry is a
#   PrimaryReplicaRouter, so every read still goes to the default database.
# - poolkit.W021: replicas are routed but PoolkitMiddleware is not in MIDDLEWARE, so a client
#   that just wrote may read stale data on its next request.
# - poolkit.W022: pools serve requests (the pooled backend or POOLKIT["ENGINES"]) but
#   PoolkitMiddleware is not in MIDDLEWARE, so a pool timeout is a 500. Django has no
#   documented hook that turns a view's exception into a response outside a middleware
#   (handler500 is the project's URLconf's), so the check says it instead.
# - poolkit.W023: a replica the router reads from is not on the pooled backend.


def _installed(entries: Sequence[Any], wanted: type) -> bool:
    """Whether a DATABASE_ROUTERS or MIDDLEWARE list holds ``wanted`` (or a subclass), given
    as a dotted path, a class or an instance. An entry that cannot be imported is Django's
    own error to report, not ours."""
    from django.utils.module_loading import import_string

    for entry in entries:
        if isinstance(entry, str):
            try:
                entry = import_string(entry)
            except ImportError:
                continue
        if isinstance(entry, wanted) or (isinstance(entry, type) and issubclass(entry, wanted)):
            return True
    return False


@register()
def check_routing_wiring(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W020/W021: replicas configured without the router or the middleware that use them."""
    from django.conf import settings
    from django.core.checks import Warning as CheckWarning

    from .exceptions import PoolkitConfigurationError
    from .middleware import PoolkitMiddleware
    from .routers import PrimaryReplicaRouter
    from .routing.settings import routing_settings

    try:
        routing = routing_settings()
    except PoolkitConfigurationError:
        return []  # check_poolkit_settings reports it (poolkit.E020-E026)
    if routing is None or not any(cluster.replicas for cluster in routing.clusters.values()):
        return _without_middleware()
    if not _installed(settings.DATABASE_ROUTERS, PrimaryReplicaRouter):
        return [CheckWarning(
            'POOLKIT["ROUTING"] declares replicas, but DATABASE_ROUTERS has no '
            "PrimaryReplicaRouter: every read still goes to the primary.",
            hint='Add "django_poolkit.routers.PrimaryReplicaRouter" to DATABASE_ROUTERS.',
            id=W_NO_ROUTER), *_without_middleware()]
    messages = _unpooled_replicas(routing)
    if not _installed(settings.MIDDLEWARE, PoolkitMiddleware):
        messages.append(CheckWarning(
            "Reads are routed to replicas, but PoolkitMiddleware is not in MIDDLEWARE: a "
            "client that just wrote may read stale data on its next request, and a pool "
            "timeout is a 500 instead of a 503.",
            hint='Add "django_poolkit.middleware.PoolkitMiddleware" near the top of '
                 "MIDDLEWARE, above the middleware that reads the database.",
            id=W_NO_MIDDLEWARE))
    return messages


def _unpooled_replicas(routing: Any) -> list[CheckMessage]:
    """W023: a routed replica on another backend than the pooled one (Django's stock
    backend, as the replicas quick start left it): its reads bypass the replica's pool."""
    from django.conf import settings
    from django.core.checks import Warning as CheckWarning

    from .engines.params import POOLED_BACKEND

    messages: list[CheckMessage] = []
    for cluster in routing.clusters.values():
        for replica in cluster.replicas:
            engine = settings.DATABASES.get(replica.alias, {}).get("ENGINE")
            if engine == POOLED_BACKEND:
                continue
            messages.append(CheckWarning(
                f'DATABASES["{replica.alias}"], a replica of cluster "{cluster.name}", uses '
                f'ENGINE "{engine}", not the pooled backend: the reads routed to it bypass '
                "its pool (with CONN_MAX_AGE 0, each request opens a new server connection), "
                "and the dashboard shows that pool idle.",
                hint=f'Set DATABASES["{replica.alias}"]["ENGINE"] = "{POOLED_BACKEND}" and '
                     '"CONN_MAX_AGE": 0, as for the primary.', id=W_UNPOOLED_REPLICA))
    return messages


def _without_middleware() -> list[CheckMessage]:
    """W022: pools that serve requests, and no PoolkitMiddleware to answer their timeouts."""
    from django.conf import settings
    from django.core.checks import Warning as CheckWarning

    from .conf import get_settings
    from .engines.params import POOLED_BACKEND
    from .exceptions import PoolkitConfigurationError
    from .middleware import PoolkitMiddleware

    if _installed(settings.MIDDLEWARE, PoolkitMiddleware):
        return []
    pooled = [f'DATABASES["{alias}"]' for alias, database in settings.DATABASES.items()
              if database.get("ENGINE") == POOLED_BACKEND]
    try:
        pooled += [f'POOLKIT["ENGINES"]["{name}"]' for name, pool in get_settings().pools.items()
                   if pool.url is not None]
    except PoolkitConfigurationError:
        pass  # check_poolkit_settings reports it; the backend's aliases are known anyway
    if not pooled:
        return []
    return [CheckWarning(
        f"{', '.join(pooled)} {'is' if len(pooled) == 1 else 'are'} pooled, but "
        "PoolkitMiddleware is not in MIDDLEWARE: a request that waits pool_timeout for a "
        "connection fails with a 500 instead of a 503 with Retry-After.",
        hint='Add "django_poolkit.middleware.PoolkitMiddleware" near the top of MIDDLEWARE, '
             "above the middleware that reads the database (or silence poolkit.W022 in a "
             "project that serves no HTTP requests).", id=W_NO_MIDDLEWARE_TIMEOUT)]
