"""Everything poolkit asks a PostgreSQL server outside the pools: its role and replay lag,
its connection limits and every client connection, each over one short-lived connection.
:func:`measure` is the one rule for a replica's lag; the router's prober, the health probes
and ``poolstatus`` all use it.

Server queries never use an application pool: they open one connection of their own with a
short ``connect_timeout``, named ``poolkit-ops:<alias>:<pid>``, ask in a read-only transaction
with a short ``statement_timeout``, and wait for the answer for a bounded time, so a stopped
server cannot hang a command. Errors are reduced to fixed phrases
(:func:`~django_poolkit.exceptions.describe_error`); a password never leaves ``connect_args``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from .._threads import in_daemon_thread
from ..conf import get_settings
from ..engines.params import connection_spec, direct_connect_args
from ..exceptions import ServerUnreachable, describe_error
from ..pinning import parse_lsn

__all__ = [
    "PRIMARY_POSITION_SQL",
    "ROLE_AND_LAG_SQL",
    "ApplicationConnections",
    "Measurement",
    "ServerLimits",
    "ServerSnapshot",
    "measure",
    "read_limits",
    "read_position",
    "read_server",
    "read_snapshot",
]

#: The one server query for a server's role and replay position, for every reader (health
#: probes, ``poolstatus``, the router's prober); :func:`measure` turns its row into lag. One
#: round trip: ``pg_is_in_recovery()``; the replay and receive positions; the age of the last
#: replayed transaction; whether replay is paused.
ROLE_AND_LAG_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       pg_last_wal_receive_lsn()::text,
       EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END
"""

#: The primary's WAL position now.
PRIMARY_POSITION_SQL = "SELECT pg_current_wal_lsn()::text"


@dataclass(frozen=True)
class Measurement:
    """A server's role and, for a replica, its lag, as :func:`measure` read it at
    ``measured_at`` (``time.time()`` seconds). ``caught_up_at`` is when the replica was last
    seen caught up with the primary's own position (the next measurement's bound)."""

    role: Literal["primary", "replica"]
    lag_seconds: float | None
    lag_bytes: int | None
    replay_lsn: int | None
    replay_paused: bool | None
    measured_at: float
    caught_up_at: float | None = None


def measure(row: Sequence[Any], measured_at: float, *, primary_lsn: int | None = None,
            primary_at: float | None = None,
            caught_up_at: float | None = None) -> Measurement:
    """The one rule for replica lag, from a :data:`ROLE_AND_LAG_SQL` row.

    Bytes behind are counted against ``primary_lsn`` (the primary's position, read at
    ``primary_at``) when known, else against what the replica has received. Caught up (0 bytes)
    is 0 s, however old its last replayed commit: an idle primary sends nothing, so that age
    keeps growing without any lag. Behind, the data is at most as old as its last replayed
    commit and at most as old as the last measurement that found it caught up with the primary
    (``caught_up_at``): after an idle spell the last commit is old but the gap is a moment.
    """
    in_recovery, replay_text, receive_text, replay_age, paused = row
    if not in_recovery:
        return Measurement("primary", None, None, None, None, measured_at, caught_up_at)
    replay = parse_lsn(replay_text) if replay_text else None
    receive = parse_lsn(receive_text) if receive_text else None
    target = primary_lsn if primary_lsn is not None else receive
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    if replay is not None and target is not None:
        lag_bytes = max(0, target - replay)
        if lag_bytes == 0:
            lag_seconds = 0.0
            if primary_lsn is not None:
                caught_up_at = primary_at if primary_at is not None else measured_at
        else:
            ages = [float(replay_age)] if replay_age is not None else []
            if caught_up_at is not None:
                ages.append(measured_at - caught_up_at)
            lag_seconds = max(0.0, min(ages)) if ages else None
    return Measurement("replica", lag_seconds, lag_bytes, replay,
                       None if paused is None else bool(paused), measured_at, caught_up_at)


def _bounded(work: Callable[[], Any], timeout: float) -> Any:
    """Run ``work`` in a daemon thread and return its result, or raise TimeoutError after
    ``timeout`` seconds (libpq's own timeouts do not cover a server that stopped answering
    in the middle of a query)."""
    try:
        return in_daemon_thread(work, "poolkit-ops-query").result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError("the server did not answer in time") from None


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

    ``alias``, ``host`` and ``pid`` are parsed out of the name by the pools'
    ``application_name`` templates (the default ``poolkit:{alias}:{host}:{pid}`` or a custom
    one), so one row is one pool of one process; a template without ``{pid}`` (or shared by
    several pools without ``{alias}``) leaves what it cannot tell as None.
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
        """Stable keys: see docs/operations.rst."""
        return {"application_name": self.application_name, "alias": self.alias,
                "host": self.host, "pid": self.pid, "active": self.active, "idle": self.idle,
                "idle_in_transaction": self.idle_in_transaction, "other": self.other,
                "total": self.total}


def _template_pattern(template: str, alias: str) -> re.Pattern[str]:
    """The names ``application_name`` ``template`` renders for ``alias``: its text as is,
    ``{alias}`` as the alias, ``{host}`` as any (shortened) host, ``{pid}`` as digits."""
    pattern, seen = "", set()
    for literal, field, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if field == "alias":
            pattern += re.escape(alias)
        elif field in ("host", "pid"):
            pattern += f"(?P={field})" if field in seen else (
                r"(?P<host>.+?)" if field == "host" else r"(?P<pid>\d+)")
            seen.add(field)
    return re.compile(pattern)


def _application_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """(alias, pattern) for every configured pool's ``application_name`` template, so a
    custom one (``"billing-{pid}"``) is attributed as the default one is."""
    return [(alias, _template_pattern(pool.application_name, alias))
            for alias, pool in get_settings().pools.items()
            if pool.application_name is not None]


def _parse_application_name(
    name: str, patterns: Sequence[tuple[str, re.Pattern[str]]] = (),
) -> tuple[str | None, str | None, int | None]:
    """Alias, host and pid of a connection's name: by this project's templates (the alias
    only when one pool's template matches), else by the default template's shape (another
    process's aliases)."""
    found = [(alias, match) for alias, pattern in patterns
             if (match := pattern.fullmatch(name)) is not None]
    if found:
        groups = found[0][1].groupdict()
        pid = groups.get("pid")
        return (found[0][0] if len({alias for alias, _ in found}) == 1 else None,
                groups.get("host"), int(pid) if pid is not None else None)
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
        """Stable keys: see docs/operations.rst."""
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


def _query_position(params: dict[str, Any], timeout_ms: int) -> int:
    with psycopg.connect(autocommit=True, **params) as connection, connection.transaction():
        _guard(connection, timeout_ms)
        row = connection.execute(PRIMARY_POSITION_SQL).fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def _query_snapshot(params: dict[str, Any], timeout_ms: int,
                    primary_lsn: int | None = None) -> ServerSnapshot:
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
    patterns = _application_patterns()
    for name, states in sorted(counts.items()):
        alias, host, pid = _parse_application_name(name, patterns)
        applications.append(ApplicationConnections(
            name, alias, host, pid, active=states.get("active", 0), idle=states.get("idle", 0),
            idle_in_transaction=states.get("idle_in_transaction", 0),
            other=states.get("other", 0)))
    measured = measure(role_row, time.time(), primary_lsn=primary_lsn)
    return ServerSnapshot(
        limits=ServerLimits(int(limits_row[0]), int(limits_row[1]), int(limits_row[2]),
                            str(limits_row[3])),
        role=measured.role,
        replay_lag_s=(None if measured.lag_seconds is None
                      else round(measured.lag_seconds, 3)),
        applications=tuple(applications), client_connections=clients)


def _ask(alias: str, timeout: float, query: Callable[[dict[str, Any], int], Any]) -> Any:
    pool = get_settings().for_alias(alias)
    if pool is None:
        raise ServerUnreachable("not configured")
    # No startup options of our own: PgBouncer rejects or ignores them. The queries run in a
    # read-only transaction with a local statement_timeout instead (_guard).
    params = direct_connect_args(alias, connection_spec(alias, pool), purpose="ops",
                                 timeout=timeout)
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


def read_position(alias: str, timeout: float = 2.0) -> int:
    """The WAL position of ``alias``'s server (a primary) now, as a byte position.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    position: int = _ask(alias, timeout, _query_position)
    return position


def read_snapshot(alias: str, timeout: float = 2.0,
                  primary_lsn: int | None = None) -> ServerSnapshot:
    """Limits, role, replay lag and every client connection of ``alias``'s server; a
    replica's lag is measured (:func:`measure`) against ``primary_lsn`` when given.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    snapshot: ServerSnapshot = _ask(
        alias, timeout, lambda params, timeout_ms: _query_snapshot(params, timeout_ms,
                                                                   primary_lsn))
    return snapshot



def _routed_primary(alias: str) -> str | None:
    """The primary of the ``POOLKIT["ROUTING"]`` cluster that reads from ``alias``."""
    from ..routing.settings import routing_settings

    routing = routing_settings()
    for cluster in routing.clusters.values() if routing is not None else ():
        if any(replica.alias == alias for replica in cluster.replicas):
            return cluster.primary
    return None


def read_server(alias: str, timeout: float = 2.0) -> ServerSnapshot:
    """:func:`read_snapshot`, with one story for a replica of a ``ROUTING`` cluster: its lag
    is the router's measurement when this process has one, else measured by the same rule
    against its primary's position (against what it received when the primary cannot be
    asked). What ``poolstatus`` and the dashboard show.

    Raises :class:`ServerUnreachable` (a fixed phrase) when the server cannot be asked.
    """
    from ..routing.state import replica_state

    primary = _routed_primary(alias)
    if primary is None:
        return read_snapshot(alias, timeout)
    measured = replica_state.measurement(alias)
    if measured is not None:
        snapshot = read_snapshot(alias, timeout)
        if snapshot.role != "replica":
            return snapshot
        lag = None if measured.lag_seconds is None else round(measured.lag_seconds, 3)
        return dataclasses.replace(snapshot, replay_lag_s=lag)
    try:
        position: int | None = read_position(primary, timeout)
    except ServerUnreachable:
        position = None
    return read_snapshot(alias, timeout, primary_lsn=position)
