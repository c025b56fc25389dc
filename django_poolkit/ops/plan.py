"""The connection budget: every pool of every process against each server's
``max_connections``, as configured and as recommended (``manage.py poolplan`` and the
``poolkit.W040`` check). Pure apart from the ``limits`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..conf import PoolkitSettings
from ..exceptions import ServerUnreachable
from . import sizing
from .bouncer import BouncerSnapshot
from .deployment import Deployment, server_of
from .serverinfo import ServerLimits

__all__ = ["PLAN_FORMULAS", "BouncerBudget", "BouncerLimit", "Plan", "PoolPlan", "ServerBudget",
           "build_plan"]


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
        """Stable keys: see docs/operations.rst."""
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
        """Stable keys: see docs/operations.rst."""
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
class BouncerLimit:
    """One limit between the app's pools and the server, behind PgBouncer. ``demand`` is what
    the deployment asks of it at most (client connections, or server connections for
    ``max_connections``), ``admits`` what it lets through (None: the pools behind it can
    never reach it), ``hosts_admitted`` how many hosts of the deployment's shape fit under
    it (None: any number), ``effect`` what happens beyond: connections ``refused``, or
    transactions that ``wait`` in PgBouncer's queue up to ``query_wait_timeout``."""

    name: str
    value: int
    admits: int | None
    demand: int | None
    hosts_admitted: int | None
    effect: Literal["refused", "wait"]

    @property
    def hit(self) -> bool:
        """Whether the deployment as declared goes beyond it (an unlimited demand always)."""
        return self.demand is None or (self.admits is not None and self.demand > self.admits)

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/fleet.rst."""
        return {"name": self.name, "value": self.value, "admits": self.admits,
                "demand": self.demand, "hit": self.hit, "hosts_admitted": self.hosts_admitted,
                "effect": self.effect}


@dataclass(frozen=True)
class BouncerBudget:
    """The deployment's client connections to one PgBouncer against its running limits and
    the server's ``max_connections`` behind it.

    ``clients`` is ``(pool_size + max_overflow) x processes`` over the pools on this PgBouncer
    (None: an unlimited overflow). PgBouncer opens at most ``server_connections`` to the
    server for these databases (each database's pool size plus ``reserve_pool_size``, within
    ``max_db_connections``). ``limits`` are in the order the deployment hits them as hosts
    are added; ``error`` says why PgBouncer or the server could not be read.
    """

    pgbouncer: str
    aliases: tuple[str, ...]
    databases: tuple[str, ...]
    clients: int | None
    server_connections: int | None
    server_limits: ServerLimits | None
    limits: tuple[BouncerLimit, ...]
    error: str | None

    @property
    def first(self) -> BouncerLimit | None:
        """The limit the deployment hits first."""
        return self.limits[0] if self.limits else None

    @property
    def fits(self) -> bool | None:
        """Whether no connection is refused (waiting in PgBouncer's queue is allowed). None
        when the limits are unknown (not read, or not reported in PgBouncer's names)."""
        if self.error is not None or self.server_connections is None or not any(
                limit.name == "max_client_conn" for limit in self.limits):
            return None
        return not any(limit.hit for limit in self.limits if limit.effect == "refused")

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/fleet.rst."""
        server = self.server_limits
        return {
            "pgbouncer": self.pgbouncer, "aliases": list(self.aliases),
            "databases": list(self.databases), "clients": self.clients,
            "server_connections": self.server_connections,
            "max_connections": server.max_connections if server else None,
            "available_connections": server.available if server else None,
            "limits": [limit.as_dict() for limit in self.limits],
            "first_limit": self.first.name if self.first else None,
            "fits": self.fits, "error": self.error,
        }


@dataclass(frozen=True)
class Plan:
    """``manage.py poolplan``'s answer: per-pool sizes and per-server budgets."""

    deployment: Deployment
    pools: tuple[PoolPlan, ...]
    servers: tuple[ServerBudget, ...]
    # Pools not counted: no PostgreSQL server (SQLite), or behind PgBouncer when it is not
    # read.
    skipped: tuple[str, ...] = field(default=())
    bouncers: tuple[BouncerBudget, ...] = field(default=())

    @property
    def fits(self) -> bool | None:
        """False when any server's configured budget is over (or a PgBouncer would refuse
        clients), None when one is unknown."""
        verdicts = [server.fits for server in self.servers]
        verdicts += [bouncer.fits for bouncer in self.bouncers]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """Pools that would make threads wait: a bounded sync pool opening fewer connections
        per process than it has threads. One connection per thread serves a request (the
        ORM and SQLAlchemy share it), so the other threads wait ``pool_timeout`` under load,
        then fail with ``PoolTimeout`` (a 503)."""
        threads = self.deployment.threads
        found = []
        for pool in self.pools:
            configured = pool.configured
            capacity = configured.pool_size + configured.max_overflow
            if pool.kind != "sync" or configured.max_overflow < 0 or capacity >= threads:
                continue
            found.append({
                "alias": pool.alias, "kind": pool.kind, "check": "pool_smaller_than_threads",
                "message": f"{pool.alias} (sync) opens at most {capacity} connection(s) per "
                           f"process (pool_size {configured.pool_size} + max_overflow "
                           f"{configured.max_overflow}) for {threads} threads: under load the "
                           "others wait pool_timeout and fail with PoolTimeout"})
        return found

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/operations.rst."""
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
            "pgbouncers": [bouncer.as_dict() for bouncer in self.bouncers],
            "warnings": self.warnings,
            "fits": self.fits,
        }


#: Where the search for the hosts that fit under ``max_connections`` stops.
MOST_HOSTS = 100_000

#: Formulas ``poolplan --formula`` accepts for the sync pools: ``threads`` (the default,
#: :func:`sizing.threaded_pool_size`) and the cores and production rules.
PLAN_FORMULAS = ("threads", "cores", "production")


def _recommend(deployment: Deployment, kind: str, configured: sizing.PoolSize,
               preset: str | None, formula: str) -> tuple[sizing.PoolSize, str]:
    cores = deployment.effective_cores
    if preset is not None and kind == "sync":  # async pools: always the async formula
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
    bouncer: Callable[[str], BouncerSnapshot] | None = None,
) -> Plan:
    """Size every pool for ``deployment`` and add up each server's budget.

    ``limits(alias)`` returns the limits of that alias's server (or raises
    :class:`ServerUnreachable`); it is called once per server, with the first alias on it.
    Pure apart from that call, so tests and offline planning pass their own
    (``limits_source="option"`` records that the limits came from the command line).
    ``db_cores`` are the database server's cores, for the PgBouncer pool (default: the
    deployment's ``cores``). ``formula`` (one of :data:`PLAN_FORMULAS`) sizes the sync pools
    unless ``preset`` is given; async pools always use the async formula.

    ``bouncer(alias)`` reads the running PgBouncer of a pool with the ``pgbouncer`` setting
    (or raises :class:`ServerUnreachable`); without it such pools are only listed as skipped.
    """
    pools: list[PoolPlan] = []
    skipped: list[str] = []
    by_server: dict[str, list[PoolPlan]] = {}
    by_bouncer: dict[str, list[tuple[str, sizing.PoolSize]]] = {}
    for alias, pool in config.pools.items():
        if deployment.databases is not None and alias not in deployment.databases:
            continue
        server = server_of(alias, pool)
        if server is None:
            skipped.append(alias)
            continue
        # A pool behind PgBouncer holds PgBouncer's client slots, not the server's.
        if pool.pgbouncer is not None:
            if bouncer is None:
                skipped.append(alias)
                continue
            by_bouncer.setdefault(server, []).append(
                (alias, sizing.PoolSize(pool.pool_size, pool.max_overflow)))
            if deployment.async_concurrency is not None:
                by_bouncer[server].append(
                    (alias, sizing.PoolSize(pool.async_pool_size, pool.async_max_overflow)))
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
    assert bouncer is not None or not by_bouncer
    bouncers = [_bouncer_budget(address, sized, deployment, limits, bouncer)
                for address, sized in by_bouncer.items() if bouncer is not None]
    return Plan(deployment, tuple(pools), tuple(servers), tuple(skipped), tuple(bouncers))


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


def _linear(name: str, value: int, admits: int, per_host: int | None, hosts: int,
            effect: Literal["refused", "wait"]) -> BouncerLimit:
    """A limit on client connections, which grow by ``per_host`` per host (None: unlimited)."""
    if per_host is None:
        return BouncerLimit(name, value, admits, None, 0, effect)
    return BouncerLimit(name, value, admits, per_host * hosts,
                        admits // per_host if per_host else None, effect)


def _bouncer_budget(address: str, sized: list[tuple[str, sizing.PoolSize]],
                    deployment: Deployment, limits: Callable[[str], ServerLimits],
                    bouncer: Callable[[str], BouncerSnapshot]) -> BouncerBudget:
    """The limits between the pools on one PgBouncer and the server, in the order the
    deployment hits them as hosts are added. Every client connection may be inside a
    transaction at once (the worst case a budget plans for), so each may need a server
    connection: beyond a database's pool size, transactions wait in PgBouncer's queue;
    beyond ``max_client_conn``, connections are refused; beyond the server's available
    slots (minus ``extra_connections``), PgBouncer's own connections are."""
    aliases = tuple(dict.fromkeys(alias for alias, _ in sized))
    snapshots: dict[str, BouncerSnapshot] = {}
    server: ServerLimits | None = None
    error: str | None = None
    try:
        for alias in aliases:
            snapshots[alias] = bouncer(alias)
        server = limits(aliases[0])
    except ServerUnreachable as problem:
        error = str(problem)
    # Client connections per host, per database (None: an unlimited overflow).
    per_host: dict[str, int | None] = {}
    for alias, size in sized:
        database = snapshots[alias].database if alias in snapshots else alias
        previous = per_host.get(database, 0)
        per_host[database] = (None if previous is None or size.max_overflow < 0
                              else previous + sum(size) * deployment.workers)
    every = None if None in per_host.values() else sum(
        value for value in per_host.values() if value is not None)
    hosts = deployment.hosts
    clients = None if every is None else every * hosts
    databases = tuple(per_host)
    if error is not None or server is None:
        return BouncerBudget(address, aliases, databases, clients, None, server, (), error)
    config = next(iter(snapshots.values())).config
    reserve = int(config.get("reserve_pool_size") or 0)
    found: list[BouncerLimit] = []
    # A limit the console does not report (another pooler's names) is left out, not zero.
    if isinstance(config.get("max_client_conn"), int):
        most_clients = int(config["max_client_conn"])
        found.append(_linear("max_client_conn", most_clients, most_clients, every, hosts,
                             "refused"))
    caps: dict[str, int] = {}
    for snapshot in {snapshot.database: snapshot for snapshot in snapshots.values()}.values():
        pool_size = snapshot.pool_size if snapshot.pool_size is not None else (
            config.get("default_pool_size"))
        if not isinstance(pool_size, int):
            continue
        demand = per_host[snapshot.database]
        caps[snapshot.database] = pool_size + reserve
        found.append(_linear(f"pool_size ({snapshot.database})", pool_size,
                             pool_size + reserve, demand, hosts, "wait"))
        if snapshot.max_db_connections:
            caps[snapshot.database] = min(caps[snapshot.database], snapshot.max_db_connections)
            found.append(_linear(f"max_db_connections ({snapshot.database})",
                                 snapshot.max_db_connections, snapshot.max_db_connections,
                                 demand, hosts, "wait"))
    opened = sum(caps.values())
    room = server.available - deployment.extra_connections

    def server_demand(count: int) -> int:
        return sum(cap if per_host[database] is None else min(
            cap, (per_host[database] or 0) * count) for database, cap in caps.items())

    if len(caps) < len(set(per_host)):
        # Some pool's size is unknown: how much PgBouncer may open is unknown too.
        found.sort(key=lambda limit: (limit.hosts_admitted is None, limit.hosts_admitted or 0,
                                      limit.effect != "refused"))
        return BouncerBudget(address, aliases, databases, clients, None, server,
                             tuple(found), None)
    fitting: int | None = None
    if opened > room:  # else these pools can never fill the server
        fitting = 0
        while fitting < MOST_HOSTS and server_demand(fitting + 1) <= room:
            fitting += 1
    found.append(BouncerLimit("max_connections", server.max_connections,
                              room if opened > room else None, server_demand(hosts),
                              fitting, "refused"))
    found.sort(key=lambda limit: (limit.hosts_admitted is None, limit.hosts_admitted or 0,
                                  limit.effect != "refused"))
    return BouncerBudget(address, aliases, databases, clients, opened, server, tuple(found),
                         None)
