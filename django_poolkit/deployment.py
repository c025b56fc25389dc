"""The deployment around the pools: how many processes open them, what the server allows, and
whether the two fit.

A pool's size is per process; the server's ``max_connections`` is shared by every process of
every host. ``POOLKIT["DEPLOYMENT"]`` declares the process model once::

    POOLKIT = {"DEPLOYMENT": {"hosts": 2, "workers": 4, "threads": 8}}

and three readers use it: the ``poolkit.W040`` system check (``manage.py check --database
default``), ``manage.py poolplan`` (which also takes every value as an option) and the docs'
budget table. The arithmetic is :mod:`django_poolkit.sizing`; this module adds the settings,
the grouping of aliases by server, and the short-lived, bounded server queries shared with
``manage.py poolstatus``.

Server queries never use an application pool: they open one connection of their own with a
short ``connect_timeout``, named ``poolkit-ops:<alias>:<pid>``, ask in a read-only transaction
with a short ``statement_timeout``, and wait for the answer in a daemon thread for a bounded
time, so a stopped server cannot hang a command.
Errors are reduced to fixed phrases (:func:`django_poolkit.health.describe_error`); a
password never leaves ``connect_args``.
"""

from __future__ import annotations

import difflib
import math
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from django.db import connections

from . import sizing
from .conf import PoolkitSettings, PoolSettings, Report, get_settings, known_items, parse_url
from .engines.params import spec_for_alias, spec_for_url
from .health import describe_error
from .serverinfo import ROLE_AND_LAG_SQL

__all__ = [
    "PLAN_FORMULAS",
    "SETTING_RULES",
    "Deployment",
    "Plan",
    "PoolPlan",
    "ServerBudget",
    "ServerLimits",
    "ServerSnapshot",
    "build_plan",
    "deployment_settings",
    "parse",
    "read_limits",
    "read_snapshot",
    "server_of",
]


# Check ids, never reused (see checks.py).
E_NOT_A_DICT = "poolkit.E040"  # POOLKIT["DEPLOYMENT"] is not a dict
E_UNKNOWN_KEY = "poolkit.E041"  # an unknown key in POOLKIT["DEPLOYMENT"]
E_BAD_VALUE = "poolkit.E042"  # a value of the wrong type or out of range
E_UNKNOWN_ALIAS = "poolkit.E043"  # "databases" names a pool nobody configured

#: What each ``POOLKIT["DEPLOYMENT"]`` key accepts, for messages and docs.
SETTING_RULES: dict[str, str] = {
    "hosts": "an integer >= 1 (machines or containers running the app)",
    "workers": "an integer >= 1 (processes per host, e.g. gunicorn --workers)",
    "threads": "an integer >= 1 (request threads per process, e.g. gunicorn --threads)",
    "async_concurrency": "an integer >= 1 (concurrent async requests per process), or None",
    "queries_per_request": "a number > 0 (average queries per request, async formula)",
    "cores": "an integer >= 1 (CPU cores per host), or None for os.cpu_count()",
    "spindles": "an integer >= 0 (disks a query waits on; 0 for SSDs)",
    "extra_connections": "an integer >= 0 (connections outside the pools: cron, shells, "
                         "migrations, probes, other apps)",
    "databases": "a list of pool names the deployment uses, or None for every pool",
}


@dataclass(frozen=True)
class Deployment:
    """``POOLKIT["DEPLOYMENT"]``, validated: the process model of one deployment.

    ``processes`` is ``workers x hosts``; an alias's async pool is counted only when
    ``async_concurrency`` says the processes serve async requests.
    """

    hosts: int = 1
    workers: int = 1
    threads: int = 1
    async_concurrency: int | None = None
    queries_per_request: float = 1.0
    cores: int | None = None
    spindles: int = 0
    extra_connections: int = 0
    databases: tuple[str, ...] | None = None

    @property
    def processes(self) -> int:
        """Processes across every host."""
        return self.workers * self.hosts

    @property
    def effective_cores(self) -> int:
        """``cores``, or the seed's ``os.cpu_count()`` default."""
        return self.cores or sizing.default_cores()


def _integer(item: Any, minimum: int) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= minimum


def _value(key: str, item: Any) -> Any:
    """The checked value of one key; ValueError when it breaks the rule."""
    if key in ("hosts", "workers", "threads") and _integer(item, 1):
        return item
    if key in ("spindles", "extra_connections") and _integer(item, 0):
        return item
    if key in ("async_concurrency", "cores") and (item is None or _integer(item, 1)):
        return item
    if key == "queries_per_request" and isinstance(item, (int, float)) and not isinstance(
            item, bool) and math.isfinite(item) and item > 0:
        return float(item)
    if key == "databases" and (item is None or (
            isinstance(item, (list, tuple)) and all(isinstance(name, str) for name in item))):
        return None if item is None else tuple(item)
    raise ValueError(key)


def parse(value: Any, databases: Mapping[str, Any], report: Report) -> Deployment | None:
    """Validate ``POOLKIT["DEPLOYMENT"]`` (a ``conf.SECTION_PARSERS`` parser).

    None when the section is absent: the budget check then has nothing to check. Every
    problem goes to ``report``; a wrong key keeps its default so the others are still checked.
    Pool names in ``databases`` are checked by the W040 check, which sees ``ENGINES`` too.
    """
    base = 'POOLKIT["DEPLOYMENT"]'
    if value is None:
        return None
    if not isinstance(value, Mapping):
        report(base, f"must be a dict, got {type(value).__name__}",
               'Write {"hosts": 2, "workers": 4, "threads": 8}.', E_NOT_A_DICT)
        return None
    found: dict[str, Any] = {}
    for key, item, path, rule in known_items(value, base, SETTING_RULES, report,
                                             E_UNKNOWN_KEY):
        try:
            found[key] = _value(key, item)
        except ValueError:
            report(path, f"must be {rule}, got {item!r}",
                   "Describe the deployment as it runs in production.", E_BAD_VALUE)
    return Deployment(**found)


def check_pool_names(deployment: Deployment, config: PoolkitSettings) -> list[tuple[str, str]]:
    """``(name, suggestion)`` for every name in ``databases`` that no pool has."""
    unknown = []
    for name in deployment.databases or ():
        if name not in config.pools:
            match = difflib.get_close_matches(name, list(config.pools), n=1, cutoff=0.6)
            unknown.append((name, match[0] if match else ""))
    return unknown


def deployment_settings() -> Deployment | None:
    """The validated ``POOLKIT["DEPLOYMENT"]``, or None when the project declares none."""
    section = get_settings().sections.get("DEPLOYMENT")
    return section if isinstance(section, Deployment) else None


def server_of(alias: str, pool: PoolSettings) -> str | None:
    """``host:port`` of the PostgreSQL server a pool connects to, or None for SQLite (or a
    vendor poolkit does not pool). Pools on one server share its ``max_connections``."""
    if pool.url is not None:
        url = parse_url(pool.url)
        if url.get_backend_name() != "postgresql":
            return None
        return f"{url.host or 'localhost'}:{url.port or 5432}"
    entry = connections.settings.get(alias) or {}
    engine = str(entry.get("ENGINE", ""))
    if "postgres" not in engine and "postgis" not in engine:
        return None
    return f"{entry.get('HOST') or 'localhost'}:{entry.get('PORT') or 5432}"


def _connect_args(alias: str, pool: PoolSettings, timeout: float) -> dict[str, Any]:
    spec = spec_for_url(alias, pool.url, pool) if pool.url else spec_for_alias(alias, pool)
    params = dict(spec.connect_args)
    params.update({
        "host": spec.url.host, "port": spec.url.port, "user": spec.url.username,
        "dbname": spec.url.database,
    })
    params = {key: value for key, value in params.items() if value is not None}
    # No startup options of our own: PgBouncer rejects or ignores them. The queries run in a
    # read-only transaction with a local statement_timeout instead (_guard).
    params["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's minimum is 2 s
    params["application_name"] = f"poolkit-ops:{alias}:{os.getpid()}"[:63]
    params.pop("prepare_threshold", None)
    return params


def _bounded(work: Callable[[], Any], timeout: float) -> Any:
    """Run ``work`` in a daemon thread and return its result, or raise TimeoutError after
    ``timeout`` seconds (libpq's own timeouts do not cover a server that stopped answering
    in the middle of a query)."""
    answers: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            answers.put((True, work()))
        except BaseException as error:  # handed to the caller, who re-raises it
            answers.put((False, error))

    threading.Thread(target=run, name="poolkit-ops-query", daemon=True).start()
    try:
        ok, result = answers.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError("the server did not answer in time") from None
    if not ok:
        raise result
    return result


@dataclass(frozen=True)
class ServerLimits:
    """How many connections a server accepts: ``available`` is what ordinary roles get."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0
    server_version: str = ""

    @property
    def available(self) -> int:
        """``max_connections`` minus the slots reserved for superusers and (PostgreSQL 16+)
        roles with ``pg_use_reserved_connections``."""
        return max(0, self.max_connections - self.superuser_reserved_connections
                   - self.reserved_connections)


_LIMITS_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       COALESCE(current_setting('reserved_connections', true), '0')::int,
       current_setting('server_version')
"""


# Every client backend holds one of max_connections' slots, whatever database it is in;
# this command's own connection is left out.
_ACTIVITY_SQL = """
SELECT COALESCE(application_name, ''), COALESCE(state, 'unknown'),
       datname = current_database(), count(*)::int
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2, 3
ORDER BY 1, 2
"""

#: States of ``pg_stat_activity.state`` reported on their own; the rest count as ``other``.
STATES = ("active", "idle", "idle in transaction")


@dataclass(frozen=True)
class ApplicationConnections:
    """Connections to one database that share an ``application_name``.

    For poolkit's default name ``poolkit:{alias}:{host}:{pid}``, ``alias``, ``host`` and
    ``pid`` are parsed out so one row is one pool of one process.
    """

    application_name: str
    alias: str | None
    host: str | None
    pid: int | None
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """Every connection of this application name."""
        return self.active + self.idle + self.idle_in_transaction + self.other

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        return {"application_name": self.application_name, "alias": self.alias,
                "host": self.host, "pid": self.pid, "active": self.active, "idle": self.idle,
                "idle_in_transaction": self.idle_in_transaction, "other": self.other,
                "total": self.total}


def _parse_application_name(name: str) -> tuple[str | None, str | None, int | None]:
    parts = name.split(":")
    if len(parts) == 4 and parts[0] == "poolkit" and parts[3].isdigit():
        return parts[1], parts[2], int(parts[3])
    return None, None, None


@dataclass(frozen=True)
class ServerSnapshot:
    """What the server says about one alias's database, covering every process."""

    limits: ServerLimits
    role: Literal["primary", "replica"]
    replay_lag_s: float | None
    applications: tuple[ApplicationConnections, ...]
    client_connections: int  # client backends in every database, this command's excluded

    @property
    def headroom(self) -> int:
        """Slots ordinary roles can still open, server-wide."""
        return max(0, self.limits.available - self.client_connections)

    def by_state(self) -> dict[str, int]:
        """Connections to this database by state (``other`` gathers the rest)."""
        totals = {"active": 0, "idle": 0, "idle_in_transaction": 0, "other": 0}
        for row in self.applications:
            totals["active"] += row.active
            totals["idle"] += row.idle
            totals["idle_in_transaction"] += row.idle_in_transaction
            totals["other"] += row.other
        return totals

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        return {
            "server_version": self.limits.server_version,
            "role": self.role,
            "replay_lag_s": self.replay_lag_s,
            "max_connections": self.limits.max_connections,
            "superuser_reserved_connections": self.limits.superuser_reserved_connections,
            "reserved_connections": self.limits.reserved_connections,
            "available_connections": self.limits.available,
            "client_connections": self.client_connections,
            "headroom": self.headroom,
            "database_connections": self.by_state(),
            "applications": [row.as_dict() for row in self.applications],
        }


def _guard(connection: psycopg.Connection[Any], timeout_ms: int) -> None:
    """Make the open transaction read-only with a ``statement_timeout`` of its own. Both end
    with the transaction: behind PgBouncer in transaction mode a plain ``SET`` would outlive
    it and reach another client, and startup options are not an option there."""
    connection.execute("SET TRANSACTION READ ONLY")
    connection.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),))


def _query_limits(params: dict[str, Any], timeout_ms: int) -> ServerLimits:
    with psycopg.connect(autocommit=True, **params) as connection, connection.transaction():
        _guard(connection, timeout_ms)
        row = connection.execute(_LIMITS_SQL).fetchone()
    assert row is not None
    return ServerLimits(int(row[0]), int(row[1]), int(row[2]), str(row[3]))


def _query_snapshot(params: dict[str, Any], timeout_ms: int) -> ServerSnapshot:
    with psycopg.connect(autocommit=True, **params) as connection, connection.transaction():
        _guard(connection, timeout_ms)
        limits_row = connection.execute(_LIMITS_SQL).fetchone()
        role_row = connection.execute(ROLE_AND_LAG_SQL).fetchone()
        rows = connection.execute(_ACTIVITY_SQL).fetchall()
    assert limits_row is not None
    assert role_row is not None
    counts: dict[str, dict[str, int]] = {}
    clients = 0
    for name, state, here, count in rows:
        clients += count
        if not here:
            continue
        key = state.replace(" ", "_") if state in STATES else "other"
        counts.setdefault(name, {}).setdefault(key, 0)
        counts[name][key] += count
    applications = []
    for name, states in sorted(counts.items()):
        alias, host, pid = _parse_application_name(name)
        applications.append(ApplicationConnections(
            name, alias, host, pid, active=states.get("active", 0), idle=states.get("idle", 0),
            idle_in_transaction=states.get("idle_in_transaction", 0),
            other=states.get("other", 0)))
    standby = bool(role_row[0])
    return ServerSnapshot(
        limits=ServerLimits(int(limits_row[0]), int(limits_row[1]), int(limits_row[2]),
                            str(limits_row[3])),
        role="replica" if standby else "primary",
        replay_lag_s=None if role_row[1] is None else round(float(role_row[1]), 3),
        applications=tuple(applications), client_connections=clients)


class ServerUnreachable(Exception):
    """The server could not be asked; ``str()`` is a fixed phrase, never the driver's text."""


def _ask(alias: str, timeout: float, query: Callable[[dict[str, Any], int], Any]) -> Any:
    pool = get_settings().for_alias(alias)
    if pool is None:
        raise ServerUnreachable("not configured")
    params = _connect_args(alias, pool, timeout)
    timeout_ms = max(1, int(timeout * 1000))
    try:
        # One extra second for the TCP handshake and the connection's own round trips.
        return _bounded(lambda: query(params, timeout_ms),
                        params["connect_timeout"] + timeout + 1)
    except TimeoutError:
        raise ServerUnreachable("no answer in time") from None
    except Exception as error:
        raise ServerUnreachable(describe_error(error)) from None


def read_limits(alias: str, timeout: float = 2.0) -> ServerLimits:
    """``max_connections`` and the reserved slots of ``alias``'s server.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    limits: ServerLimits = _ask(alias, timeout, _query_limits)
    return limits


def read_snapshot(alias: str, timeout: float = 2.0) -> ServerSnapshot:
    """Limits, role, replay lag and every client connection of ``alias``'s server.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    snapshot: ServerSnapshot = _ask(alias, timeout, _query_snapshot)
    return snapshot


@dataclass(frozen=True)
class PoolPlan:
    """One pool of one alias: its configured size and the recommended one, per process."""

    alias: str
    kind: Literal["sync", "async"]
    server: str
    configured: sizing.PoolSize
    origin: str
    recommended: sizing.PoolSize
    rule: str

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        capacity = (None if self.configured.max_overflow < 0
                    else sum(self.configured))
        return {
            "alias": self.alias, "kind": self.kind, "server": self.server,
            "configured": {"pool_size": self.configured.pool_size,
                           "max_overflow": self.configured.max_overflow,
                           "capacity": capacity, "origin": self.origin},
            "recommended": {"pool_size": self.recommended.pool_size,
                            "max_overflow": self.recommended.max_overflow,
                            "capacity": sum(self.recommended), "rule": self.rule},
        }


@dataclass(frozen=True)
class ServerBudget:
    """The whole deployment's connections to one server, configured and recommended.

    Totals are ``per process x processes + extra_connections``; a configured total of None
    means some pool has an unlimited overflow (``max_overflow=-1``), which no server fits.
    ``limits`` is None when the server could not be read (``error`` says why).
    """

    server: str
    aliases: tuple[str, ...]
    limits: ServerLimits | None
    limits_source: Literal["server", "option"] | None
    error: str | None
    configured_total: int | None
    recommended_total: int
    client_connections: int
    pgbouncer: sizing.PgBouncerSettings | None = None

    @property
    def fits(self) -> bool | None:
        """Whether the configured pools fit the server (None when it is unknown)."""
        if self.limits is None:
            return None
        return self.configured_total is not None and (
            self.configured_total <= self.limits.available)

    @property
    def recommended_fits(self) -> bool | None:
        """Whether the recommended pools fit the server (None when it is unknown)."""
        return None if self.limits is None else self.recommended_total <= self.limits.available

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        limits = self.limits
        pgbouncer = self.pgbouncer
        return {
            "server": self.server, "aliases": list(self.aliases),
            "max_connections": limits.max_connections if limits else None,
            "reserved_connections": (limits.superuser_reserved_connections
                                     + limits.reserved_connections) if limits else None,
            "available_connections": limits.available if limits else None,
            "limits_source": self.limits_source, "error": self.error,
            "configured_total": self.configured_total,
            "configured_fits": self.fits,
            "configured_headroom": (limits.available - self.configured_total
                                    if limits and self.configured_total is not None
                                    else None),
            "recommended_total": self.recommended_total,
            "recommended_fits": self.recommended_fits,
            "recommended_headroom": (limits.available - self.recommended_total
                                     if limits else None),
            "pgbouncer": None if pgbouncer is None else {
                "pool_mode": "transaction",
                "default_pool_size": pgbouncer.default_pool_size,
                "max_db_connections": pgbouncer.max_db_connections,
                "max_client_conn": pgbouncer.max_client_conn,
                "app_pool_size": pgbouncer.app_pool.pool_size,
                "app_max_overflow": pgbouncer.app_pool.max_overflow,
            },
        }


@dataclass(frozen=True)
class Plan:
    """``manage.py poolplan``'s answer: per-pool sizes and per-server budgets."""

    deployment: Deployment
    pools: tuple[PoolPlan, ...]
    servers: tuple[ServerBudget, ...]
    # Pools not counted: no PostgreSQL server (SQLite), or behind PgBouncer.
    skipped: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool | None:
        """False when any server's configured budget is over, None when one is unknown."""
        verdicts = [server.fits for server in self.servers]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        deployment = self.deployment
        return {
            "deployment": {
                "hosts": deployment.hosts, "workers": deployment.workers,
                "threads": deployment.threads, "processes": deployment.processes,
                "async_concurrency": deployment.async_concurrency,
                "queries_per_request": deployment.queries_per_request,
                "cores": deployment.effective_cores, "spindles": deployment.spindles,
                "extra_connections": deployment.extra_connections,
            },
            "pools": [pool.as_dict() for pool in self.pools],
            "servers": [server.as_dict() for server in self.servers],
            "skipped": list(self.skipped),
            "fits": self.fits,
        }


#: Formulas ``poolplan --formula`` accepts for the sync pools: ``threads`` (the default,
#: :func:`sizing.threaded_pool_size`) and two of the seed's own.
PLAN_FORMULAS = ("threads", "cores", "production")


def _recommend(deployment: Deployment, kind: str, configured: sizing.PoolSize,
               preset: str | None, formula: str) -> tuple[sizing.PoolSize, str]:
    cores = deployment.effective_cores
    if preset is not None:
        return sizing.PRESETS[preset], f"preset:{preset}"
    if kind == "sync" and formula == "cores":
        overflow = max(0, configured.max_overflow)
        return (sizing.cores_pool_size(cores, deployment.spindles, overflow),
                f"cores: {cores}x2+{deployment.spindles}, overflow kept")
    if kind == "sync" and formula == "production":
        return sizing.production_pool_size(cores), f"production: {cores}x2+4, overflow alike"
    if kind == "async":
        assert deployment.async_concurrency is not None
        size = sizing.async_pool_size(deployment.async_concurrency,
                                      deployment.queries_per_request, 0)
        return size, (f"async: ceil({deployment.async_concurrency} / "
                      f"{deployment.queries_per_request:g})")
    if deployment.threads > 1 or deployment.async_concurrency is None:
        size = sizing.threaded_pool_size(deployment.threads, cores, deployment.spindles)
        return size, (f"threads: min({deployment.threads}, {cores}x2+{deployment.spindles})"
                      f" + overflow to {deployment.threads}")
    # An async deployment's sync pool serves sync_to_async's single thread per request.
    return sizing.threaded_pool_size(1, cores, deployment.spindles), "threads: 1 (async app)"


def build_plan(
    deployment: Deployment,
    config: PoolkitSettings,
    limits: Callable[[str], ServerLimits],
    *,
    preset: str | None = None,
    formula: str = "threads",
    limits_source: Literal["server", "option"] = "server",
    db_cores: int | None = None,
) -> Plan:
    """Size every pool for ``deployment`` and add up each server's budget.

    ``limits(alias)`` returns the limits of that alias's server (or raises
    :class:`ServerUnreachable`); it is called once per server, with the first alias on it.
    Pure apart from that call, so tests and offline planning pass their own
    (``limits_source="option"`` records that the limits came from the command line).
    ``db_cores`` are the database server's cores, for the PgBouncer pool (default: the
    deployment's ``cores``). ``formula`` (one of :data:`PLAN_FORMULAS`) sizes the sync pools
    unless ``preset`` is given; async pools always use the seed's async formula.
    """
    pools: list[PoolPlan] = []
    skipped: list[str] = []
    by_server: dict[str, list[PoolPlan]] = {}
    for alias, pool in config.pools.items():
        if deployment.databases is not None and alias not in deployment.databases:
            continue
        server = server_of(alias, pool)
        # A pool behind PgBouncer holds PgBouncer's client slots, not the server's.
        if server is None or getattr(pool, "pgbouncer", None) is not None:
            skipped.append(alias)
            continue
        kinds: list[tuple[Literal["sync", "async"], sizing.PoolSize, str]] = [
            ("sync", sizing.PoolSize(pool.pool_size, pool.max_overflow),
             pool.origins.get("pool_size", "default"))]
        if deployment.async_concurrency is not None:
            kinds.append(("async", sizing.PoolSize(pool.async_pool_size,
                                                   pool.async_max_overflow),
                          pool.origins.get("async_pool_size", "default")))
        for kind, configured, origin in kinds:
            recommended, rule = _recommend(deployment, kind, configured, preset, formula)
            plan = PoolPlan(alias, kind, server, configured, origin, recommended, rule)
            pools.append(plan)
            by_server.setdefault(server, []).append(plan)
    servers = [_budget(server, plans, deployment, limits, limits_source, db_cores)
               for server, plans in by_server.items()]
    return Plan(deployment, tuple(pools), tuple(servers), tuple(skipped))


def _total(sizes: Sequence[sizing.PoolSize], deployment: Deployment) -> int | None:
    if any(size.max_overflow < 0 for size in sizes):
        return None
    per_process = sizing.PoolSize(sum(size.pool_size for size in sizes),
                                  sum(size.max_overflow for size in sizes))
    return sizing.fleet_connections(per_process, deployment.workers, deployment.hosts) + (
        deployment.extra_connections)


def _budget(server: str, plans: list[PoolPlan], deployment: Deployment,
            limits: Callable[[str], ServerLimits],
            limits_source: Literal["server", "option"], db_cores: int | None) -> ServerBudget:
    aliases = tuple(dict.fromkeys(plan.alias for plan in plans))
    found: ServerLimits | None = None
    error: str | None = None
    try:
        found = limits(aliases[0])
    except ServerUnreachable as problem:
        error = str(problem)
    configured = _total([plan.configured for plan in plans], deployment)
    recommended = _total([plan.recommended for plan in plans], deployment)
    assert recommended is not None  # recommendations never have an unlimited overflow
    clients = recommended - deployment.extra_connections
    pgbouncer = None
    if found is not None and recommended > found.available:
        pgbouncer = sizing.pgbouncer_settings(
            available=found.available - deployment.extra_connections,
            databases=len(aliases), client_connections=clients,
            cores=db_cores or deployment.effective_cores, spindles=deployment.spindles,
            threads=deployment.threads)
    return ServerBudget(server, aliases, found, limits_source if found else None, error,
                        configured, recommended, clients, pgbouncer)
