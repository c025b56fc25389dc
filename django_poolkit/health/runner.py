"""The checker: rounds of probes, bounded by ``timeout``, cached for ``cache_ttl`` and shared
by concurrent callers (single-flight). :data:`checker` is the process-wide instance behind
the views, metrics and the django-health-check backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .._threads import in_daemon_thread
from ..api import pool_stats
from ..conf import on_reload
from .probe import ProbeResult, _ms, probe_database
from .report import HealthReport, _pool_figures, _routing_view, evaluate
from .settings import HEALTHY, UNHEALTHY, HealthSettings, health_settings

__all__ = ["HealthChecker", "checker"]

logger = logging.getLogger(__name__)


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
        def run() -> ProbeResult:
            try:
                return probe_database(alias, timeout)
            except Exception as error:  # a bug or a settings error: report, never raise
                logger.exception("health probe of %r failed unexpectedly", alias)
                return ProbeResult(ok=False, error=type(error).__name__)

        with self._lock:
            running = self._probes.get(alias)
            if running is not None and not running[0].done():
                return running
            future = in_daemon_thread(run, f"poolkit-health-{alias}")
            started = time.monotonic()
            self._probes[alias] = (future, started)
            self.probes_started += 1
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


