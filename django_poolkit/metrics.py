"""Prometheus metrics for every pool, and a protected view to scrape them.

Install the extra (``pip install django-poolkit[prometheus]``) and mount the view::

    path("metrics/", include("django_poolkit.metrics"))

Labels are ``alias`` and ``kind`` (``sync``/``async``) only, so the number of series is fixed
by the configuration, never by traffic. What is exported:

- gauges ``poolkit_pool_size``, ``poolkit_pool_checked_out``, ``poolkit_pool_checked_in``,
  ``poolkit_pool_overflow``, ``poolkit_pool_capacity`` (absent when overflow is unlimited),
  ``poolkit_pool_waiting``;
- counters ``poolkit_connections_opened_total``, ``poolkit_connections_closed_total``,
  ``poolkit_connect_errors_total``, ``poolkit_checkouts_total``, ``poolkit_checkins_total``,
  ``poolkit_invalidations_total``, ``poolkit_timeouts_total``;
- histograms ``poolkit_checkout_wait_seconds`` and ``poolkit_connection_hold_seconds``;
- from the health probes (``POOLKIT["HEALTH"]``, cached and bounded like the health views):
  ``poolkit_database_up{alias}``, ``poolkit_database_status{alias}`` (0 healthy, 1 degraded,
  2 unhealthy) and ``poolkit_replica_lag_seconds{alias}`` (the report's ``lag_s``: for a
  routed replica, the router's own measurement);
- from the router's replica state (``POOLKIT["ROUTING"]``, this process's view):
  ``poolkit_replica_in_rotation{cluster,alias}`` and ``poolkit_router_fallbacks_total{cluster}``.

Two process models:

- **Each process exposes its own** (the default). Gauges and counters are read from
  :func:`~django_poolkit.all_pool_stats` at scrape time by a collector, which costs nothing
  between scrapes; the histograms are fed by the ``pool_checkout``/``pool_checkin`` signals.
  Right for one process per container, or when every worker is scraped on its own.
- **Gunicorn's workers summed** (``PROMETHEUS_MULTIPROC_DIR`` set before the server starts):
  prometheus_client's multiprocess mode. Every metric is then fed by the pool signals and
  written to the shared directory, gauges as ``livesum`` (the sum over live workers), and
  whichever worker answers the scrape reports the whole server. Use the ``child_exit`` hook
  of :mod:`django_poolkit.gunicorn` so dead workers' gauges are dropped.

The view answers callers that send ``POOLKIT["HEALTH"]["token"]`` in its ``token_header`` (or
as ``Authorization: Bearer <token>``, which Prometheus' ``authorization`` setting sends),
active staff users, and everyone when ``DEBUG`` is on; others get 403. Tokens are compared
with ``hmac.compare_digest``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        multiprocess,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImproperlyConfigured(
        "django_poolkit.metrics needs prometheus-client: pip install "
        "'django-poolkit[prometheus]'") from error

from . import health, signals
from .api import all_pool_stats, pool_stats
from .exceptions import PoolkitConfigurationError
from .health.access import may_see_details_sync
from .health.views import EveryAlias
from .stats import COUNTERS as POOL_COUNTERS
from .stats import PoolKind, PoolStats

__all__ = [
    "COUNTERS",
    "GAUGES",
    "HOLD_BUCKETS",
    "WAIT_BUCKETS",
    "PoolCollector",
    "install",
    "metrics_view",
    "multiprocess_mode",
    "registry",
    "urlpatterns",
]

logger = logging.getLogger(__name__)

LABELS = ("alias", "kind")

#: Gauge metric name -> (``PoolStats`` key, help text).
GAUGES: dict[str, tuple[str, str]] = {
    "poolkit_pool_size": ("pool_size", "Connections the pool keeps open (pool_size)."),
    "poolkit_pool_checked_out": ("pool_checked_out", "Connections in use right now."),
    "poolkit_pool_checked_in": ("pool_checked_in", "Idle connections in the pool."),
    "poolkit_pool_overflow": ("pool_overflow", "Connections open beyond pool_size."),
    "poolkit_pool_capacity": ("pool_capacity", "pool_size + max_overflow."),
    "poolkit_pool_waiting": ("pool_waiting", "Callers inside a checkout right now (queued "
                             "for a connection or opening one)."),
}

#: Counter metric name (without ``_total``) -> (``PoolStats`` key, help text), from the
#: counters' one declaration (:data:`django_poolkit.stats.COUNTERS`).
COUNTERS: dict[str, tuple[str, str]] = {
    counter.metric: (counter.key, counter.help) for counter in POOL_COUNTERS
    if counter.metric is not None
}

#: Seconds; a healthy pool hands out connections in well under a millisecond.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0)
#: Seconds a connection stays checked out: a request, a task, or a leak.
HOLD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0)

_STATUS_VALUE = {health.HEALTHY: 0, health.DEGRADED: 1, health.UNHEALTHY: 2}


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes metrics to ``PROMETHEUS_MULTIPROC_DIR``."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class PoolCollector(Collector):
    """Gauges and counters of every pool of this process, read at scrape time.

    Register it in any registry (``REGISTRY.register(PoolCollector())``) to add poolkit's
    figures to an existing exporter. ``health=True`` adds the health probes' verdicts and
    the router's replica state.
    """

    def __init__(self, *, pools: bool = True, health: bool = True) -> None:
        self.pools = pools
        self.health = health

    def describe(self) -> Iterable[Metric]:
        """The families without their samples, read from no state: a registry describes a
        collector when it is registered (at import of the metrics URLconf, so during
        ``manage.py check``), which must not build a pool nor run a probe."""
        families = list(self._pools(()) if self.pools else ())
        families += list(self._health({}) if self.health else ())
        families += list(self._routing(()) if self.health else ())
        return families

    def collect(self) -> Iterable[Metric]:
        """Yield one family per metric; an error in poolkit's state drops the families
        rather than failing the whole scrape."""
        try:
            families = list(self._pools() if self.pools else ())
            families += list(self._health() if self.health else ())
            families += list(self._routing() if self.health else ())
        except PoolkitConfigurationError as error:
            # manage.py check and the first request report it in full: one line here.
            logger.error("poolkit metrics: not collecting, the configuration is broken "
                         "(%d problem(s); run manage.py check)", len(error.problems))
            return []
        except Exception:
            logger.exception("poolkit metrics: collecting failed")
            return []
        return families

    def _pools(self, snapshots: Sequence[PoolStats] | None = None) -> Iterator[Metric]:
        if snapshots is None:
            snapshots = all_pool_stats()
        for name, (key, text) in GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=LABELS)
            for stats in snapshots:
                value = getattr(stats, key)
                if value is not None:
                    family.add_metric([stats.alias, stats.kind], value)
            yield family
        for name, (key, text) in COUNTERS.items():
            counter = CounterMetricFamily(name, text, labels=LABELS)
            for stats in snapshots:
                counter.add_metric([stats.alias, stats.kind], getattr(stats, key))
            yield counter

    def _routing(self, clusters: Sequence[Any] | None = None) -> Iterator[Metric]:
        """The router's shared replica state (no I/O: its prober keeps it current)."""
        from .routing.state import replica_state

        if clusters is None:
            clusters = replica_state.snapshot()
        rotation = GaugeMetricFamily(
            "poolkit_replica_in_rotation", "1 when the router sends reads to the replica.",
            labels=["cluster", "alias"])
        fallbacks = CounterMetricFamily(
            "poolkit_router_fallbacks", "Reads sent to the primary because no replica "
            "qualified.", labels=["cluster"])
        for cluster in clusters:
            fallbacks.add_metric([cluster.name], cluster.fallbacks)
            for replica in cluster.replicas:
                rotation.add_metric([cluster.name, replica.alias], int(replica.in_rotation))
        yield from (rotation, fallbacks)

    def _health(self, databases: Mapping[str, Any] | None = None) -> Iterator[Metric]:
        if databases is None:
            databases = health.checker.check().databases
        up = GaugeMetricFamily("poolkit_database_up",
                               "1 when the health probe reached the database.", labels=["alias"])
        status = GaugeMetricFamily("poolkit_database_status",
                                   "0 healthy, 1 degraded, 2 unhealthy.", labels=["alias"])
        lag = GaugeMetricFamily("poolkit_replica_lag_seconds",
                                "Replay lag of a replica, seconds.", labels=["alias"])
        for alias, verdict in databases.items():
            up.add_metric([alias], 0 if verdict.error else 1)
            status.add_metric([alias], _STATUS_VALUE[verdict.status])
            if verdict.lag_s is not None:
                lag.add_metric([alias], verdict.lag_s)
        yield from (up, status, lag)


class _EventMetrics:
    """Metrics fed by the pool signals: always the histograms, and in multiprocess mode the
    counters and ``livesum`` gauges too (a collector cannot see other workers)."""

    def __init__(self, target: CollectorRegistry | None, everything: bool) -> None:
        self.everything = everything
        self.wait = Histogram("poolkit_checkout_wait_seconds",
                              "Time a checkout waited for a connection.", LABELS,
                              buckets=WAIT_BUCKETS, registry=target)
        self.hold = Histogram("poolkit_connection_hold_seconds",
                              "Time a connection stayed checked out.", LABELS,
                              buckets=HOLD_BUCKETS, registry=target)
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        if everything:
            for name, (_, text) in COUNTERS.items():
                self.counters[name] = Counter(name, text, LABELS, registry=target)
            for name, (_, text) in GAUGES.items():
                self.gauges[name] = Gauge(name, text, LABELS, registry=target,
                                          multiprocess_mode="livesum")

    def count(self, name: str, alias: str, kind: PoolKind, *, returning: int = 0) -> None:
        if self.everything:
            self.counters[name].labels(alias, kind).inc()
            self.refresh(alias, kind, returning=returning)

    def refresh(self, alias: str, kind: PoolKind, *, returning: int = 0) -> None:
        """Set the gauges from the pool. ``returning`` is 1 inside a checkin: SQLAlchemy
        sends the event before the connection is back in the pool's queue."""
        stats = pool_stats(alias, kind=kind)
        values = {key: getattr(stats, key) for key, _ in GAUGES.values()}
        values["pool_checked_out"] = max(0, values["pool_checked_out"] - returning)
        values["pool_checked_in"] += returning
        for name, (key, _) in GAUGES.items():
            value = values[key]
            self.gauges[name].labels(alias, kind).set(value if value is not None else 0)


_lock = threading.Lock()
_events: _EventMetrics | None = None
_registry: CollectorRegistry | None = None


def _guarded(handler: Any) -> Any:
    """Signal receivers run inside pool events: they must never raise."""

    def receive(sender: Any, **kwargs: Any) -> None:
        try:
            handler(**kwargs)
        except Exception:
            logger.exception("poolkit metrics: %s failed", handler.__name__)

    receive.__name__ = handler.__name__
    return receive


def _on_checkout(*, alias: str, kind: PoolKind, wait_ms: float | None = None,
                 **kwargs: Any) -> None:
    events = _events
    if events is None:
        return
    if wait_ms is not None:
        events.wait.labels(alias, kind).observe(wait_ms / 1000.0)
    events.count("poolkit_checkouts", alias, kind)


def _on_checkin(*, alias: str, kind: PoolKind, hold_ms: float | None = None,
                **kwargs: Any) -> None:
    events = _events
    if events is None:
        return
    if hold_ms is not None:
        events.hold.labels(alias, kind).observe(hold_ms / 1000.0)
    events.count("poolkit_checkins", alias, kind, returning=1)


def _counting(name: str) -> Any:
    def on_event(*, alias: str, kind: PoolKind, **kwargs: Any) -> None:
        if _events is not None:
            _events.count(name, alias, kind)

    on_event.__name__ = f"on_{name}"
    return on_event


_RECEIVERS = (
    (signals.pool_checkout, _guarded(_on_checkout)),
    (signals.pool_checkin, _guarded(_on_checkin)),
    (signals.pool_connect, _guarded(_counting("poolkit_connections_opened"))),
    (signals.pool_close, _guarded(_counting("poolkit_connections_closed"))),
    (signals.pool_invalidate, _guarded(_counting("poolkit_invalidations"))),
    (signals.pool_timeout, _guarded(_counting("poolkit_timeouts"))),
)


def install() -> CollectorRegistry | None:
    """Create the metrics and connect the pool signals, once per process.

    Returns the registry the view serves, or None in multiprocess mode (the view then reads
    ``PROMETHEUS_MULTIPROC_DIR``). Called on import of this module; call it early (the
    gunicorn hooks do, in ``post_fork``) so the histograms see the first requests too.
    """
    global _events, _registry
    with _lock:
        if _events is not None:
            return _registry
        if multiprocess_mode():
            _events = _EventMetrics(None, everything=True)
        else:
            _registry = CollectorRegistry(auto_describe=True)
            _registry.register(PoolCollector(health=False))
            _events = _EventMetrics(_registry, everything=False)
        for signal, receiver in _RECEIVERS:
            signal.connect(receiver, weak=False, dispatch_uid=f"poolkit-metrics-{id(receiver)}")
        return _registry


def registry() -> CollectorRegistry:
    """The registry to expose now: this process's, or the multiprocess directory's."""
    own = install()
    # Not auto_describe: describing would run the collectors (and the health probes) twice.
    target = CollectorRegistry(auto_describe=False)
    if own is None:
        multiprocess.MultiProcessCollector(target)  # type: ignore[no-untyped-call]
        target.register(PoolCollector(pools=False))
        return target
    for collector in (own, PoolCollector(pools=False)):
        target.register(collector)
    return target


def allowed(request: HttpRequest) -> bool:
    """Whether this caller may read the metrics: the policy of the health details."""
    return may_see_details_sync(request, health.health_settings())


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition, or 403 for callers without the token."""
    if not allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


# A scrape must not open a transaction (ATOMIC_REQUESTS) on the application's database.
metrics_view._non_atomic_requests = EveryAlias()  # type: ignore[attr-defined]


app_name = "poolkit_metrics"
urlpatterns = [path("", metrics_view, name="metrics")]

install()
