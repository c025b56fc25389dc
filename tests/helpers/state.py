"""Shared tools of the fault-injection scenarios 8-14 (part B; their fixtures ``orm`` and
``rows`` are in ``tests/reliability/conftest.py``): the scratch table and sequence on the test
database, streams cut under a live connection, a handler collecting poolkit's warnings, and
small oracles (a sliding one-second window, a hand-driven clock for ``pool_recycle``).

Part A's tools (scenarios 1-7) live in ``faults.py``; nothing here depends on them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from .server import alias_dsn
from .tcpproxy import TcpProxy

#: The scratch table and sequence the state scenarios write to (on the test database).
ROWS = "relb_rows"
SEQUENCE = "relb_seq"


def outside_connection() -> psycopg.Connection[Any]:
    """An autocommit connection to the test database, outside every pool."""
    return psycopg.connect(alias_dsn("default"), autocommit=True)


def sequence_calls(connection: psycopg.Connection[Any]) -> int:
    """How many times ``nextval('relb_seq')`` ran, committed or not (a sequence never rolls
    back): a silently retried transaction would have called it again."""
    row = connection.execute(f"SELECT last_value, is_called FROM {SEQUENCE}").fetchone()
    assert row is not None
    return int(row[0]) if row[1] else 0


def cut_streams(proxy: TcpProxy) -> int:
    """Cut every stream the proxy relays now (both ends see EOF), keep accepting new ones: the
    network dropped the connections in flight, and the next connect works. Returns how many
    sockets were cut."""
    with proxy._lock:
        sockets, proxy._sockets = proxy._sockets, []
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    return len(sockets)


def sliding_max(times: Sequence[float], window: float = 1.0) -> int:
    """The most events of ``times`` inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


class Clock:
    """A wall clock the test moves by hand: stands in for ``time`` in the modules that read
    ``time.time()`` for ``pool_recycle`` (SQLAlchemy's own test suite does the same), so
    hours of pool life run in a second. Everything else of ``time`` is the real one."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Warnings(logging.Handler):
    """Collects WARNING and above of ``django_poolkit`` (one line per event is the promise)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, log_record: logging.LogRecord) -> None:
        self.messages.append(log_record.getMessage())

    def __enter__(self) -> Warnings:
        logging.getLogger("django_poolkit").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("django_poolkit").removeHandler(self)

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken
