"""Health probes: the one implementation behind the health views, ``manage.py poolcheck`` and
the django-health-check backend.

A *round* probes every configured database at once, each in its own daemon thread, and turns
the answers plus the pools' gauges into a typed :class:`HealthReport`. Four properties matter
more than the probe itself:

- **Bounded.** A round returns after ``timeout`` seconds whatever the servers do. libpq will not
  time a connect out in less than 2 s and a stopped (``SIGSTOP``) server keeps the TCP
  connection open, so the deadline is enforced here, by waiting on the probe threads, and a
  server-side ``statement_timeout`` bounds the query too. A probe still stuck from an earlier
  round is waited on again instead of being started twice, so a dead server costs at most one
  thread and one socket per alias.
- **Never steals a pool slot.** The probe opens its own connection, outside every pool, with
  the alias's own parameters (the ORM's ``get_connection_params()``), so a saturated pool can
  neither delay it nor lose a slot to it. Saturation is read from the pool's gauges
  (``pool_stats()``), which costs no I/O. Opening a *fresh* connection each round is also what
  notices a server that refuses new connections (``max_connections`` or a role's
  ``CONNECTION LIMIT`` reached) while the pool's open connections still answer ``SELECT 1``.
- **Cheap under a flood.** A round's report is cached for ``cache_ttl`` seconds and concurrent
  callers share the round in flight (single-flight), so each process sends at most one probe
  per database per ``cache_ttl``, however many health requests arrive.
- **Safe.** Errors are reduced to fixed phrases (``"connection refused"``, ``"too many
  connections"``, SQLSTATE codes); the driver's message, which can name hosts, users and
  parameters, never leaves this module. The report's public form is its status only; details
  (host, port, database name, errors) are rendered only when the caller asks for them.

Settings live in ``POOLKIT["HEALTH"]`` (:class:`HealthSettings`), validated by
:func:`parse_settings` through ``conf.SECTION_PARSERS`` with check ids ``poolkit.E030``-``E034``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from django.db import connections

from .api import pool_stats
from .conf import Report, did_you_mean, get_settings, known_items, on_reload
from .engines.params import spec_for_alias
from .serverinfo import ROLE_AND_LAG_SQL
from .stats import PoolStats

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "SETTING_RULES",
    "UNHEALTHY",
    "DatabaseHealth",
    "HealthChecker",
    "HealthReport",
    "HealthSettings",
    "ProbeResult",
    "Status",
    "checker",
    "describe_error",
    "evaluate",
    "health_settings",
    "parse_settings",
    "probe_database",
    "with_overrides",
    "worst",
]

logger = logging.getLogger(__name__)

Status = Literal["healthy", "degraded", "unhealthy"]
HEALTHY: Status = "healthy"
DEGRADED: Status = "degraded"
UNHEALTHY: Status = "unhealthy"
_RANK: dict[str, int] = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}

# Check ids, never reused (see checks.py).
E_NOT_A_DICT = "poolkit.E030"  # POOLKIT["HEALTH"] is not a dict
E_UNKNOWN_KEY = "poolkit.E031"  # an unknown key in POOLKIT["HEALTH"] (with did-you-mean)
E_BAD_VALUE = "poolkit.E032"  # a value of the wrong type or out of range
E_UNKNOWN_ALIAS = "poolkit.E033"  # POOLKIT["HEALTH"] names an alias DATABASES lacks
E_CONFLICT = "poolkit.E034"  # health settings that contradict each other

# Vendors a probe knows how to reach; other aliases are left out of the report.
_PROBED_VENDORS = ("postgresql", "sqlite")

_MINIMUM_TOKEN_LENGTH = 16


# SQLSTATE -> what a probe may say about it.
_SQLSTATE_PHRASES = {
    "53300": "too many connections",
    "28P01": "authentication failed",
    "28000": "authorization rejected",
    "3D000": "database does not exist",
    "57P03": "server is starting up or shutting down",
    "57P01": "server terminated the connection",
    "57014": "statement timeout",
    "08006": "connection failure",
    "08001": "could not connect",
}
# libpq reports most connection failures without a SQLSTATE: match its wording (lower case)
# and answer with a fixed phrase, never with the text itself.
_MESSAGE_PHRASES = (
    ("too many connections", "too many connections"),
    ("too many clients", "too many connections"),
    ("remaining connection slots are reserved", "too many connections"),
    ("password authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("no pg_hba.conf entry", "rejected by pg_hba.conf"),
    ("connection refused", "connection refused"),
    ("timeout expired", "connect timeout"),
    ("database system is starting up", "server is starting up or shutting down"),
    ("database system is shutting down", "server is starting up or shutting down"),
    ("could not translate host name", "host name not resolved"),
    ("server closed the connection", "server closed the connection"),
    ("canceling statement due to statement timeout", "statement timeout"),
    ("does not exist", "database or role does not exist"),
    ("unable to open database file", "database file missing or unreadable"),
)


@dataclass(frozen=True)
class HealthSettings:
    """``POOLKIT["HEALTH"]``, validated. Times are seconds.

    ``databases`` None probes every PostgreSQL and SQLite alias of ``DATABASES``; ``replicas``
    None takes the aliases whose ``TEST["MIRROR"]`` is set (Django's mark of a replica) and
    the replicas of the router's clusters. ``primary`` is None when ``databases`` is given
    without ``"default"`` and no primary is named.
    """

    timeout: float = 0.5
    cache_ttl: float = 2.0
    token: str | None = field(default=None, repr=False)
    token_header: str = "X-Poolkit-Health-Token"  # noqa: S105 (a header name, not a secret)
    databases: tuple[str, ...] | None = None
    primary: str | None = "default"
    replicas: tuple[str, ...] | None = None
    min_replicas: int = 0
    max_replica_lag: float | None = 30.0
    saturation: float = 1.0
    saturated_status: Status = UNHEALTHY
    staff_details: bool = True

    def probed_aliases(self) -> tuple[str, ...]:
        """The aliases a round probes, in ``DATABASES`` order."""
        if self.databases is not None:
            return self.databases
        return tuple(alias for alias in connections.settings
                     if _vendor(alias) in _PROBED_VENDORS)

    def replica_aliases(self) -> tuple[str, ...]:
        """The probed aliases that the replica policy counts."""
        if self.replicas is not None:
            candidates: Iterable[str] = self.replicas
        else:
            candidates = [alias for alias, entry in connections.settings.items()
                          if (entry.get("TEST") or {}).get("MIRROR")
                          or alias in _router_replicas()]
        probed = self.probed_aliases()
        return tuple(alias for alias in candidates if alias in probed and alias != self.primary)


#: What each ``POOLKIT["HEALTH"]`` key accepts (for the messages and the docs).
SETTING_RULES: dict[str, str] = {
    "timeout": "a number of seconds > 0 and <= 30",
    "cache_ttl": "a number of seconds >= 0",
    "token": f"a string of at least {_MINIMUM_TOKEN_LENGTH} characters, or None",
    "token_header": "a non-empty HTTP header name",
    "databases": "a list of DATABASES aliases, or None for all",
    "primary": "a DATABASES alias, or None",
    "replicas": "a list of DATABASES aliases, or None for those with TEST['MIRROR']",
    "min_replicas": "an integer >= 0",
    "max_replica_lag": "a number of seconds > 0, or None for no limit",
    "saturation": "a number > 0 and <= 1 (share of the pool's capacity checked out)",
    "saturated_status": '"unhealthy" or "degraded"',
    "staff_details": "True or False",
}


def _router_replicas() -> set[str]:
    """The replicas of the router's clusters (``POOLKIT["ROUTING"]``); no I/O."""
    from .replicas import replica_state

    return {replica.alias for cluster in replica_state.snapshot()
            for replica in cluster.replicas}


def _routing_view(alias: str) -> dict[str, Any] | None:
    """What the router's shared replica state says about ``alias`` (None when it is not a
    routed replica). Read from its cache: the router's own prober does the I/O, through the
    application's pools, so the health probe never triggers it.

    The router's reason for a replica that is down quotes the driver's message, so only its
    status is passed on then; the probe's own error says why.
    """
    from .replicas import replica_state

    found = replica_state.replica(alias)
    if found is None:
        return None
    return {
        "status": found.status, "in_rotation": found.in_rotation,
        "reason": found.reason if found.status in ("lagging", "not_replica") else None,
        "lag_s": found.lag_seconds, "lag_bytes": found.lag_bytes,
        "out_since": (datetime.fromtimestamp(found.out_since, UTC).isoformat(
            timespec="seconds") if found.out_since is not None else None),
    }


def _vendor(alias: str) -> str:
    engine = str(connections.settings[alias].get("ENGINE", ""))
    if "sqlite" in engine:
        return "sqlite"
    if "postgres" in engine or engine.startswith("django_poolkit"):
        return "postgresql"
    return engine.rsplit(".", 1)[-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def parse_settings(
    value: Any,
    databases: Mapping[str, Any],
    report: Report,
) -> HealthSettings:
    """Validate ``POOLKIT["HEALTH"]`` (a ``conf.SECTION_PARSERS`` parser).

    Every problem goes to ``report(path, message, hint, check_id)``; the result keeps the
    default for any key that was wrong, so one mistake does not hide the others.
    """
    base = 'POOLKIT["HEALTH"]'
    if value is None:
        return HealthSettings()
    if not isinstance(value, Mapping):
        report(base, f"must be a dict, got {type(value).__name__}",
               'Write {"timeout": 0.5, "cache_ttl": 2}.', E_NOT_A_DICT)
        return HealthSettings()
    found: dict[str, Any] = {}
    for key, item, path, rule in known_items(value, base, SETTING_RULES, report,
                                             E_UNKNOWN_KEY):
        try:
            found[key] = _check_value(key, item, databases, path, report)
        except ValueError:
            report(path, f"must be {rule}, got {item!r}" if key != "token"
                   else f"must be {rule}", _HINTS[key], E_BAD_VALUE)
    if "primary" not in found and found.get("databases") is not None and (
            HealthSettings.primary not in found["databases"]):
        found["primary"] = None  # the default primary is simply not probed
    result = HealthSettings(**found)
    if result.primary is not None and result.databases is not None and (
            result.primary not in result.databases):
        report(f'{base}["primary"]', f'"{result.primary}" is not in "databases"',
               'Add it to "databases", or set "primary" to None.', E_CONFLICT)
    if result.replicas is not None:
        if result.primary in result.replicas:
            report(f'{base}["replicas"]', f'lists the primary "{result.primary}"',
                   "A database is either the primary or a replica.", E_CONFLICT)
        if result.min_replicas > len(result.replicas):
            report(f'{base}["min_replicas"]', f"is {result.min_replicas} but only "
                   f"{len(result.replicas)} replicas are listed",
                   'Lower "min_replicas" or list more "replicas".', E_CONFLICT)
    return result


_HINTS: dict[str, str] = {
    "timeout": "Keep it below your probe's timeout (Kubernetes: 1 s), e.g. 0.5.",
    "cache_ttl": "A few seconds, e.g. 2; 0 probes on every request.",
    "token": "Use a long random secret (not SECRET_KEY), e.g. from secrets.token_urlsafe(32).",
    "token_header": 'e.g. "X-Poolkit-Health-Token".',
    "databases": 'e.g. ["default", "replica1"].',
    "primary": 'The alias writes go to, e.g. "default".',
    "replicas": 'e.g. ["replica1", "replica2"].',
    "min_replicas": "How many replicas must be healthy for /ready/ to pass; 0 never fails it.",
    "max_replica_lag": "A replica further behind than this counts as degraded, e.g. 30.",
    "saturation": "1 means every connection of pool_size + max_overflow is checked out.",
    "saturated_status": '"degraded" keeps /ready/ at 200 while the pool is saturated.',
    "staff_details": "Whether logged-in staff users see the detailed report.",
}


def _check_value(
    key: str, item: Any, databases: Mapping[str, Any], path: str,
    report: Report,
) -> Any:
    """The checked value of one key, or ValueError when it breaks the key's rule."""
    if key == "timeout" and _is_number(item) and 0 < item <= 30:
        return float(item)
    if key == "cache_ttl" and _is_number(item) and item >= 0:
        return float(item)
    if key == "token" and (item is None or (
            isinstance(item, str) and len(item) >= _MINIMUM_TOKEN_LENGTH)):
        return item
    if key == "token_header" and isinstance(item, str) and item.strip():
        return item.strip()
    if key in ("databases", "replicas"):
        if item is None:
            return None
        if isinstance(item, (list, tuple)) and all(isinstance(name, str) for name in item):
            _known_aliases(item, databases, path, report)
            return tuple(item)
    if key == "primary" and (item is None or isinstance(item, str)):
        if item is not None:
            _known_aliases([item], databases, path, report)
        return item
    if key == "min_replicas" and isinstance(item, int) and not isinstance(item, bool) and (
            item >= 0):
        return item
    if key == "max_replica_lag" and (item is None or (_is_number(item) and item > 0)):
        return None if item is None else float(item)
    if key == "saturation" and _is_number(item) and 0 < item <= 1:
        return float(item)
    if key == "saturated_status" and item in (UNHEALTHY, DEGRADED):
        return item
    if key == "staff_details" and isinstance(item, bool):
        return item
    raise ValueError(key)


def _known_aliases(names: Sequence[str], databases: Mapping[str, Any], path: str,
                   report: Report) -> None:
    for name in names:
        if name not in databases:
            report(path, f'names the unknown database alias "{name}"'
                   + did_you_mean(name, databases),
                   "settings.DATABASES has: " + ", ".join(f'"{n}"' for n in databases) + ".",
                   E_UNKNOWN_ALIAS)


def health_settings() -> HealthSettings:
    """The validated ``POOLKIT["HEALTH"]`` of the current configuration."""
    section = get_settings().sections.get("HEALTH")
    return section if isinstance(section, HealthSettings) else HealthSettings()


@dataclass(frozen=True)
class ProbeResult:
    """What one probe learned. ``error`` is a fixed phrase, never the driver's message."""

    ok: bool
    role: Literal["primary", "replica"] | None = None
    lag_s: float | None = None
    connect_ms: float | None = None
    latency_ms: float | None = None
    error: str | None = None


def describe_error(error: BaseException) -> str:
    """A fixed phrase for a connection or query error, with its SQLSTATE when known.

    The driver's own text can hold host names, user names and parameter values, so it is
    only *matched*, never returned.
    """
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _SQLSTATE_PHRASES:
        return f"{_SQLSTATE_PHRASES[sqlstate]} (SQLSTATE {sqlstate})"
    text = str(error).lower()
    for needle, phrase in _MESSAGE_PHRASES:
        if needle in text:
            return phrase
    if isinstance(sqlstate, str) and sqlstate:
        return f"{type(error).__name__} (SQLSTATE {sqlstate})"
    return type(error).__name__


def _probe_application_name(alias: str) -> str:
    return f"poolkit-health:{alias}:{os.getpid()}"[:63]


def probe_database(alias: str, timeout: float) -> ProbeResult:
    """Open a fresh connection to ``alias`` outside every pool, ask its role and replay lag,
    and close it. Blocking; the caller bounds the wall time (see :class:`HealthChecker`).

    The connection uses the alias's own parameters (password, SSL, options) plus a short
    ``statement_timeout``, ``default_transaction_read_only`` and an ``application_name`` of
    ``poolkit-health:<alias>:<pid>`` so its backend can be told apart in
    ``pg_stat_activity``.
    """
    pool = get_settings().for_alias(alias)
    if pool is None:  # pragma: no cover - every DATABASES alias has pool settings
        return ProbeResult(ok=False, error="not configured")
    spec = spec_for_alias(alias, pool)
    if spec.vendor == "sqlite":
        return _probe_sqlite(spec.url.database or ":memory:", timeout)
    params = dict(spec.connect_args)
    statement_ms = max(1, int(timeout * 1000))
    # Later "-c" settings win over earlier ones, so these override the pool's own.
    params["options"] = " ".join(filter(None, (
        params.get("options"), f"-c statement_timeout={statement_ms}",
        "-c default_transaction_read_only=on")))
    params["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's minimum is 2 s
    params["application_name"] = _probe_application_name(alias)
    params.pop("prepare_threshold", None)
    started = time.perf_counter()
    try:
        connection = psycopg.connect(autocommit=True, **params)
    except Exception as error:
        return ProbeResult(ok=False, error=describe_error(error))
    connected = time.perf_counter()
    try:
        with connection:
            row = connection.execute(ROLE_AND_LAG_SQL).fetchone()
    except Exception as error:
        return ProbeResult(ok=False, connect_ms=_ms(connected - started),
                           error=describe_error(error))
    answered = time.perf_counter()
    standby = bool(row[0]) if row else False
    return ProbeResult(
        ok=True, role="replica" if standby else "primary",
        lag_s=None if not standby or row is None or row[1] is None else float(row[1]),
        connect_ms=_ms(connected - started), latency_ms=_ms(answered - connected))


def _probe_sqlite(path: str, timeout: float) -> ProbeResult:
    """``SELECT 1`` on the SQLite file, opened read-write but never created: a probe must not
    leave an empty database behind where the real one is missing."""
    if path in ("", ":memory:") or path.startswith("file:"):
        target, uri = path or ":memory:", path.startswith("file:")
    else:
        target, uri = f"file:{urllib.parse.quote(path)}?mode=rw", True
    started = time.perf_counter()
    try:
        with contextlib.closing(sqlite3.connect(target, timeout=timeout, uri=uri)) as connection:
            connected = time.perf_counter()
            connection.execute("SELECT 1").fetchone()
    except sqlite3.Error as error:
        return ProbeResult(ok=False, error=describe_error(error))
    answered = time.perf_counter()
    return ProbeResult(ok=True, role="primary", connect_ms=_ms(connected - started),
                       latency_ms=_ms(answered - connected))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


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
    shared replica state), is ``degraded``. Overall: ``unhealthy`` when the
    primary is, or fewer than ``min_replicas`` replicas are healthy; else ``degraded`` when any
    database is not healthy; else ``healthy``.
    """
    replicas = set(config.replica_aliases())
    verdicts: dict[str, DatabaseHealth] = {}
    for alias, result in results.items():
        expected: Literal["primary", "replica", "other"] = (
            "primary" if alias == config.primary else "replica" if alias in replicas
            else "other")
        reasons: list[str] = []
        statuses: list[str] = []
        if not result.ok:
            reasons.append(f"{alias}: unreachable ({result.error})")
            statuses.append(UNHEALTHY)
        else:
            if expected == "primary" and result.role == "replica":
                reasons.append(f"{alias}: the primary's server is in recovery (read-only)")
                statuses.append(UNHEALTHY)
            if (config.max_replica_lag is not None and result.lag_s is not None
                    and result.lag_s > config.max_replica_lag):
                reasons.append(f"{alias}: replica lag {result.lag_s:.1f} s > "
                               f"{config.max_replica_lag:g} s")
                statuses.append(DEGRADED)
        routed = (routing or {}).get(alias)
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
            connect_ms=result.connect_ms, latency_ms=result.latency_ms, lag_s=result.lag_s,
            error=result.error, reasons=tuple(reasons), pool=pool, async_pool=async_pool,
            routing=routed,
            vendor=_vendor(alias), host=str(entry.get("HOST") or "") or None,
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


class HealthChecker:
    """Runs rounds of probes with a short cache and single-flight.

    One module-level instance (:data:`checker`) serves the views and the django-health-check
    backend; ``poolcheck`` builds its own with the cache off. ``config`` None reads
    ``POOLKIT["HEALTH"]`` at the start of every round.
    """

    def __init__(self, config: HealthSettings | None = None) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._cached: HealthReport | None = None
        self._cached_at = 0.0
        self._round: concurrent.futures.Future[HealthReport] | None = None
        self._probes: dict[str, tuple[concurrent.futures.Future[ProbeResult], float]] = {}
        self._last_status: dict[str, str] = {}
        #: Probes started by this checker (the flood figure in the docs counts these).
        self.probes_started = 0

    def __repr__(self) -> str:
        return f"<HealthChecker probes_started={self.probes_started}>"

    def after_fork_in_child(self) -> None:
        """Start clean in a forked child: the parent's probe threads do not exist here, so
        their futures would never complete, and the lock may have been held at fork time."""
        self._lock = threading.Lock()
        self._cached = None
        self._round = None
        self._probes = {}

    def config(self) -> HealthSettings:
        """The settings the next round uses."""
        return self._config if self._config is not None else health_settings()

    def clear(self) -> None:
        """Forget the cached report (the configuration changed)."""
        with self._lock:
            self._cached = None
            self._round = None

    def _current_round(self) -> tuple[concurrent.futures.Future[HealthReport], float]:
        """The round to wait on: a cached one, the one in flight, or a new one."""
        config = self.config()
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached_at < config.cache_ttl:
                done: concurrent.futures.Future[HealthReport] = concurrent.futures.Future()
                done.set_result(self._cached)
                return done, config.timeout
            if self._round is None or self._round.done():
                self._round = concurrent.futures.Future()
                threading.Thread(target=self._run_round, args=(self._round, config),
                                 name="poolkit-health-round", daemon=True).start()
            return self._round, config.timeout

    def check(self) -> HealthReport:
        """The current report, waiting at most about ``timeout`` seconds (blocking)."""
        future, timeout = self._current_round()
        try:
            return future.result(timeout=timeout + _GRACE_S)
        except concurrent.futures.TimeoutError:
            return _late_report(timeout)

    async def acheck(self) -> HealthReport:
        """:meth:`check` for async code: waits on the round without blocking the loop."""
        future, timeout = self._current_round()
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                          timeout + _GRACE_S)
        except TimeoutError:
            return _late_report(timeout)

    def _probe(self, alias: str, timeout: float) -> tuple[
            concurrent.futures.Future[ProbeResult], float]:
        """The probe of ``alias`` in flight, or a new one in a daemon thread.

        A probe stuck on a stopped server is reused rather than duplicated: a blackholed
        database then holds one thread and one socket, not one per round.
        """
        with self._lock:
            running = self._probes.get(alias)
            if running is not None and not running[0].done():
                return running
            future: concurrent.futures.Future[ProbeResult] = concurrent.futures.Future()
            started = time.monotonic()
            self._probes[alias] = (future, started)
            self.probes_started += 1

        def run() -> None:
            try:
                future.set_result(probe_database(alias, timeout))
            except Exception as error:  # a bug or a settings error: report, never raise
                logger.exception("health probe of %r failed unexpectedly", alias)
                future.set_result(ProbeResult(ok=False, error=type(error).__name__))

        threading.Thread(target=run, name=f"poolkit-health-{alias}", daemon=True).start()
        return future, started

    def _run_round(self, round_: concurrent.futures.Future[HealthReport],
                   config: HealthSettings) -> None:
        started = time.perf_counter()
        try:
            report = self._round_report(config, started)
        except Exception as error:
            logger.exception("health round failed")
            round_.set_exception(error)
            return
        with self._lock:
            if self._round is round_:
                self._cached, self._cached_at = report, time.monotonic()
        self._log_changes(report)
        round_.set_result(report)

    def _round_report(self, config: HealthSettings, started: float) -> HealthReport:
        aliases = config.probed_aliases()
        probes = {alias: self._probe(alias, config.timeout) for alias in aliases}
        concurrent.futures.wait([future for future, _ in probes.values()],
                                timeout=config.timeout)
        results: dict[str, ProbeResult] = {}
        for alias, (future, probe_started) in probes.items():
            if future.done():
                results[alias] = future.result()
            else:
                waited = time.monotonic() - probe_started
                results[alias] = ProbeResult(
                    ok=False, error=f"no answer within {config.timeout:g} s"
                    + (f" (probe waiting for {waited:.0f} s)" if waited > 2 * config.timeout
                       else ""))
        pools = {alias: _pool_figures(pool_stats(alias), config.saturation)
                 for alias in aliases}
        async_pools: dict[str, Mapping[str, Any] | None] = {}
        for alias in aliases:
            stats = pool_stats(alias, kind="async")
            async_pools[alias] = _pool_figures(stats, config.saturation) if stats.built else None
        routing = {alias: _routing_view(alias) for alias in aliases}
        return evaluate(config, results, pools, async_pools, routing, started=started)

    def _log_changes(self, report: HealthReport) -> None:
        """One log line per database whose status changed: an outage is not a log flood."""
        for alias, verdict in report.databases.items():
            before = self._last_status.get(alias)
            self._last_status[alias] = verdict.status
            if verdict.status == before or (before is None and verdict.status == HEALTHY):
                continue
            log = logger.info if verdict.status == HEALTHY else logger.warning
            log("database %r is %s (was %s): %s", alias, verdict.status, before or "unknown",
                "; ".join(verdict.reasons) or "ok")


# Time a waiter allows a round beyond its own deadline (building the report, thread start-up).
_GRACE_S = 0.25


def _late_report(timeout: float) -> HealthReport:
    """The report when a round did not finish in time: unhealthy, with no database detail."""
    return HealthReport(status=UNHEALTHY,
                        reasons=(f"health round did not finish within {timeout:g} s",),
                        databases={}, checked_at=time.time(), duration_ms=_ms(timeout))


#: The process-wide checker behind the views and the django-health-check backend.
checker = HealthChecker()


@on_reload
def _forget_cached_report() -> None:
    checker.clear()


# A pre-forking server (gunicorn --preload) may import this module before it forks.
os.register_at_fork(after_in_child=checker.after_fork_in_child)


def with_overrides(config: HealthSettings, **changes: Any) -> HealthSettings:
    """``config`` with some fields replaced (``poolcheck``'s ``--database``/``--timeout``)."""
    return replace(config, **{key: value for key, value in changes.items() if value is not None})
