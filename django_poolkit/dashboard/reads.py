"""Background reads for the dashboard: a source read by a daemon thread, at most one read in
flight and one attempt per TTL, so a page never waits on a pool or a hung server and a server
that is down is not asked again by every page view."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..exceptions import ServerUnreachable

__all__ = ["STALE_AFTER_TTLS", "Reading", "Refreshed"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A value older than this many TTLs is shown as stale.
STALE_AFTER_TTLS = 3.0

@dataclass(frozen=True)
class Reading(Generic[T]):
    """A value read in the background: ``value`` None when never read successfully;
    ``error`` is the last attempt's fixed phrase when it failed."""

    value: T | None
    age_s: float | None
    error: str | None
    ttl: float

    @property
    def state(self) -> str:
        """``fresh``, ``stale`` (old, or the last refresh failed) or ``unavailable``."""
        if self.value is None or self.age_s is None:
            return "unavailable"
        if self.error is not None or self.age_s > self.ttl * STALE_AFTER_TTLS:
            return "stale"
        return "fresh"

    def describe(self) -> dict[str, Any]:
        """The JSON form of the reading's freshness."""
        return {"state": self.state, "age_s": None if self.age_s is None else round(
            self.age_s, 1), "error": self.error}


class Refreshed(Generic[T]):
    """One source read by a daemon thread, at most one read in flight, reused for ``ttl``."""

    def __init__(self, work: Callable[[], T], ttl: float, name: str) -> None:
        self._work = work
        self._ttl = ttl
        self._name = name
        self._lock = threading.Lock()
        self._value: T | None = None
        self._value_at: float | None = None
        self._error: str | None = None
        self._attempt_at: float | None = None
        self._running: threading.Event | None = None

    def start(self) -> threading.Event | None:
        """Start a read when the value is older than the TTL; the event of the read in
        flight (set when it ends), or None when the value is fresh enough."""
        with self._lock:
            if self._running is not None:
                return self._running
            # One attempt per TTL, failed or not: a server that is down is not asked again
            # by every page view.
            now = time.monotonic()
            if self._attempt_at is not None and now - self._attempt_at < self._ttl:
                return None
            self._attempt_at = now
            done = self._running = threading.Event()
        threading.Thread(target=self._run, args=(done,), name=f"poolkit-dashboard-{self._name}",
                         daemon=True).start()
        return done

    def _run(self, done: threading.Event) -> None:
        value: T | None = None
        error: str | None = None
        try:
            value = self._work()
        except ServerUnreachable as problem:
            error = str(problem)
        except Exception as problem:  # a bug must not take the page down: say what failed
            logger.exception("dashboard: reading %s failed", self._name)
            error = type(problem).__name__
        with self._lock:
            if error is None:
                self._value, self._value_at = value, time.monotonic()
            self._error = error
            self._running = None
        done.set()

    def read(self) -> Reading[T]:
        """What is known now, without waiting."""
        with self._lock:
            age = None if self._value_at is None else time.monotonic() - self._value_at
            return Reading(self._value, age, self._error, self._ttl)
