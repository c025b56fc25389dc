"""Per-pool counters and the typed snapshot every reader uses.

Gauges (what the pool looks like now) come from SQLAlchemy's public ``size()``,
``checkedin()``, ``checkedout()`` and ``overflow()``; counters (what happened since this process
started) are kept here. Every counter is declared once, in :data:`COUNTERS` (as psycopg_pool
names its stats keys): the declaration makes :data:`COUNTER_KEYS`, the :class:`Counters`
store, the :class:`PoolStats` attributes and the Prometheus counters. The key names are API:
``poolstatus --format json``, the health view and metrics use them, so they never change
meaning. The pool events (:mod:`django_poolkit.engines.events`) are their only writer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COUNTERS",
    "COUNTER_KEYS",
    "GAUGE_KEYS",
    "Counter",
    "Counters",
    "PoolKind",
    "PoolStats",
    "counters_for",
    "reset_counters",
]

PoolKind = Literal["sync", "async"]

#: Gauge keys, in display order. ``pool_capacity`` is None when overflow is unlimited;
#: ``pool_waiting`` counts callers inside a checkout right now (queued for a slot, opening or
#: pinging a connection).
GAUGE_KEYS = ("pool_size", "pool_checked_in", "pool_checked_out", "pool_overflow",
              "pool_capacity", "pool_waiting")


@dataclass(frozen=True)
class Counter:
    """One counter of a pool: its key (API), what it counts, whether it is a count or a
    time in milliseconds, and the Prometheus counter exporting it (None: not exported)."""

    key: str
    help: str
    unit: Literal["count", "ms"] = "count"
    metric: str | None = None

    @property
    def zero(self) -> int | float:
        """The value before anything happened (0, or 0.0 for a time)."""
        return 0.0 if self.unit == "ms" else 0


#: Every counter, in display order. Times are milliseconds.
COUNTERS: tuple[Counter, ...] = (
    Counter("connections_opened", "Server connections opened.",
            metric="poolkit_connections_opened"),
    Counter("connections_closed", "Server connections closed.",
            metric="poolkit_connections_closed"),
    Counter("connect_errors", "Checkouts that failed with an error.",
            metric="poolkit_connect_errors"),
    Counter("checkouts", "Connections handed out.", metric="poolkit_checkouts"),
    Counter("checkins", "Connections returned.", metric="poolkit_checkins"),
    Counter("invalidations", "Connections found broken and discarded.",
            metric="poolkit_invalidations"),
    Counter("soft_invalidations", "Connections marked to be replaced at their next checkout."),
    Counter("resets", "Connections reset at checkin."),
    Counter("timeouts", "Checkouts that gave up after pool_timeout.", metric="poolkit_timeouts"),
    Counter("checkout_wait_ms_total", "Time checkouts waited, in total.", "ms"),
    Counter("checkout_wait_ms_max", "The longest checkout wait.", "ms"),
    Counter("hold_ms_total", "Time connections stayed checked out, in total.", "ms"),
    Counter("hold_ms_max", "The longest time a connection stayed checked out.", "ms"),
)

#: Counter keys, in display order.
COUNTER_KEYS: tuple[str, ...] = tuple(counter.key for counter in COUNTERS)

_ZEROS: dict[str, int | float] = {counter.key: counter.zero for counter in COUNTERS}


class Counters:
    """Monotonic counters of one pool (and the ``pool_waiting`` gauge, which only the
    pool's checkout sees). Updated under a small lock, since ``+=`` is not atomic across
    threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int | float] = dict(_ZEROS)
        self._waiting = 0

    def __repr__(self) -> str:
        return f"<Counters {self._values}>"

    def add(self, key: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``key``."""
        with self._lock:
            self._values[key] += amount

    def get(self, key: str) -> int | float:
        """The current value of one counter."""
        return self._values[key]

    def waiting(self) -> None:
        """A caller entered a checkout."""
        with self._lock:
            self._waiting += 1

    def checked_out(self, wait_s: float) -> None:
        """Record one checkout that waited ``wait_s`` seconds (it stops waiting, too)."""
        wait_ms = wait_s * 1000.0
        values = self._values
        with self._lock:
            self._waiting -= 1
            values["checkouts"] += 1
            values["checkout_wait_ms_total"] += wait_ms
            if wait_ms > values["checkout_wait_ms_max"]:
                values["checkout_wait_ms_max"] = wait_ms

    def gave_up(self, key: str | None) -> None:
        """A caller stopped waiting without a connection; count it under ``key`` (None: an
        interruption that is not a pool failure)."""
        with self._lock:
            self._waiting -= 1
            if key is not None:
                self._values[key] += 1

    def checked_in(self, hold_s: float | None) -> None:
        """Record one checkin of a connection held ``hold_s`` seconds (None if unknown)."""
        values = self._values
        with self._lock:
            values["checkins"] += 1
            if hold_s is not None:
                hold_ms = hold_s * 1000.0
                values["hold_ms_total"] += hold_ms
                if hold_ms > values["hold_ms_max"]:
                    values["hold_ms_max"] = hold_ms

    def snapshot(self) -> dict[str, float]:
        """The counters (and the ``pool_waiting`` gauge) as a plain dict, read consistently."""
        with self._lock:
            values: dict[str, float] = dict(self._values)
            values["pool_waiting"] = self._waiting
            return values


_counters: dict[tuple[str, PoolKind], Counters] = {}
_counters_lock = threading.Lock()


def counters_for(alias: str, kind: PoolKind) -> Counters:
    """The counters of one pool, created on first use; they outlive engine rebuilds so a
    process's totals stay monotonic."""
    key = (alias, kind)
    found = _counters.get(key)
    if found is None:
        with _counters_lock:
            found = _counters.setdefault(key, Counters())
    return found


def reset_counters(*, after_fork: bool = False) -> None:
    """Drop every counter (a forked child starts its own process-lifetime totals).

    ``after_fork`` also replaces the lock: another thread of the parent may have held it at
    fork time, and that thread does not exist in the child to release it.
    """
    global _counters_lock
    if after_fork:
        _counters_lock = threading.Lock()
    with _counters_lock:
        _counters.clear()


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of one pool: gauges now, counters since process start.

    ``built`` is False when the pool has not been created yet in this process (pools are lazy);
    its gauges are then zero apart from the configured ``pool_size`` and ``pool_capacity``.
    Every counter of :data:`COUNTERS` reads as an attribute (``stats.checkouts``).
    """

    alias: str
    kind: PoolKind
    built: bool
    pool_size: int
    pool_checked_in: int
    pool_checked_out: int
    pool_overflow: int
    pool_capacity: int | None
    pool_waiting: int
    counters: dict[str, Any] = field(default_factory=lambda: dict(_ZEROS))

    def __getattr__(self, name: str) -> Any:
        # Only called for names the class lacks: the counters.
        if name in _ZEROS:
            return self.counters[name]
        raise AttributeError(name)

    @property
    def checkout_wait_ms_mean(self) -> float:
        """Mean checkout wait in ms (0 before the first checkout)."""
        checkouts = self.counters["checkouts"]
        return self.counters["checkout_wait_ms_total"] / checkouts if checkouts else 0.0

    def as_dict(self) -> dict[str, Any]:
        """``{"alias", "kind", "built", "gauges": {...}, "counters": {...}}`` with the stable
        keys of :data:`GAUGE_KEYS` and :data:`COUNTER_KEYS`."""
        return {
            "alias": self.alias,
            "kind": self.kind,
            "built": self.built,
            "gauges": {key: getattr(self, key) for key in GAUGE_KEYS},
            "counters": {key: self.counters[key] for key in COUNTER_KEYS},
        }
