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
from .deployment import Deployment, server_of
from .serverinfo import ServerLimits

__all__ = ["PLAN_FORMULAS", "Plan", "PoolPlan", "ServerBudget", "build_plan"]


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
            "warnings": self.warnings,
            "fits": self.fits,
        }


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
) -> Plan:
    """Size every pool for ``deployment`` and add up each server's budget.

    ``limits(alias)`` returns the limits of that alias's server (or raises
    :class:`ServerUnreachable`); it is called once per server, with the first alias on it.
    Pure apart from that call, so tests and offline planning pass their own
    (``limits_source="option"`` records that the limits came from the command line).
    ``db_cores`` are the database server's cores, for the PgBouncer pool (default: the
    deployment's ``cores``). ``formula`` (one of :data:`PLAN_FORMULAS`) sizes the sync pools
    unless ``preset`` is given; async pools always use the async formula.
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
