"""The one shared replica state: health, lag, exclusion and readmission, per process.

The router, ``read_session()``, the health views, ``poolstatus`` and metrics all read
:data:`replica_state`, so they tell the same story about which replica is out and why. A
background prober (one per process, started by the first routed read) refreshes it through
the application's pools, never on the request path. The rules (down, not_replica, lagging
with hysteresis, unknown) are in the README, "Replica health and fallback".
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from ..conf import on_reload
from ..exceptions import NoHealthyReplica, describe_error
from ..ops.serverinfo import PRIMARY_POSITION_SQL, ROLE_AND_LAG_SQL, Measurement, measure
from ..pinning import format_lsn, parse_lsn
from ..signals import replica_state_changed
from ..stats import counters_for
from .settings import ClusterConfig, RoutingSettings, routing_settings
from .status import ClusterStatus, ReplicaStatus, RotationStatus

__all__ = [
    "ClusterStatus",
    "NoHealthyReplica",
    "ReplicaState",
    "ReplicaStatus",
    "replica_state",
]

logger = logging.getLogger(__name__)

@dataclass
class _Replica:
    alias: str
    cluster: str
    weight: float
    status: RotationStatus = "unknown"
    reason: str | None = None
    out_since: float | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    replay_lsn: int | None = None
    replay_paused: bool | None = None
    last_probe_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    failures: int = 0
    reads: int = 0
    caught_up_at: float | None = None
    # The last successful probe's measurement (None until one, and after a failed probe).
    measured: Measurement | None = None
    # The pool's connect_errors when last probed; more since means a connection failed.
    errors_seen: int | None = None

    @property
    def in_rotation(self) -> bool:
        return self.status in ("unknown", "healthy")


@dataclass
class _Cluster:
    config: ClusterConfig
    replicas: dict[str, _Replica]
    counter: itertools.count[int] = field(default_factory=itertools.count)
    primary_lsn: int | None = None
    primary_probed_at: float | None = None
    primary_error: str | None = None
    fallbacks: int = 0
    primary_reads: int = 0
    last_fallback_at: float | None = None
    last_fallback_reason: str | None = None


def _pool_errors(alias: str) -> int:
    """Connections the pools of ``alias`` (sync and async) failed to open, since start."""
    return int(counters_for(alias, "sync").get("connect_errors")
               + counters_for(alias, "async").get("connect_errors"))


_PRIMARY_SQL = text(PRIMARY_POSITION_SQL)
_REPLICA_SQL = text(ROLE_AND_LAG_SQL)


class ReplicaState:
    """Health and lag of every replica of every cluster in this process.

    Thread-safe. Reads (:meth:`candidates`) only look at cached values; :meth:`refresh` and the
    background prober do the I/O. Rebuilt from the configuration when it changes.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._routing: RoutingSettings | None = None
        self._clusters: dict[str, _Cluster] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Serialises probes: a caller of refresh() waits for a probe already running.
        self._probe_lock = threading.Lock()
        # State changes made under the lock, announced (signal) once it is released.
        self._changes: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<ReplicaState clusters={sorted(self._clusters)}>"

    # Configuration -----------------------------------------------------------------------

    def _current(self, routing: RoutingSettings | None = None) -> dict[str, _Cluster]:
        if routing is None:
            routing = routing_settings()
        if routing is self._routing:
            return self._clusters
        with self._lock:
            if routing is not self._routing:
                self._clusters = {
                    name: _Cluster(config, {r.alias: _Replica(r.alias, name, r.weight)
                                            for r in config.replicas})
                    for name, config in (routing.clusters.items() if routing else ())
                }
                self._routing = routing
            return self._clusters

    def reset(self) -> None:
        """Forget every measurement and stop the prober (on configuration reload, and for
        tests whose test database just appeared on the replica)."""
        self.stop()
        with self._lock:
            self._routing = None
            self._clusters = {}

    # Reading -----------------------------------------------------------------------------

    def candidates(self, cluster: ClusterConfig, min_lsn: int | None = None,
                   routing: RoutingSettings | None = None) -> list[tuple[str, float]]:
        """``(alias, weight)`` of the replicas of ``cluster`` that may serve a read now; with
        ``min_lsn``, only those whose last probed replay position is at least that.

        A replica whose pool failed to open a connection since its last probe is taken out
        here, at once (reading a counter, no I/O); the next good probe brings it back.
        """
        found = self._current(routing).get(cluster.name)
        if found is None:
            return []
        result = []
        for r in found.replicas.values():
            if not r.in_rotation:
                continue
            if r.errors_seen is not None:
                errors = _pool_errors(r.alias)
                if errors > r.errors_seen:
                    with self._lock:
                        self._mark(r, "down", f"connection failed: {errors - r.errors_seen} "
                                   "connect error(s) in its pool since the last probe")
                    self._announce()
                    continue
            if min_lsn is None or (r.replay_lsn is not None and r.replay_lsn >= min_lsn):
                result.append((r.alias, r.weight))
        return result

    def next_index(self, cluster: str, routing: RoutingSettings | None = None) -> int:
        """The round-robin counter of ``cluster`` (``next()`` on a count is atomic in CPython)."""
        found = self._current(routing).get(cluster)
        return next(found.counter) if found is not None else 0

    def out_reasons(self, cluster: str,
                    routing: RoutingSettings | None = None) -> dict[str, str]:
        """Why each replica of ``cluster`` that is out of rotation is out."""
        found = self._current(routing).get(cluster)
        if found is None:
            return {}
        return {r.alias: r.reason or r.status for r in found.replicas.values()
                if not r.in_rotation}

    def record_read(self, cluster: str, alias: str, kind: str,
                    routing: RoutingSettings | None = None) -> None:
        """Count one routed read: ``kind`` is ``replica`` or ``primary`` (sent there on
        purpose; fallbacks are counted by :meth:`record_fallback`)."""
        found = self._current(routing).get(cluster)
        if found is None:
            return
        if kind == "replica":
            replica = found.replicas.get(alias)
            if replica is not None:
                replica.reads += 1
        else:
            found.primary_reads += 1

    def record_fallback(self, cluster: str, reason: str,
                        routing: RoutingSettings | None = None) -> None:
        """Count a read that went to the primary because no replica qualified."""
        found = self._current(routing).get(cluster)
        if found is None:
            return
        with self._lock:
            if found.fallbacks == 0 or found.last_fallback_reason != reason:
                logger.warning("cluster %r: reads fall back to primary %r: %s", cluster,
                               found.config.primary, reason)
            found.fallbacks += 1
            found.last_fallback_at = time.time()
            found.last_fallback_reason = reason

    def snapshot(self) -> list[ClusterStatus]:
        """Every cluster as it stands now (no I/O)."""
        result = []
        for found in list(self._current().values()):
            replicas = tuple(
                ReplicaStatus(
                    alias=r.alias, cluster=r.cluster, weight=r.weight, status=r.status,
                    in_rotation=r.in_rotation, reason=r.reason, out_since=r.out_since,
                    lag_seconds=r.lag_seconds, lag_bytes=r.lag_bytes,
                    replay_lsn=format_lsn(r.replay_lsn) if r.replay_lsn is not None else None,
                    replay_paused=r.replay_paused, last_probe_at=r.last_probe_at,
                    last_ok_at=r.last_ok_at, last_error=r.last_error, failures=r.failures,
                    reads=r.reads)
                for r in found.replicas.values())
            result.append(ClusterStatus(
                name=found.config.name, primary=found.config.primary,
                fallback=found.config.fallback, replicas=replicas,
                primary_lsn=(format_lsn(found.primary_lsn)
                             if found.primary_lsn is not None else None),
                primary_error=found.primary_error, fallbacks=found.fallbacks,
                primary_reads=found.primary_reads,
                last_fallback_at=found.last_fallback_at,
                last_fallback_reason=found.last_fallback_reason))
        return result

    def replica(self, alias: str) -> ReplicaStatus | None:
        """The snapshot of one replica, or None when no cluster has it."""
        for cluster in self.snapshot():
            for replica in cluster.replicas:
                if replica.alias == alias:
                    return replica
        return None

    def measurement(self, alias: str) -> Measurement | None:
        """The measurement of ``alias`` from the router's last probe, if it succeeded: the
        lag the health report, ``poolstatus`` and metrics give for a routed replica. None
        when no cluster has the alias or its last probe failed (no I/O)."""
        for found in list(self._current().values()):
            replica = found.replicas.get(alias)
            if replica is not None:
                return replica.measured
        return None

    # Probing -----------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A forked child: the parent's prober thread does not exist here, and a lock it
        held at fork time would never be released. Start over with fresh locks."""
        self._lock = threading.RLock()
        self._probe_lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self._routing = None
        self._clusters = {}

    def refresh(self, clusters: Iterable[str] | None = None) -> list[ClusterStatus]:
        """Probe now (blocking) and return the new snapshot. Probes of one process never
        overlap: a caller waits for a probe already running instead of starting another."""
        wanted = set(clusters) if clusters is not None else None
        with self._probe_lock:
            for found in list(self._current().values()):
                if wanted is None or found.config.name in wanted:
                    self._probe_cluster(found)
        return self.snapshot()

    def report_failure(self, alias: str, error: BaseException) -> None:
        """Take a replica out after a connection failure seen outside a probe; the next
        successful probe brings it back."""
        for found in self._current().values():
            replica = found.replicas.get(alias)
            if replica is not None:
                with self._lock:
                    replica.last_error = describe_error(error, quote=True)
                    self._mark(replica, "down", f"connection failed: {replica.last_error}")
                    replica.failures += 1
        self._announce()

    def _probe_cluster(self, found: _Cluster) -> None:
        from ..api import get_engine

        routing = self._routing
        timeout_ms = int((routing.probe_timeout if routing else 2.0) * 1000)
        found.primary_probed_at = time.time()
        try:
            with get_engine(found.config.primary).connect() as connection:
                found.primary_lsn = parse_lsn(connection.execute(_PRIMARY_SQL).scalar_one())
                found.primary_error = None
        except Exception as error:
            # Lag is then measured against what each replica has received.
            found.primary_lsn = None
            found.primary_error = describe_error(error, quote=True)
            logger.warning("cluster %r: cannot read the primary's WAL position: %s",
                           found.config.name, found.primary_error)
        for replica in list(found.replicas.values()):
            now = time.time()
            try:
                with get_engine(replica.alias).connect() as connection:
                    connection.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
                    row = connection.execute(_REPLICA_SQL).one()
            except Exception as error:
                with self._lock:
                    replica.errors_seen = _pool_errors(replica.alias)
                    replica.last_probe_at = now
                    replica.last_error = describe_error(error, quote=True)
                    replica.failures += 1
                    replica.measured = None
                    self._mark(replica, "down", f"connection failed: {replica.last_error}")
                continue
            with self._lock:
                replica.errors_seen = _pool_errors(replica.alias)
                self._judge(found, replica, row, now)
        self._announce()

    def _judge(self, found: _Cluster, replica: _Replica, row: Any, now: float) -> None:
        """Measure (:func:`~django_poolkit.ops.serverinfo.measure`, against the primary's
        position) and decide: out when not in recovery, or lagging past the limits."""
        measured = measure(row, now, primary_lsn=found.primary_lsn,
                           primary_at=found.primary_probed_at,
                           caught_up_at=replica.caught_up_at)
        replica.measured = measured
        replica.last_probe_at = now
        replica.last_ok_at = now
        replica.failures = 0
        replica.replay_paused = measured.replay_paused
        replica.replay_lsn = measured.replay_lsn
        replica.lag_seconds = measured.lag_seconds
        replica.lag_bytes = measured.lag_bytes
        replica.caught_up_at = measured.caught_up_at
        paused = measured.replay_paused
        if measured.role == "primary":
            self._mark(replica, "not_replica", "not in recovery: the server accepts writes "
                       "(promoted, or the alias points at a primary)")
            return
        config = found.config
        lagging = replica.status == "lagging"
        seconds_limit = config.readmit_lag if lagging else config.max_lag
        bytes_limit = config.readmit_lag_bytes if lagging else config.max_lag_bytes
        too_far = []
        if replica.lag_seconds is None:
            too_far.append("lag unknown (no replay position yet)")
        elif replica.lag_seconds > seconds_limit:
            too_far.append(f"lag {replica.lag_seconds:.1f} s > {seconds_limit:g} s")
        if (bytes_limit is not None and replica.lag_bytes is not None
                and replica.lag_bytes > bytes_limit):
            too_far.append(f"lag {replica.lag_bytes} bytes > {bytes_limit} bytes")
        if too_far:
            reason = "; ".join(too_far)
            if lagging:
                reason += " (readmit threshold)"
            if paused:
                reason += "; replay is paused"
            self._mark(replica, "lagging", reason)
        else:
            self._mark(replica, "healthy", None)

    def _mark(self, replica: _Replica, status: RotationStatus, reason: str | None) -> None:
        was_in = replica.in_rotation
        previous = replica.status
        replica.status = status
        replica.reason = reason
        if status != previous:
            self._changes.append({"alias": replica.alias, "cluster": replica.cluster,
                                  "previous": previous, "status": status, "reason": reason,
                                  "in_rotation": replica.in_rotation})
        if status == "healthy":
            replica.out_since = None
            replica.last_error = None
            if previous not in ("healthy", "unknown"):
                logger.info("replica %r is back in rotation (was %s)", replica.alias, previous)
        elif was_in or previous != status:
            replica.out_since = replica.out_since if not was_in else time.time()
            logger.warning("replica %r is out of rotation: %s", replica.alias, reason)

    def _announce(self) -> None:
        """Send ``replica_state_changed`` for the changes recorded under the lock, outside it
        (a receiver may read this state). A failing receiver is logged, never raised."""
        with self._lock:
            changes, self._changes = self._changes, []
        for change in changes:
            for receiver, result in replica_state_changed.send_robust(
                    sender=change["alias"], **change):
                if isinstance(result, Exception):
                    logger.error("replica_state_changed receiver %r failed: %s", receiver,
                                 describe_error(result, quote=True))

    # The background prober ---------------------------------------------------------------

    def ensure_prober(self, routing: RoutingSettings) -> None:
        """Start the background prober of this process if it is not running (cheap: the
        router calls this on every read)."""
        if routing.probe_interval is None:
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._current(routing)
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(routing.probe_interval, self._stop),
                name="poolkit-replica-prober", daemon=True)
            self._thread.start()

    def _run(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.refresh()
            except Exception:
                logger.exception("replica probe failed")
            stop.wait(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background prober and wait for it (up to ``timeout`` seconds)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def prober_running(self) -> bool:
        """Whether this process's background prober is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()


#: The process-wide replica state.
replica_state = ReplicaState()


# The configuration changed: forget the clusters (their replicas may be others now).
on_reload(replica_state.reset)
