"""Leak detection (HikariCP's model): log once, with the stack that checked it out, a
connection held longer than ``leak_detection_threshold``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any, NamedTuple

from sqlalchemy import event

from .events import CONNECTION_ID

__all__ = ["LeakDetector", "install_leak_detection", "leak_detector"]

logger = logging.getLogger(__name__)


class _Held(NamedTuple):
    alias: str
    kind: str
    connection_id: Any
    since: float
    threshold: float
    stack: str


class LeakDetector:
    """Tracks checked-out connections of pools with ``leak_detection_threshold`` and logs,
    once per checkout, each one held longer than its threshold, with the stack that checked
    it out.

    One daemon thread per process wakes a few times per threshold; it is started on the first
    tracked checkout, and again after a fork (:meth:`after_fork_in_child`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._reported: set[int] = set()
        self._thread: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        """A forked child tracks nothing of its parent's (those checkouts are the parent's),
        and its lock may have been held at fork time by a thread that does not exist here."""
        self._lock = threading.Lock()
        self._held = {}
        self._reported = set()
        self._thread = None

    def track(self, key: int, held: _Held) -> None:
        """Remember one checkout (``key`` identifies its pool record)."""
        with self._lock:
            self._held[key] = held
            self._reported.discard(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="poolkit-leak-detector")
                self._thread.start()

    def release(self, key: int) -> None:
        """Forget a checkout that came back (or was detached); say so if it was reported."""
        with self._lock:
            held = self._held.pop(key, None)
            reported = key in self._reported
            self._reported.discard(key)
        if held is not None and reported:
            logger.info("pool %r (%s): connection #%s reported as leaked came back after "
                        "%.1f s", held.alias, held.kind, held.connection_id,
                        time.monotonic() - held.since)

    def held(self) -> list[_Held]:
        """The tracked checkouts now (for :mod:`django_poolkit.testing`)."""
        with self._lock:
            return list(self._held.values())

    def _watch(self) -> None:
        interval = 0.01
        while True:
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                # A few scans per threshold, at least one a second.
                interval = min((held.threshold / 4 for held in self._held.values()),
                               default=1.0)
                interval = min(max(interval, 0.01), 1.0)
                due = [(key, held) for key, held in self._held.items()
                       if key not in self._reported and now - held.since >= held.threshold]
                self._reported.update(key for key, _ in due)
            for _, held in due:
                logger.warning(
                    "pool %r (%s): connection #%s held for %.1f s, longer than "
                    "leak_detection_threshold=%g s; it was checked out at:\n%s",
                    held.alias, held.kind, held.connection_id, now - held.since,
                    held.threshold, held.stack)


#: The process-wide leak detector.
leak_detector = LeakDetector()

# Frames of these packages say nothing about who checked the connection out.
_QUIET_FRAMES = (os.sep + "sqlalchemy" + os.sep, os.sep + "django_poolkit" + os.sep + "engines")


def _checkout_stack() -> str:
    frames = [frame for frame in traceback.extract_stack()[:-1]
              if not any(part in frame.filename for part in _QUIET_FRAMES)]
    return "".join(traceback.format_list(frames[-25:])).rstrip()


def install_leak_detection(engine: Any, alias: str, kind: str, threshold: float) -> None:
    """Track every checkout of ``engine``'s pool in :data:`leak_detector`."""

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        leak_detector.track(id(record), _Held(alias, kind, record.info.get(CONNECTION_ID),
                                              time.monotonic(), threshold, _checkout_stack()))

    def on_return(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            leak_detector.release(id(record))

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_return)
    event.listen(engine, "detach", on_return)
