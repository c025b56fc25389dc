"""The verdict of one round: :func:`evaluate` turns probe results, pool gauges and the
router's view of each replica into a typed :class:`HealthReport`. Pure apart from reading
the router's cached replica state; no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from django.db import connections

from ..engines.params import vendor_of
from ..stats import PoolStats
from .probe import ProbeResult, _ms
from .settings import DEGRADED, HEALTHY, UNHEALTHY, HealthSettings, Status

__all__ = ["DatabaseHealth", "HealthReport", "evaluate", "worst"]

_RANK: dict[str, int] = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def _routing_view(alias: str) -> dict[str, Any] | None:
    """What the router's shared replica state says about ``alias`` (None when it is not a
    routed replica). Read from its cache: the router's own prober does the I/O, through the
    application's pools, so the health probe never triggers it.

    The router's reason for a replica that is down quotes the driver's message, so only its
    status is passed on then; the probe's own error says why.
    """
    from ..routing.state import replica_state

    found = replica_state.replica(alias)
    if found is None:
        return None
    measured = replica_state.measurement(alias)
    return {
        "status": found.status, "in_rotation": found.in_rotation,
        "reason": found.reason if found.status in ("lagging", "not_replica") else None,
        "lag_s": found.lag_seconds, "lag_bytes": found.lag_bytes,
        "measured_at": _iso(measured.measured_at) if measured is not None else None,
        "out_since": _iso(found.out_since) if found.out_since is not None else None,
    }


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")




@dataclass(frozen=True)
class DatabaseHealth:
    """The verdict on one database: ``status`` plus the figures that led to it."""

    alias: str
    status: Status
    role: Literal["primary", "replica"] | None
    expected: Literal["primary", "replica", "other"]
    connect_ms: float | None
    latency_ms: float | None
    lag_s: float | None
    error: str | None
    reasons: tuple[str, ...]
    pool: Mapping[str, Any]
    async_pool: Mapping[str, Any] | None
    routing: Mapping[str, Any] | None
    vendor: str
    host: str | None
    port: str | None
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        """The detailed form (never a user name, password or DSN)."""
        data: dict[str, Any] = {
            "status": self.status, "role": self.role, "expected_role": self.expected,
            "latency_ms": self.latency_ms, "connect_ms": self.connect_ms,
            "lag_s": self.lag_s, "error": self.error, "reasons": list(self.reasons),
            "pool": dict(self.pool),
            "vendor": self.vendor, "host": self.host, "port": self.port, "name": self.name,
        }
        if self.async_pool is not None:
            data["async_pool"] = dict(self.async_pool)
        if self.routing is not None:
            data["routing"] = dict(self.routing)
        return data


@dataclass(frozen=True)
class HealthReport:
    """The result of one round. ``status`` is the readiness verdict (see :func:`evaluate`)."""

    status: Status
    databases: Mapping[str, DatabaseHealth]
    reasons: tuple[str, ...]
    checked_at: float
    duration_ms: float

    @property
    def http_status(self) -> int:
        """200 for healthy and degraded (still serving), 503 for unhealthy."""
        return 503 if self.status == UNHEALTHY else 200

    def as_dict(self, *, details: bool = True, databases: bool = True) -> dict[str, Any]:
        """``{"status": ...}``, plus reasons, timing and (``databases``) the per-database
        detail when ``details`` is true."""
        if not details:
            return {"status": self.status}
        data: dict[str, Any] = {
            "status": self.status,
            "reasons": list(self.reasons),
            "checked_at": datetime.fromtimestamp(self.checked_at, UTC).isoformat(
                timespec="milliseconds"),
            "age_s": round(max(0.0, time.time() - self.checked_at), 3),
            "duration_ms": self.duration_ms,
        }
        if databases:
            data["databases"] = {alias: db.as_dict() for alias, db in self.databases.items()}
        return data


def _pool_figures(stats: PoolStats, saturation: float) -> dict[str, Any]:
    capacity = stats.pool_capacity
    saturated = bool(stats.built and capacity is not None
                     and stats.pool_checked_out >= saturation * capacity)
    return {
        "built": stats.built, "pool_size": stats.pool_size,
        "pool_checked_out": stats.pool_checked_out, "pool_checked_in": stats.pool_checked_in,
        "pool_overflow": stats.pool_overflow, "pool_capacity": capacity,
        "timeouts": stats.timeouts, "saturated": saturated,
    }


def worst(statuses: Iterable[str]) -> Status:
    """The worst of some statuses (healthy when there are none)."""
    found: Status = HEALTHY
    for status in statuses:
        if _RANK[status] > _RANK[found]:
            found = status  # type: ignore[assignment]
    return found


def evaluate(
    config: HealthSettings,
    results: Mapping[str, ProbeResult],
    pools: Mapping[str, Mapping[str, Any]],
    async_pools: Mapping[str, Mapping[str, Any] | None] | None = None,
    routing: Mapping[str, Mapping[str, Any] | None] | None = None,
    *,
    started: float | None = None,
) -> HealthReport:
    """Turn probe results and pool figures into a report. Pure: no I/O.

    Per database: unreachable is ``unhealthy``; a saturated pool is ``saturated_status``; a
    primary alias whose server is in recovery is ``unhealthy`` (writes would fail); a replica
    lagging more than ``max_replica_lag``, or out of the router's rotation (``routing``, the
    shared replica state), is ``degraded``. A routed replica's lag is the router's measurement
    when it has one (``routing[alias]["measured_at"]``), else the probe's. Overall:
    ``unhealthy`` when the primary is, or fewer than ``min_replicas`` replicas are healthy;
    else ``degraded`` when any database is not healthy; else ``healthy``.
    """
    replicas = set(config.replica_aliases())
    verdicts: dict[str, DatabaseHealth] = {}
    for alias, result in results.items():
        expected: Literal["primary", "replica", "other"] = (
            "primary" if alias == config.primary else "replica" if alias in replicas
            else "other")
        reasons: list[str] = []
        statuses: list[str] = []
        routed = (routing or {}).get(alias)
        lag_s = result.lag_s
        if (routed is not None and routed.get("measured_at") is not None
                and result.role == "replica"):
            # One measurement per replica: the router's, which routes on it.
            lag_s = routed["lag_s"]
        if not result.ok:
            reasons.append(f"{alias}: unreachable ({result.error})")
            statuses.append(UNHEALTHY)
        else:
            if expected == "primary" and result.role == "replica":
                reasons.append(f"{alias}: the primary's server is in recovery (read-only)")
                statuses.append(UNHEALTHY)
            if (config.max_replica_lag is not None and lag_s is not None
                    and lag_s > config.max_replica_lag):
                reasons.append(f"{alias}: replica lag {lag_s:.1f} s > "
                               f"{config.max_replica_lag:g} s")
                statuses.append(DEGRADED)
        if routed is not None and not routed["in_rotation"]:
            reasons.append(f"{alias}: out of the router's rotation ({routed['status']}"
                           + (f": {routed['reason']})" if routed.get("reason") else ")"))
            statuses.append(DEGRADED)
        pool = pools.get(alias, {})
        async_pool = (async_pools or {}).get(alias)
        for kind, figures in (("pool", pool), ("async pool", async_pool)):
            if figures and figures.get("saturated"):
                reasons.append(f"{alias}: {kind} saturated ({figures['pool_checked_out']} of "
                               f"{figures['pool_capacity']} connections checked out)")
                statuses.append(config.saturated_status)
        entry = connections.settings[alias]
        verdicts[alias] = DatabaseHealth(
            alias=alias, status=worst(statuses), role=result.role, expected=expected,
            connect_ms=result.connect_ms, latency_ms=result.latency_ms, lag_s=lag_s,
            error=result.error, reasons=tuple(reasons), pool=pool, async_pool=async_pool,
            routing=routed,
            vendor=vendor_of(entry), host=str(entry.get("HOST") or "") or None,
            port=str(entry.get("PORT") or "") or None,
            name=str(entry.get("NAME")) if entry.get("NAME") else None)

    reasons = [reason for verdict in verdicts.values() for reason in verdict.reasons]
    status: Status = worst(verdict.status for verdict in verdicts.values())
    if status == UNHEALTHY:
        status = DEGRADED  # only the policy below makes the whole unhealthy
    primary = verdicts.get(config.primary) if config.primary else None
    if primary is not None and primary.status == UNHEALTHY:
        status = UNHEALTHY
    healthy_replicas = sum(1 for alias in replicas
                           if alias in verdicts and verdicts[alias].status == HEALTHY)
    if healthy_replicas < config.min_replicas:
        reasons.append(f"{healthy_replicas} healthy replicas, {config.min_replicas} required")
        status = UNHEALTHY
    now = time.perf_counter()
    return HealthReport(
        status=status, databases=verdicts, reasons=tuple(reasons), checked_at=time.time(),
        duration_ms=_ms(now - started) if started is not None else 0.0)


