"""One probe: a fresh connection outside every pool, the server's role and replay lag, and
the error reduced to a fixed phrase (the driver's text can name hosts, users and
parameters, so it is only matched, never returned).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from typing import Literal

import psycopg

from ..conf import get_settings
from ..engines.params import connection_spec, direct_connect_args
from ..exceptions import describe_error
from ..ops.serverinfo import ROLE_AND_LAG_SQL, measure

__all__ = ["ProbeResult", "probe_database"]

@dataclass(frozen=True)
class ProbeResult:
    """What one probe learned. ``error`` is a fixed phrase, never the driver's message."""

    ok: bool
    role: Literal["primary", "replica"] | None = None
    lag_s: float | None = None
    connect_ms: float | None = None
    latency_ms: float | None = None
    error: str | None = None


def probe_database(alias: str, timeout: float) -> ProbeResult:
    """Open a fresh connection to ``alias`` outside every pool, ask its role and replay lag
    (:func:`~django_poolkit.ops.serverinfo.measure`), and close it. Blocking; the caller
    bounds the wall time (see :class:`HealthChecker`).

    The connection uses the alias's own parameters (password, SSL, options) plus a short
    ``statement_timeout``, ``default_transaction_read_only`` and an ``application_name`` of
    ``poolkit-health:<alias>:<pid>`` so its backend can be told apart in
    ``pg_stat_activity``.
    """
    pool = get_settings().for_alias(alias)
    if pool is None:  # pragma: no cover - every DATABASES alias has pool settings
        return ProbeResult(ok=False, error="not configured")
    spec = connection_spec(alias, pool)
    if spec.vendor == "sqlite":
        return _probe_sqlite(spec.url.database or ":memory:", timeout)
    params = direct_connect_args(alias, spec, purpose="health", timeout=timeout)
    statement_ms = max(1, int(timeout * 1000))
    # Later "-c" settings win over earlier ones, so these override the pool's own.
    params["options"] = " ".join(filter(None, (
        params.get("options"), f"-c statement_timeout={statement_ms}",
        "-c default_transaction_read_only=on")))
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
    if row is None:  # pragma: no cover - a SELECT without FROM returns one row
        return ProbeResult(ok=False, error="no answer")
    # The primary's position is not known here: lag is measured against what the replica
    # received. For a routed replica the report takes the router's measurement instead.
    measured = measure(row, time.time())
    return ProbeResult(
        ok=True, role=measured.role, lag_s=measured.lag_seconds,
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

