"""What the dashboard shows, gathered without ever waiting on a pool or a hung server.

Sources, and how each is read:

- this process's pools: :func:`~django_poolkit.api.pool_stats` (no I/O), plus wait and hold
  histograms fed by the ``pool_checkout``/``pool_checkin`` signals once :func:`install` ran
  (importing the dashboard's URLs does it);
- a time series of checked-out, waiting and wait time per alias, sampled every
  :data:`SAMPLE_INTERVAL_S` by a daemon thread and kept for :data:`SERIES_POINTS` samples;
- the router's shared replica state (no I/O; its own prober does the probing);
- the cached health report, the server's view of every alias (the bounded operations
  connection ``poolkit-ops:<alias>:<pid>`` that ``poolstatus`` uses) and the ``poolplan``
  verdict built from it: each read in a background thread, at most one in flight per source,
  reused for :data:`SERVER_TTL_S`. A page waits at most :data:`WAIT_S` for those reads and
  then shows what it has, saying how old it is or why it is missing;
- with ``PROMETHEUS_MULTIPROC_DIR`` set, every live worker's pool metrics summed from the
  multiprocess directory.

The document :func:`collect` returns is what the JSON endpoint serves. It never holds a
password, a token or a connection string: targets are host, port, database and user.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.db import connections

from .. import health, signals
from ..api import pool_stats
from ..conf import KNOBS, PoolSettings, get_settings, shown_value
from ..engines import engine_registry
from ..engines.params import connection_target
from ..exceptions import ServerUnreachable
from ..ops.bouncer import BouncerSnapshot, admin_target, read_bouncer
from ..ops.deployment import Deployment, deployment_settings, server_of
from ..ops.plan import build_plan
from ..ops.serverinfo import ServerLimits, ServerSnapshot, read_server
from ..routing.settings import routing_settings
from ..routing.state import replica_state
from ..stats import PoolKind, PoolStats
from . import workers
from .reads import Reading, Refreshed

__all__ = [
    "HOLD_BUCKETS_MS",
    "SAMPLE_INTERVAL_S",
    "SERIES_POINTS",
    "SERVER_TTL_S",
    "WAIT_BUCKETS_MS",
    "WAIT_S",
    "after_fork_in_child",
    "collect",
    "ensure_sampler",
    "install",
    "reset",
    "series_for",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest a page waits for the background reads (server, health) before it renders.
WAIT_S = 0.6
#: How long a server snapshot (and the plan built from it) is reused before it is read again.
SERVER_TTL_S = 5.0
#: How long the health report is reused before the (cached, bounded) checker is asked again.
HEALTH_TTL_S = 1.0
#: Server queries' own deadline (statement timeout; the connect is bounded too).
SERVER_TIMEOUT_S = 2.0
#: The time series: one sample every SAMPLE_INTERVAL_S, the last SERIES_POINTS kept (6 min).
SAMPLE_INTERVAL_S = 2.0
SERIES_POINTS = 180
#: Histogram bucket upper bounds, milliseconds (the last bucket is everything above).
WAIT_BUCKETS_MS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                   2500.0, 5000.0)
HOLD_BUCKETS_MS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 30000.0,
                   60000.0)

#: Settings shown in the main table; the others appear there only when not at their default.
MAIN_SETTINGS = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")


# Histograms ----------------------------------------------------------------------------------


class _Histogram:
    """Counts per bucket (upper bounds in ms; the last bucket is everything above)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)

    def observe(self, value_ms: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_ms)] += 1

    def as_rows(self) -> list[dict[str, Any]]:
        """``[{"le": bound or None, "label", "count", "share"}]`` for the table and the bars."""
        total = sum(self.counts) or 1
        rows = []
        lower = 0.0
        for index, count in enumerate(self.counts):
            upper = self.bounds[index] if index < len(self.bounds) else None
            label = (f"{_ms_text(lower)} to {_ms_text(upper)}" if upper is not None
                     else f"over {_ms_text(lower)}")
            rows.append({"le": upper, "label": label, "count": count,
                         "share": round(count / total, 4)})
            lower = upper if upper is not None else lower
        return rows


def _ms_text(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


class _State:
    """Everything the dashboard keeps per process; replaced whole in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waits: dict[tuple[str, str], _Histogram] = {}
        self.holds: dict[tuple[str, str], _Histogram] = {}
        self.series: collections.deque[dict[str, Any]] = collections.deque(maxlen=SERIES_POINTS)
        self.last_counters: dict[str, tuple[int, float]] = {}
        self.sampler: threading.Thread | None = None
        self.servers: dict[str, Refreshed[ServerSnapshot]] = {}
        self.bouncers: dict[str, Refreshed[BouncerSnapshot]] = {}
        # The checker caches its own report for cache_ttl: asking it often costs nothing.
        self.health: Refreshed[health.HealthReport] = Refreshed(
            health.checker.check, HEALTH_TTL_S, "health")
        self.config_id: int | None = None


_state = _State()
_installed = False
_install_lock = threading.Lock()


def after_fork_in_child() -> None:
    """A forked child starts with no histograms, series or reads of its parent (called by
    the app's one at-fork hook)."""
    global _state
    _state = _State()


def _observe(state: _State, histograms: dict[tuple[str, str], _Histogram],
             key: tuple[str, str], bounds: tuple[float, ...], value_ms: float) -> None:
    with state.lock:
        found = histograms.get(key)
        if found is None:
            found = histograms[key] = _Histogram(bounds)
        found.observe(value_ms)


def _on_checkout(sender: Any, *, alias: str, kind: str, wait_ms: float | None = None,
                 **kwargs: Any) -> None:
    if wait_ms is not None:
        state = _state
        _observe(state, state.waits, (alias, kind), WAIT_BUCKETS_MS, wait_ms)


def _on_checkin(sender: Any, *, alias: str, kind: str, hold_ms: float | None = None,
                **kwargs: Any) -> None:
    if hold_ms is not None:
        state = _state
        _observe(state, state.holds, (alias, kind), HOLD_BUCKETS_MS, hold_ms)


def install() -> None:
    """Connect the histograms to the pool signals, once per process (cheap receivers)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        signals.pool_checkout.connect(_on_checkout, weak=False,
                                      dispatch_uid="poolkit-dashboard-checkout")
        signals.pool_checkin.connect(_on_checkin, weak=False,
                                     dispatch_uid="poolkit-dashboard-checkin")
        _installed = True


def reset() -> None:
    """Forget histograms, series and cached reads (tests; a configuration change)."""
    global _state
    _state = _State()


# The time series -----------------------------------------------------------------------------


def _sample(state: _State, now: float) -> None:
    """Append one point: per alias, checked out and waiting (sync + async pools) and the mean
    checkout wait since the previous point."""
    point: dict[str, Any] = {"t": now, "aliases": {}}
    for alias in get_settings().pools:
        checked_out = waiting = checkouts = 0
        wait_total = 0.0
        for kind in _kinds(alias):
            stats = pool_stats(alias, kind=kind)
            checked_out += stats.pool_checked_out
            waiting += stats.pool_waiting
            checkouts += stats.checkouts
            wait_total += stats.checkout_wait_ms_total
        before = state.last_counters.get(alias)
        state.last_counters[alias] = (checkouts, wait_total)
        wait_ms = 0.0
        if before is not None and checkouts > before[0]:
            wait_ms = (wait_total - before[1]) / (checkouts - before[0])
        point["aliases"][alias] = {"checked_out": checked_out, "waiting": waiting,
                                   "wait_ms": round(wait_ms, 3)}
    with state.lock:
        state.series.append(point)


def _sampler(state: _State) -> None:
    while state is _state:
        try:
            with state.lock:
                last = state.series[-1]["t"] if state.series else 0.0
            now = time.time()
            if now - last >= SAMPLE_INTERVAL_S * 0.9:
                _sample(state, now)
        except Exception:
            logger.exception("dashboard: sampling the pools failed")
        time.sleep(SAMPLE_INTERVAL_S)


def ensure_sampler() -> None:
    """Start this process's sampler thread if it is not running (after a fork, again)."""
    state = _state
    thread = state.sampler
    if thread is not None and thread.is_alive():
        return
    with state.lock:
        if state.sampler is not None and state.sampler.is_alive():
            return
        state.sampler = threading.Thread(target=_sampler, args=(state,),
                                         name="poolkit-dashboard-sampler", daemon=True)
        state.sampler.start()


def _kinds(alias: str) -> tuple[PoolKind, ...]:
    return ("sync", "async") if engine_registry.built(alias, "async") is not None else ("sync",)


# Per-alias figures ---------------------------------------------------------------------------


def _settings(pool: PoolSettings) -> list[dict[str, Any]]:
    rows = []
    for name in KNOBS:
        origin = pool.origins.get(name, "default")
        rows.append({"name": name, "value": shown_value(name, getattr(pool, name)),
                     "origin": origin,
                     "main": name in MAIN_SETTINGS or origin != "default"})
    return rows


def _pool(stats: PoolStats, state: _State) -> dict[str, Any]:
    data = stats.as_dict()
    counters = data["counters"]
    counters["checkout_wait_ms_mean"] = round(stats.checkout_wait_ms_mean, 3)
    counters["hold_ms_mean"] = round(stats.hold_ms_total / stats.checkins, 3) if (
        stats.checkins) else 0.0
    gauges = data["gauges"]
    capacity = gauges["pool_capacity"]
    gauges["saturated"] = bool(stats.built and capacity is not None
                               and stats.pool_checked_out >= capacity)
    with state.lock:
        wait = state.waits.get((stats.alias, stats.kind))
        hold = state.holds.get((stats.alias, stats.kind))
        data["wait_histogram"] = (wait or _Histogram(WAIT_BUCKETS_MS)).as_rows()
        data["hold_histogram"] = (hold or _Histogram(HOLD_BUCKETS_MS)).as_rows()
    return data


def _server(alias: str, state: _State) -> Refreshed[ServerSnapshot]:
    found = state.servers.get(alias)
    if found is None:
        with state.lock:
            found = state.servers.setdefault(alias, Refreshed(
                lambda: read_server(alias, SERVER_TIMEOUT_S), SERVER_TTL_S, f"server-{alias}"))
    return found


def _bouncer(alias: str, state: _State) -> Refreshed[BouncerSnapshot]:
    found = state.bouncers.get(alias)
    if found is None:
        with state.lock:
            found = state.bouncers.setdefault(alias, Refreshed(
                lambda: read_bouncer(alias, SERVER_TIMEOUT_S), SERVER_TTL_S,
                f"pgbouncer-{alias}"))
    return found


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _clusters(now: float) -> list[dict[str, Any]]:
    routing = routing_settings()
    if routing is None:
        return []
    # The router starts its prober on the first routed read; the page may come first.
    replica_state.ensure_prober(routing)
    clusters = []
    for cluster in replica_state.snapshot():
        data = cluster.as_dict()
        for replica, status in zip(data["replicas"], cluster.replicas, strict=True):
            replica["out_for_s"] = (round(now - status.out_since, 1)
                                    if status.out_since is not None else None)
            replica["probed_ago_s"] = (round(now - status.last_probe_at, 1)
                                       if status.last_probe_at is not None else None)
        data["last_fallback_ago_s"] = (round(now - cluster.last_fallback_at, 1)
                                       if cluster.last_fallback_at is not None else None)
        data["probe_interval"] = routing.probe_interval
        clusters.append(data)
    return clusters


def _plan(config: Any, readings: Mapping[str, Reading[ServerSnapshot]],
          bouncers: Mapping[str, Reading[BouncerSnapshot]]) -> dict[str, Any]:
    """The ``poolplan`` verdict, from the limits in the cached server and PgBouncer snapshots
    (no I/O)."""
    declared = deployment_settings()
    deployment = declared or Deployment()

    def limits(alias: str) -> ServerLimits:
        reading = readings.get(alias)
        if reading is None or reading.value is None:
            raise ServerUnreachable(reading.error if reading and reading.error
                                    else "not read yet")
        return reading.value.limits

    def bouncer(alias: str) -> BouncerSnapshot:
        reading = bouncers.get(alias)
        if reading is None or reading.value is None:
            raise ServerUnreachable(reading.error if reading and reading.error
                                    else "not read yet")
        return reading.value

    plan = build_plan(deployment, config, limits, bouncer=bouncer)
    data = plan.as_dict()
    data["declared"] = declared is not None
    return data


def collect(*, wait: float = WAIT_S) -> dict[str, Any]:
    """The dashboard's document (the JSON endpoint's body). Waits at most ``wait`` seconds
    for background reads started now; never touches an application pool."""
    state = _state
    config = get_settings()
    if state.config_id != id(config):
        # A configuration reload (tests, override_settings) forgets reads of the old one.
        state.servers = {}
        state.bouncers = {}
        state.config_id = id(config)
    ensure_sampler()
    started = time.monotonic()
    pending: list[threading.Event] = []
    health_event = state.health.start()
    if health_event is not None:
        pending.append(health_event)
    servers: dict[str, Refreshed[ServerSnapshot]] = {}
    bouncers: dict[str, Refreshed[BouncerSnapshot]] = {}
    for alias, pool in config.pools.items():
        if server_of(alias, pool) is not None:
            servers[alias] = _server(alias, state)
            event = servers[alias].start()
            if event is not None:
                pending.append(event)
        if pool.pgbouncer is not None:
            bouncers[alias] = _bouncer(alias, state)
            event = bouncers[alias].start()
            if event is not None:
                pending.append(event)
    for event in pending:
        event.wait(max(0.0, wait - (time.monotonic() - started)))

    now = time.time()
    with state.lock:
        last = state.series[-1]["t"] if state.series else 0.0
    if now - last >= 1.0:
        _sample(state, now)

    health_reading = state.health.read()
    report = health_reading.value
    readings = {alias: refreshed.read() for alias, refreshed in servers.items()}
    bouncer_readings = {alias: refreshed.read() for alias, refreshed in bouncers.items()}
    databases = []
    for alias, pool in config.pools.items():
        reading = readings.get(alias)
        verdict = report.databases.get(alias) if report is not None else None
        databases.append({
            "alias": alias,
            "server": server_of(alias, pool),
            "target": connection_target(alias, pool),
            "engine_only": alias not in connections.settings,
            "pgbouncer": pool.pgbouncer,
            "pools": [_pool(pool_stats(alias, kind=kind), state) for kind in _kinds(alias)],
            "settings": _settings(pool),
            "health": None if verdict is None else {
                "status": verdict.status, "reasons": list(verdict.reasons),
                "role": verdict.role, "latency_ms": verdict.latency_ms,
                "lag_s": verdict.lag_s, "error": verdict.error},
            "server_status": None if reading is None else {
                **reading.describe(),
                "snapshot": reading.value.as_dict() if reading.value is not None else None},
            "pgbouncer_status": _bouncer_status(alias, pool, bouncer_readings.get(alias)),
        })
    with state.lock:
        points = list(state.series)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "health": {**health_reading.describe(),
                   "status": report.status if report is not None else None,
                   "reasons": list(report.reasons) if report is not None else []},
        "databases": databases,
        "clusters": _clusters(now),
        "plan": _plan(config, readings, bouncer_readings),
        "workers": workers.summary(),
        "series": {"interval_s": SAMPLE_INTERVAL_S, "capacity": SERIES_POINTS,
                   "points": [{"t": _iso(point["t"]), "aliases": point["aliases"]}
                              for point in points]},
    }


def _bouncer_status(alias: str, pool: PoolSettings,
                    reading: Reading[BouncerSnapshot] | None) -> dict[str, Any] | None:
    """PgBouncer's view of an alias with ``pgbouncer`` set: the reading's freshness, where the
    console is (never a password) and the snapshot (None until read)."""
    if reading is None:
        return None
    return {**reading.describe(), "admin": admin_target(alias, pool),
            "snapshot": reading.value.as_dict() if reading.value is not None else None}


def series_for(document: Mapping[str, Any], alias: str) -> list[dict[str, Any]]:
    """The time series points of one alias (missing points as zeros)."""
    empty = {"checked_out": 0, "waiting": 0, "wait_ms": 0.0}
    return [{"t": point["t"], **point["aliases"].get(alias, empty)}
            for point in document["series"]["points"]]

