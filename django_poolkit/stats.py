"""Per-pool counters fed by pool events, and the typed snapshot every reader uses.

Gauges (what the pool looks like now) come from SQLAlchemy's public ``size()``,
``checkedin()``, ``checkedout()`` and ``overflow()``; counters (what happened since this process
started) are kept here. The key names are API: ``poolstatus --format json``, the health view and
metrics all use :meth:`PoolStats.as_dict`, so they never change meaning.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "COUNTER_KEYS",
    "GAUGE_KEYS",
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

#: Counter keys, in display order. Times are milliseconds.
COUNTER_KEYS = (
    "connections_opened", "connections_closed", "connect_errors", "checkouts", "checkins",
    "invalidations", "soft_invalidations", "resets", "timeouts",
    "checkout_wait_ms_total", "checkout_wait_ms_max", "hold_ms_total", "hold_ms_max",
)


class Counters:
    """Monotonic counters of one pool. Event handlers update them under a small lock, since
    ``+=`` on an attribute is not atomic across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0  # a gauge kept here because only the pool's connect() sees it
        self.connections_opened = 0
        self.connections_closed = 0
        self.connect_errors = 0
        self.checkouts = 0
        self.checkins = 0
        self.invalidations = 0
        self.soft_invalidations = 0
        self.resets = 0
        self.timeouts = 0
        self.checkout_wait_ms_total = 0.0
        self.checkout_wait_ms_max = 0.0
        self.hold_ms_total = 0.0
        self.hold_ms_max = 0.0

    def add(self, key: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``key``."""
        with self._lock:
            setattr(self, key, getattr(self, key) + amount)

    def checked_out(self, wait_s: float) -> None:
        """Record one checkout that waited ``wait_s`` seconds (it stops waiting, too)."""
        wait_ms = wait_s * 1000.0
        with self._lock:
            self.waiting -= 1
            self.checkouts += 1
            self.checkout_wait_ms_total += wait_ms
            if wait_ms > self.checkout_wait_ms_max:
                self.checkout_wait_ms_max = wait_ms

    def gave_up(self, key: str | None) -> None:
        """A caller stopped waiting without a connection; count it under ``key`` (None: an
        interruption that is not a pool failure)."""
        with self._lock:
            self.waiting -= 1
            if key is not None:
                setattr(self, key, getattr(self, key) + 1)

    def checked_in(self, hold_s: float | None) -> None:
        """Record one checkin of a connection held ``hold_s`` seconds (None if unknown)."""
        with self._lock:
            self.checkins += 1
            if hold_s is not None:
                hold_ms = hold_s * 1000.0
                self.hold_ms_total += hold_ms
                if hold_ms > self.hold_ms_max:
                    self.hold_ms_max = hold_ms

    def snapshot(self) -> dict[str, float]:
        """The counters (and the ``pool_waiting`` gauge) as a plain dict, read consistently."""
        with self._lock:
            values = {key: getattr(self, key) for key in COUNTER_KEYS}
            values["pool_waiting"] = self.waiting
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
    connections_opened: int
    connections_closed: int
    connect_errors: int
    checkouts: int
    checkins: int
    invalidations: int
    soft_invalidations: int
    resets: int
    timeouts: int
    checkout_wait_ms_total: float
    checkout_wait_ms_max: float
    hold_ms_total: float
    hold_ms_max: float

    @property
    def checkout_wait_ms_mean(self) -> float:
        """Mean checkout wait in ms (0 before the first checkout)."""
        return self.checkout_wait_ms_total / self.checkouts if self.checkouts else 0.0

    def as_dict(self) -> dict[str, Any]:
        """``{"alias", "kind", "built", "gauges": {...}, "counters": {...}}`` with the stable
        keys of :data:`GAUGE_KEYS` and :data:`COUNTER_KEYS`."""
        values = asdict(self)
        return {
            "alias": self.alias,
            "kind": self.kind,
            "built": self.built,
            "gauges": {key: values[key] for key in GAUGE_KEYS},
            "counters": {key: values[key] for key in COUNTER_KEYS},
        }
