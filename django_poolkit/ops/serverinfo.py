"""Everything poolkit asks a PostgreSQL server outside the pools: its role and replay lag,
its connection limits and every client connection, each over one short-lived connection.

Server queries never use an application pool: they open one connection of their own with a
short ``connect_timeout``, named ``poolkit-ops:<alias>:<pid>``, ask in a read-only transaction
with a short ``statement_timeout``, and wait for the answer for a bounded time, so a stopped
server cannot hang a command. Errors are reduced to fixed phrases (:func:`describe_error`); a
password never leaves ``connect_args``.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from ..conf import PoolSettings, get_settings
from ..engines.params import spec_for_alias, spec_for_url
from ..exceptions import ServerUnreachable

__all__ = [
    "ROLE_AND_LAG_SQL",
    "ApplicationConnections",
    "ServerLimits",
    "ServerSnapshot",
    "describe_error",
    "read_limits",
    "read_snapshot",
]

#: One round trip: ``pg_is_in_recovery()`` and the replay lag in seconds (NULL on a primary).
#: Replay lag is the age of the last replayed transaction, which keeps growing while an idle
#: primary sends nothing, so a standby that has replayed everything it received counts as 0 s
#: behind.
ROLE_AND_LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END
"""


# SQLSTATE -> what a probe may say about it.
_SQLSTATE_PHRASES = {
    "53300": "too many connections",
    "28P01": "authentication failed",
    "28000": "authorization rejected",
    "3D000": "database does not exist",
    "57P03": "server is starting up or shutting down",
    "57P01": "server terminated the connection",
    "57014": "statement timeout",
    "08006": "connection failure",
    "08001": "could not connect",
}
# libpq reports most connection failures without a SQLSTATE: match its wording (lower case)
# and answer with a fixed phrase, never with the text itself.
_MESSAGE_PHRASES = (
    ("too many connections", "too many connections"),
    ("too many clients", "too many connections"),
    ("remaining connection slots are reserved", "too many connections"),
    ("password authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("no pg_hba.conf entry", "rejected by pg_hba.conf"),
    ("connection refused", "connection refused"),
    ("timeout expired", "connect timeout"),
    ("database system is starting up", "server is starting up or shutting down"),
    ("database system is shutting down", "server is starting up or shutting down"),
    ("could not translate host name", "host name not resolved"),
    ("server closed the connection", "server closed the connection"),
    ("canceling statement due to statement timeout", "statement timeout"),
    ("does not exist", "database or role does not exist"),
    ("unable to open database file", "database file missing or unreadable"),
)



def describe_error(error: BaseException) -> str:
    """A fixed phrase for a connection or query error, with its SQLSTATE when known.

    The driver's own text can hold host names, user names and parameter values, so it is
    only *matched*, never returned.
    """
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _SQLSTATE_PHRASES:
        return f"{_SQLSTATE_PHRASES[sqlstate]} (SQLSTATE {sqlstate})"
    text = str(error).lower()
    for needle, phrase in _MESSAGE_PHRASES:
        if needle in text:
            return phrase
    if isinstance(sqlstate, str) and sqlstate:
        return f"{type(error).__name__} (SQLSTATE {sqlstate})"
    return type(error).__name__



def _connect_args(alias: str, pool: PoolSettings, timeout: float) -> dict[str, Any]:
    spec = spec_for_url(alias, pool.url, pool) if pool.url else spec_for_alias(alias, pool)
    params = dict(spec.connect_args)
    params.update({
        "host": spec.url.host, "port": spec.url.port, "user": spec.url.username,
        "dbname": spec.url.database,
    })
    params = {key: value for key, value in params.items() if value is not None}
    # No startup options of our own: PgBouncer rejects or ignores them. The queries run in a
    # read-only transaction with a local statement_timeout instead (_guard).
    params["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's minimum is 2 s
    params["application_name"] = f"poolkit-ops:{alias}:{os.getpid()}"[:63]
    params.pop("prepare_threshold", None)
    return params


def _bounded(work: Callable[[], Any], timeout: float) -> Any:
    """Run ``work`` in a daemon thread and return its result, or raise TimeoutError after
    ``timeout`` seconds (libpq's own timeouts do not cover a server that stopped answering
    in the middle of a query)."""
    answers: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            answers.put((True, work()))
        except BaseException as error:  # handed to the caller, who re-raises it
            answers.put((False, error))

    threading.Thread(target=run, name="poolkit-ops-query", daemon=True).start()
    try:
        ok, result = answers.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError("the server did not answer in time") from None
    if not ok:
        raise result
    return result


@dataclass(frozen=True)
class ServerLimits:
    """How many connections a server accepts: ``available`` is what ordinary roles get."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0
    server_version: str = ""

    @property
    def available(self) -> int:
        """``max_connections`` minus the slots reserved for superusers and (PostgreSQL 16+)
        roles with ``pg_use_reserved_connections``."""
        return max(0, self.max_connections - self.superuser_reserved_connections
                   - self.reserved_connections)


_LIMITS_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       COALESCE(current_setting('reserved_connections', true), '0')::int,
       current_setting('server_version')
"""


# Every client backend holds one of max_connections' slots, whatever database it is in;
# this command's own connection is left out.
_ACTIVITY_SQL = """
SELECT COALESCE(application_name, ''), COALESCE(state, 'unknown'),
       datname = current_database(), count(*)::int
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2, 3
ORDER BY 1, 2
"""

#: States of ``pg_stat_activity.state`` reported on their own; the rest count as ``other``.
STATES = ("active", "idle", "idle in transaction")


@dataclass(frozen=True)
class ApplicationConnections:
    """Connections to one database that share an ``application_name``.

    For poolkit's default name ``poolkit:{alias}:{host}:{pid}``, ``alias``, ``host`` and
    ``pid`` are parsed out so one row is one pool of one process.
    """

    application_name: str
    alias: str | None
    host: str | None
    pid: int | None
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """Every connection of this application name."""
        return self.active + self.idle + self.idle_in_transaction + self.other

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        return {"application_name": self.application_name, "alias": self.alias,
                "host": self.host, "pid": self.pid, "active": self.active, "idle": self.idle,
                "idle_in_transaction": self.idle_in_transaction, "other": self.other,
                "total": self.total}


def _parse_application_name(name: str) -> tuple[str | None, str | None, int | None]:
    parts = name.split(":")
    if len(parts) == 4 and parts[0] == "poolkit" and parts[3].isdigit():
        return parts[1], parts[2], int(parts[3])
    return None, None, None


@dataclass(frozen=True)
class ServerSnapshot:
    """What the server says about one alias's database, covering every process."""

    limits: ServerLimits
    role: Literal["primary", "replica"]
    replay_lag_s: float | None
    applications: tuple[ApplicationConnections, ...]
    client_connections: int  # client backends in every database, this command's excluded

    @property
    def headroom(self) -> int:
        """Slots ordinary roles can still open, server-wide."""
        return max(0, self.limits.available - self.client_connections)

    def by_state(self) -> dict[str, int]:
        """Connections to this database by state (``other`` gathers the rest)."""
        totals = {"active": 0, "idle": 0, "idle_in_transaction": 0, "other": 0}
        for row in self.applications:
            totals["active"] += row.active
            totals["idle"] += row.idle
            totals["idle_in_transaction"] += row.idle_in_transaction
            totals["other"] += row.other
        return totals

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see the README, "Operating the pools"."""
        return {
            "server_version": self.limits.server_version,
            "role": self.role,
            "replay_lag_s": self.replay_lag_s,
            "max_connections": self.limits.max_connections,
            "superuser_reserved_connections": self.limits.superuser_reserved_connections,
            "reserved_connections": self.limits.reserved_connections,
            "available_connections": self.limits.available,
            "client_connections": self.client_connections,
            "headroom": self.headroom,
            "database_connections": self.by_state(),
            "applications": [row.as_dict() for row in self.applications],
        }


def _guard(connection: psycopg.Connection[Any], timeout_ms: int) -> None:
    """Make the open transaction read-only with a ``statement_timeout`` of its own. Both end
    with the transaction: behind PgBouncer in transaction mode a plain ``SET`` would outlive
    it and reach another client, and startup options are not an option there."""
    connection.execute("SET TRANSACTION READ ONLY")
    connection.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),))


def _query_limits(params: dict[str, Any], timeout_ms: int) -> ServerLimits:
    with psycopg.connect(autocommit=True, **params) as connection, connection.transaction():
        _guard(connection, timeout_ms)
        row = connection.execute(_LIMITS_SQL).fetchone()
    assert row is not None
    return ServerLimits(int(row[0]), int(row[1]), int(row[2]), str(row[3]))


def _query_snapshot(params: dict[str, Any], timeout_ms: int) -> ServerSnapshot:
    with psycopg.connect(autocommit=True, **params) as connection, connection.transaction():
        _guard(connection, timeout_ms)
        limits_row = connection.execute(_LIMITS_SQL).fetchone()
        role_row = connection.execute(ROLE_AND_LAG_SQL).fetchone()
        rows = connection.execute(_ACTIVITY_SQL).fetchall()
    assert limits_row is not None
    assert role_row is not None
    counts: dict[str, dict[str, int]] = {}
    clients = 0
    for name, state, here, count in rows:
        clients += count
        if not here:
            continue
        key = state.replace(" ", "_") if state in STATES else "other"
        counts.setdefault(name, {}).setdefault(key, 0)
        counts[name][key] += count
    applications = []
    for name, states in sorted(counts.items()):
        alias, host, pid = _parse_application_name(name)
        applications.append(ApplicationConnections(
            name, alias, host, pid, active=states.get("active", 0), idle=states.get("idle", 0),
            idle_in_transaction=states.get("idle_in_transaction", 0),
            other=states.get("other", 0)))
    standby = bool(role_row[0])
    return ServerSnapshot(
        limits=ServerLimits(int(limits_row[0]), int(limits_row[1]), int(limits_row[2]),
                            str(limits_row[3])),
        role="replica" if standby else "primary",
        replay_lag_s=None if role_row[1] is None else round(float(role_row[1]), 3),
        applications=tuple(applications), client_connections=clients)


def _ask(alias: str, timeout: float, query: Callable[[dict[str, Any], int], Any]) -> Any:
    pool = get_settings().for_alias(alias)
    if pool is None:
        raise ServerUnreachable("not configured")
    params = _connect_args(alias, pool, timeout)
    timeout_ms = max(1, int(timeout * 1000))
    try:
        # One extra second for the TCP handshake and the connection's own round trips.
        return _bounded(lambda: query(params, timeout_ms),
                        params["connect_timeout"] + timeout + 1)
    except TimeoutError:
        raise ServerUnreachable("no answer in time") from None
    except Exception as error:
        raise ServerUnreachable(describe_error(error)) from None


def read_limits(alias: str, timeout: float = 2.0) -> ServerLimits:
    """``max_connections`` and the reserved slots of ``alias``'s server.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    limits: ServerLimits = _ask(alias, timeout, _query_limits)
    return limits


def read_snapshot(alias: str, timeout: float = 2.0) -> ServerSnapshot:
    """Limits, role, replay lag and every client connection of ``alias``'s server.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    snapshot: ServerSnapshot = _ask(alias, timeout, _query_snapshot)
    return snapshot

