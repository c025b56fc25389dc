"""PgBouncer's own view of an alias that connects through it, read from its admin console:
its version, pool mode and limits (``SHOW CONFIG``, ``SHOW DATABASES``), the clients per app
process (``SHOW CLIENTS``, attributed through ``application_name`` as the server view is),
the waiting clients and their longest wait, the server connections per pool (``SHOW POOLS``,
``SHOW SERVERS``) and its counters (``SHOW STATS``).

The console is asked like a server (:mod:`.serverinfo`): one short-lived connection of its
own with a short ``connect_timeout``, a bounded wait, errors reduced to fixed phrases, and a
password that never leaves the connect arguments. The console speaks the simple query
protocol only and has no ``statement_timeout``: the wait in a daemon thread is the bound.
Columns are read by name, so newer releases' extra columns do no harm (``stats`` keeps every
counter the running release reports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..conf import PoolSettings, get_settings, parse_url
from ..engines.params import connection_spec, connection_target, direct_connect_args
from ..exceptions import ServerUnreachable, describe_error
from .serverinfo import _bounded, _parse_application_name

__all__ = ["COMMANDS", "CONFIG_KEYS", "BouncerClients", "BouncerPool", "BouncerSnapshot",
           "admin_target", "read_bouncer", "snapshot_of"]

#: ``SHOW CONFIG`` keys kept: the pool mode and every limit a budget compares with (seconds
#: for the timeouts, 0 meaning no limit for the ``max_*`` ones).
CONFIG_KEYS = ("pool_mode", "max_client_conn", "default_pool_size", "min_pool_size",
               "reserve_pool_size", "max_db_connections", "max_user_connections",
               "query_wait_timeout", "query_timeout", "server_idle_timeout")

#: ``SHOW SERVERS`` states, each counted on its own (``login``: being opened).
SERVER_STATES = ("active", "idle", "used", "tested", "login")


@dataclass(frozen=True)
class BouncerClients:
    """The client connections of one ``application_name`` to the alias's database: ``active``
    are linked to a server connection (inside a transaction, in transaction mode), ``idle``
    are logged in without one, ``waiting`` queue for one, the longest for
    ``longest_wait_s``."""

    application_name: str
    alias: str | None
    host: str | None
    pid: int | None
    active: int = 0
    idle: int = 0
    waiting: int = 0
    longest_wait_s: float = 0.0

    @property
    def total(self) -> int:
        """Every client connection of this name."""
        return self.active + self.idle + self.waiting

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/operations.rst."""
        return {"application_name": self.application_name, "alias": self.alias,
                "host": self.host, "pid": self.pid, "active": self.active, "idle": self.idle,
                "waiting": self.waiting, "longest_wait_s": self.longest_wait_s,
                "total": self.total}


@dataclass(frozen=True)
class BouncerPool:
    """One ``SHOW POOLS`` row (a database/user pair) of the alias's database."""

    user: str
    pool_mode: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int
    sv_tested: int
    sv_login: int
    maxwait_s: float

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/operations.rst."""
        return {"user": self.user, "pool_mode": self.pool_mode, "cl_active": self.cl_active,
                "cl_waiting": self.cl_waiting, "sv_active": self.sv_active,
                "sv_idle": self.sv_idle, "sv_used": self.sv_used, "sv_tested": self.sv_tested,
                "sv_login": self.sv_login, "maxwait_s": self.maxwait_s}


@dataclass(frozen=True)
class BouncerSnapshot:
    """What PgBouncer says about one alias's database, covering every app process.

    ``config`` holds :data:`CONFIG_KEYS` (ints where the value is a number);
    ``pool_size`` and ``max_db_connections`` are the database's own (``SHOW DATABASES``: its
    ``pool_size=`` in ``[databases]`` or ``default_pool_size``). ``client_connections`` and
    ``server_connections`` count every database, as ``max_client_conn`` does.
    """

    version: str
    database: str
    config: Mapping[str, Any]
    pool_size: int | None
    max_db_connections: int | None
    pools: tuple[BouncerPool, ...]
    clients: tuple[BouncerClients, ...]
    servers: Mapping[str, int]
    client_connections: int
    server_connections: int
    stats: Mapping[str, int] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()

    @property
    def waiting(self) -> int:
        """Clients of this database waiting for a server connection."""
        return sum(pool.cl_waiting for pool in self.pools)

    @property
    def longest_wait_s(self) -> float:
        """The longest any client of this database has been waiting, in seconds."""
        return max((pool.maxwait_s for pool in self.pools), default=0.0)

    @property
    def client_headroom(self) -> int | None:
        """``max_client_conn`` minus every client connection now."""
        limit = self.config.get("max_client_conn")
        return limit - self.client_connections if isinstance(limit, int) else None

    def as_dict(self) -> dict[str, Any]:
        """Stable keys: see docs/operations.rst."""
        return {
            "version": self.version, "database": self.database, "config": dict(self.config),
            "pool_size": self.pool_size, "max_db_connections": self.max_db_connections,
            "client_connections": self.client_connections,
            "client_headroom": self.client_headroom,
            "server_connections": self.server_connections,
            "waiting": self.waiting, "longest_wait_s": self.longest_wait_s,
            "servers": dict(self.servers),
            "pools": [pool.as_dict() for pool in self.pools],
            "clients": [row.as_dict() for row in self.clients],
            "stats": dict(self.stats),
            "unsupported": list(self.unsupported),
        }


def _admin_args(alias: str, pool: PoolSettings, timeout: float) -> dict[str, Any]:
    """Connect arguments of the admin console: the pool's own (password, SSL, ...) with the
    database ``pgbouncer``, or the ``pgbouncer_admin`` URL's place, user and password. A
    password of the pool goes along only to the pool's own user."""
    params = direct_connect_args(alias, connection_spec(alias, pool), purpose="ops",
                                 timeout=timeout)
    params.pop("options", None)  # the console refuses startup options
    params["dbname"] = "pgbouncer"
    if pool.pgbouncer_admin is not None:
        url = parse_url(pool.pgbouncer_admin)
        query = {key: given if isinstance(given, str) else given[-1]
                 for key, given in url.query.items()}
        password = query.pop("password", None) or url.password
        if url.username is not None and url.username != params.get("user"):
            params.pop("password", None)
        params.update(query)
        params.update({key: value for key, value in (
            ("host", url.host), ("port", url.port), ("user", url.username),
            ("dbname", url.database or "pgbouncer"), ("password", password))
            if value is not None})
    return params


def admin_target(alias: str, pool: PoolSettings) -> dict[str, Any]:
    """Where the admin console is reached: host, port and user, never the password."""
    if pool.pgbouncer_admin is not None:
        url = parse_url(pool.pgbouncer_admin)
        own = connection_target(alias, pool)
        return {"host": url.host, "port": url.port or 5432,
                "user": url.username or own["user"]}
    target = connection_target(alias, pool)
    return {"host": target["host"], "port": target["port"], "user": target["user"]}


def _rows(connection: psycopg.Connection[Any], command: str) -> list[dict[str, Any]]:
    cursor = connection.execute(command)
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _number(value: Any) -> Any:
    """``SHOW CONFIG`` values are text; ``SHOW STATS`` counters are numerics."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _wait(row: Mapping[str, Any], seconds: str, micros: str) -> float:
    return round(int(row.get(seconds) or 0) + int(row.get(micros) or 0) / 1e6, 6)


#: What :func:`_query` asks, in order; each answer is a list of rows (dicts by column name).
COMMANDS = ("SHOW VERSION", "SHOW CONFIG", "SHOW DATABASES", "SHOW POOLS", "SHOW CLIENTS",
            "SHOW SERVERS", "SHOW STATS")

#: Commands a pooler may lack (PgDog has no ``SHOW DATABASES``): their answer is then empty
#: and the snapshot says so in ``unsupported``.
OPTIONAL = frozenset({"SHOW CONFIG", "SHOW DATABASES", "SHOW SERVERS", "SHOW STATS"})


def _query(params: dict[str, Any], database: str) -> BouncerSnapshot:
    answers: dict[str, list[dict[str, Any]]] = {}
    unsupported: list[str] = []
    with psycopg.connect(autocommit=True, cursor_factory=psycopg.ClientCursor,
                         **params) as console:
        for command in COMMANDS:
            try:
                answers[command] = _rows(console, command)
            except psycopg.Error:
                # An error answer to a command a pooler lacks; a lost connection is not one.
                if command not in OPTIONAL or console.broken or console.closed:
                    raise
                answers[command] = []
                unsupported.append(command)
    return snapshot_of(answers, database, tuple(unsupported))


def _client_state(row: Mapping[str, Any]) -> str:
    """``active`` (linked to a server connection), ``idle`` or ``waiting``. PgBouncer says
    ``active`` for every logged-in client and names the linked server in ``link``; poolers
    without a ``link`` column (pgcat, PgDog) say ``active`` only while one is held."""
    state = str(row.get("state") or "")
    if state.startswith("waiting"):
        return "waiting"
    if state == "active" and ("link" not in row or row["link"]):
        return "active"
    return "idle"


def _client_wait(row: Mapping[str, Any]) -> float:
    """Seconds a waiting client has waited: PgBouncer's ``wait`` + ``wait_us``, else pgcat's
    ``maxwait`` + ``maxwait_us``, else PgDog's ``wait_time`` (milliseconds)."""
    if "wait" in row:
        return _wait(row, "wait", "wait_us")
    if "maxwait" in row:
        return _wait(row, "maxwait", "maxwait_us")
    return round(float(row.get("wait_time") or 0) / 1000, 6)


def snapshot_of(answers: Mapping[str, list[dict[str, Any]]], database: str,
                unsupported: tuple[str, ...] = ()) -> BouncerSnapshot:
    """The snapshot of ``database`` from the console's answers (:data:`COMMANDS` -> rows),
    whatever extra columns the release adds; pure, so other poolers' rows can be checked."""
    versions = answers.get("SHOW VERSION") or [{}]
    version = str(versions[0].get("version", ""))
    config = {row["key"]: _number(row["value"]) for row in answers.get("SHOW CONFIG", ())
              if row.get("key") in CONFIG_KEYS}
    own = next((row for row in answers.get("SHOW DATABASES", ())
                if row.get("name") == database), {})
    clients = answers.get("SHOW CLIENTS", [])
    servers = answers.get("SHOW SERVERS", [])
    by_name: dict[str, dict[str, Any]] = {}
    for row in clients:
        if row.get("database") != database:
            continue
        name = str(row.get("application_name") or "")
        entry = by_name.setdefault(name, {"active": 0, "idle": 0, "waiting": 0, "wait": 0.0})
        state = _client_state(row)
        entry[state] += 1
        if state == "waiting":
            entry["wait"] = max(entry["wait"], _client_wait(row))
    grouped = []
    for name, entry in sorted(by_name.items()):
        alias, host, pid = _parse_application_name(name)
        grouped.append(BouncerClients(name, alias, host, pid, entry["active"], entry["idle"],
                                      entry["waiting"], entry["wait"]))
    server_states = dict.fromkeys(SERVER_STATES, 0)
    for row in servers:
        state = str(row.get("state") or "")
        if row.get("database", row.get("database_name")) == database and (
                state in server_states):
            server_states[state] += 1
    stats = next((row for row in answers.get("SHOW STATS", ())
                  if row.get("database") == database), {})
    return BouncerSnapshot(
        version=version, database=database, config=config,
        pool_size=_number(own["pool_size"]) if "pool_size" in own else None,
        max_db_connections=(_number(own["max_connections"]) if "max_connections" in own
                            else None),
        pools=tuple(BouncerPool(
            str(row.get("user")), str(row.get("pool_mode") or config.get("pool_mode", "")),
            int(row.get("cl_active") or 0), int(row.get("cl_waiting") or 0),
            int(row.get("sv_active") or 0), int(row.get("sv_idle") or 0),
            int(row.get("sv_used") or 0), int(row.get("sv_tested") or 0),
            int(row.get("sv_login") or 0), _wait(row, "maxwait", "maxwait_us"))
            for row in answers.get("SHOW POOLS", ()) if row.get("database") == database),
        clients=tuple(grouped), servers=server_states,
        # The console's own connection (this one) is a client too: left out.
        client_connections=max(0, len(clients) - 1), server_connections=len(servers),
        stats={key: value for key, value in ((key, _number(value))
                                             for key, value in stats.items())
               if isinstance(value, int) and not isinstance(value, bool)},
        unsupported=unsupported)


def read_bouncer(alias: str, timeout: float = 2.0) -> BouncerSnapshot:
    """PgBouncer's view of ``alias``'s database (the pool must have ``pgbouncer`` set).

    Raises :class:`ServerUnreachable` with a fixed phrase (``"connection refused"``,
    ``"admin login refused"``, ``"no answer in time"``, ...) when the console cannot be asked;
    the wait is at most ``connect_timeout + timeout + 1`` seconds.
    """
    pool = get_settings().for_alias(alias)
    if pool is None or pool.pgbouncer is None:
        raise ServerUnreachable("not behind PgBouncer")
    params = _admin_args(alias, pool, timeout)
    database = str(connection_target(alias, pool)["database"] or "")
    try:
        snapshot: BouncerSnapshot = _bounded(lambda: _query(params, database),
                                             params["connect_timeout"] + timeout + 1)
    except TimeoutError:
        raise ServerUnreachable("no answer in time") from None
    except Exception as error:
        raise ServerUnreachable(describe_error(error)) from None
    return snapshot
