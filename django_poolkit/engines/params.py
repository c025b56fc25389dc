"""Turn a ``DATABASES`` alias (or an ``ENGINES`` URL) into what SQLAlchemy needs to connect.

For a PostgreSQL alias the parameters come from Django's own
``DatabaseWrapper.get_connection_params()``, so the pool connects exactly as the ORM would:
same host, port, user, password, database, ``OPTIONS`` (``sslmode``, ``options``, ``service``,
...), ``client_encoding`` and ``prepare_threshold``. Poolkit then adds what the pool settings
ask for: ``connect_timeout``, ``application_name`` and, in the startup ``options``,
``statement_timeout``, the time zone Django uses and ``assume_role``. Values sent at startup are
the session defaults, so a ``RESET ALL`` or ``DISCARD ALL`` brings them back.

The password travels only in ``connect_args``; the engine's URL (its repr, its log lines)
never holds it.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.utils import load_backend
from sqlalchemy.engine import URL

from ..conf import KNOBS, PoolSettings, parse_url
from ..conf.knobs import POOLED_BACKEND
from ..exceptions import PoolkitError

__all__ = [
    "POOLED_BACKEND",
    "ConnectSpec",
    "application_name",
    "connection_spec",
    "connection_target",
    "direct_connect_args",
    "is_shared",
    "spec_for_alias",
    "spec_for_url",
    "vendor_of",
]


_ISOLATION_LEVELS = {
    1: "READ UNCOMMITTED", 2: "READ COMMITTED", 3: "REPEATABLE READ", 4: "SERIALIZABLE",
}

# NAMEDATALEN - 1: the server silently truncates longer application names.
_APPLICATION_NAME_MAX = 63

_STATEMENT_TIMEOUT_IN_OPTIONS = re.compile(r"(?:-c\s*|--)statement[_-]timeout\s*=")


@dataclass(frozen=True)
class ConnectSpec:
    """How to open one pool's connections: a password-free URL plus keyword arguments."""

    vendor: str
    url: URL
    connect_args: dict[str, Any] = field(repr=False)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def application_name(template: str, alias: str) -> str:
    """Render the ``application_name`` template, shortening the host so the pid survives the
    server's 63-byte limit."""
    pid = str(os.getpid())
    host = socket.gethostname()
    name = template.format(alias=alias, host=host, pid=pid)
    overflow = len(name.encode()) - _APPLICATION_NAME_MAX
    if overflow > 0 and "{host}" in template:
        host = host[: max(1, len(host) - overflow)]
        name = template.format(alias=alias, host=host, pid=pid)
    return name.encode()[:_APPLICATION_NAME_MAX].decode(errors="ignore")


def _startup_options(existing: str | None, pool: PoolSettings, extra: dict[str, str]) -> str:
    """Append ``-c name=value`` settings to libpq's ``options``, keeping the user's own."""
    parts = [existing] if existing else []
    user_has_timeout = bool(existing and _STATEMENT_TIMEOUT_IN_OPTIONS.search(existing))
    if pool.statement_timeout is not None and not (
        user_has_timeout and pool.origins.get("statement_timeout") == "default"
    ):
        parts.append(f"-c statement_timeout={pool.statement_timeout}")
    for name, value in extra.items():
        # Spaces and backslashes must be escaped inside libpq's options string.
        escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


def vendor_of(database: Mapping[str, Any]) -> str:
    """The vendor Django's backend declares for a ``DATABASES`` entry (``"postgresql"`` for
    PostgreSQL, PostGIS and poolkit's backend, ``"sqlite"``, ...), asked of the backend class
    without connecting; ``""`` when its ``ENGINE`` is missing or cannot be loaded. The one way
    poolkit tells vendors apart, so a custom backend is recognised by what it is."""
    engine = database.get("ENGINE")
    if not engine:
        return ""
    try:
        return str(load_backend(str(engine)).DatabaseWrapper.vendor)
    except (ImproperlyConfigured, ImportError, AttributeError):
        return ""


def is_shared(alias: str) -> bool:
    """Whether ``alias`` runs on the pooled ORM backend, so its sync pool serves the ORM too."""
    return bool(connections.settings[alias].get("ENGINE") == POOLED_BACKEND)


def spec_for_alias(alias: str, pool: PoolSettings, *, shared: bool = False) -> ConnectSpec:
    """Connection spec of a ``DATABASES`` alias, from Django's own connection code.

    ``shared``: the pool also serves the ORM (the alias's sync pool on poolkit's backend).
    Its connections then keep Django's adapter context, so ORM cursors get exactly the types
    the stock backend gives them; SQLAlchemy's cursors put psycopg's defaults back on
    themselves (see :func:`~django_poolkit.engines.hygiene.sqlalchemy_cursor_classes`).
    Otherwise SQLAlchemy's psycopg dialect brings its own context.
    """
    wrapper = connections.create_connection(alias)
    vendor = wrapper.vendor
    if vendor == "postgresql":
        return _postgresql_spec(alias, wrapper, pool, shared=shared)
    if vendor == "sqlite":
        return _sqlite_spec(wrapper.settings_dict)
    raise PoolkitError(
        f"database {alias!r} uses {wrapper.settings_dict['ENGINE']!r} ({vendor}); poolkit "
        "builds engines for PostgreSQL and SQLite aliases only"
    )


def _postgresql_spec(
    alias: str, wrapper: Any, pool: PoolSettings, *, shared: bool
) -> ConnectSpec:
    params: dict[str, Any] = dict(wrapper.get_connection_params())
    # The cursor class is set per user: SQLAlchemy's at connect and checkin, Django's by the
    # ORM backend at checkout.
    params.pop("cursor_factory", None)
    if not shared:
        params.pop("context", None)
    options_app_name = params.pop("application_name", None)
    for key in KNOBS:
        params.pop(key, None)  # pool settings given as DATABASE_URL query parameters
    params["connect_timeout"] = pool.connect_timeout
    if pool.application_name is not None:
        params["application_name"] = application_name(pool.application_name, alias)
    elif options_app_name is not None:
        params["application_name"] = options_app_name

    if pool.pgbouncer is None:
        session: dict[str, str] = {"TimeZone": wrapper.timezone_name}
        role = wrapper.settings_dict["OPTIONS"].get("assume_role")
        if role:
            session["role"] = role
        params["options"] = _startup_options(params.get("options"), pool, session)
    else:
        _behind_pgbouncer(params, pool)

    engine_kwargs: dict[str, Any] = {}
    level = wrapper.settings_dict["OPTIONS"].get("isolation_level")
    if level is not None:
        try:
            engine_kwargs["isolation_level"] = _ISOLATION_LEVELS[int(level)]
        except (KeyError, TypeError, ValueError):
            # manage.py check reports it as poolkit.E003; this is the path that skips checks.
            raise ImproperlyConfigured(
                f'DATABASES["{alias}"]["OPTIONS"]["isolation_level"]: must be a '
                "psycopg.IsolationLevel (1 to 4), got " + repr(level)) from None
    url = URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        host=params.get("host"),
        port=int(params["port"]) if params.get("port") else None,
        database=params.get("dbname"),
    )
    return ConnectSpec("postgresql", url, params, engine_kwargs)


def _behind_pgbouncer(params: dict[str, Any], pool: PoolSettings) -> None:
    """Connection parameters for a PgBouncer in front of the server.

    PgBouncer accepts only the startup parameters it tracks, and drops (or refuses) libpq's
    ``options``: poolkit adds nothing to it (the user's own ``OPTIONS["options"]`` is sent as
    given). In transaction mode a server-side prepared statement lives on a server connection
    the next transaction may not get, so psycopg must never prepare (``prepare_threshold``
    None, whatever ``OPTIONS`` says).
    """
    if pool.pgbouncer == "transaction":
        params["prepare_threshold"] = None


def _sqlite_spec(settings_dict: dict[str, Any]) -> ConnectSpec:
    name = str(settings_dict["NAME"])
    return ConnectSpec("sqlite", URL.create("sqlite", database=name), {})


def connection_spec(alias: str, pool: PoolSettings, *, shared: bool = False) -> ConnectSpec:
    """The spec of any pool: its ``ENGINES`` URL, else its ``DATABASES`` entry."""
    if pool.url is not None:
        return spec_for_url(alias, pool.url, pool)
    return spec_for_alias(alias, pool, shared=shared)


def direct_connect_args(alias: str, spec: ConnectSpec, *, purpose: str,
                        timeout: float) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect()`` of a connection poolkit opens outside every
    pool (``purpose``: ``"health"`` for the probes, ``"ops"`` for server queries).

    The same source as the pool's own connections: password, SSL and every other libpq
    parameter, including the query parameters (``sslmode``, ...) of an ``ENGINES`` URL, which
    SQLAlchemy would pass on for the pool. Then a short ``connect_timeout`` (libpq's minimum
    is 2 s), no prepared statements, and an ``application_name`` of
    ``poolkit-<purpose>:<alias>:<pid>`` that tells the session apart in
    ``pg_stat_activity``.
    """
    params = dict(spec.connect_args)
    url = spec.url
    for key, given in url.query.items():
        params.setdefault(key, given if isinstance(given, str) else given[-1])
    place: dict[str, Any] = {"host": url.host, "port": url.port, "user": url.username,
                             "dbname": url.database}
    for key, value in place.items():
        if value is not None:
            params.setdefault(key, value)
    params = {key: value for key, value in params.items() if value is not None}
    params["connect_timeout"] = max(2, math.ceil(timeout))
    params["application_name"] = f"poolkit-{purpose}:{alias}:{os.getpid()}"[
        :_APPLICATION_NAME_MAX]
    params.pop("prepare_threshold", None)
    return params


def spec_for_url(name: str, raw_url: str, pool: PoolSettings) -> ConnectSpec:
    """Connection spec of a ``POOLKIT["ENGINES"]`` entry. ``postgresql://`` URLs use the
    psycopg 3 driver.

    The password, whether in the URL's userinfo, its ``?password=`` query parameter or the
    entry's ``password`` key (which wins, then the query, as libpq reads a URI), travels only
    in ``connect_args``: the engine's URL is rebuilt without it (``URL.set(password=None)``
    keeps the old password in SQLAlchemy, so the URL is created anew).
    """
    url = parse_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return ConnectSpec("sqlite", url, {})
    params: dict[str, Any] = {"connect_timeout": pool.connect_timeout}
    query = dict(url.query)
    query_password = query.pop("password", None)
    if isinstance(query_password, tuple):  # ?password=a&password=b: libpq takes the last
        query_password = query_password[-1]
    password = pool.password or query_password or url.password
    if password is not None:
        params["password"] = password
    if pool.application_name is not None:
        params["application_name"] = application_name(pool.application_name, name)
    options = query.pop("options", None)
    if pool.pgbouncer is None:
        params["options"] = _startup_options(
            options if isinstance(options, str) else None, pool, {})
    else:
        if isinstance(options, str):
            params["options"] = options
        _behind_pgbouncer(params, pool)
    url = URL.create("postgresql+psycopg", username=url.username, host=url.host,
                     port=url.port, database=url.database, query=query)
    return ConnectSpec("postgresql", url, params)


def connection_target(alias: str, pool: PoolSettings) -> dict[str, Any]:
    """Where a pool connects: host, port, database and user, never the password (what
    ``poolstatus`` and the dashboard show)."""
    if pool.url is not None:
        url = parse_url(pool.url)
        return {"host": url.host, "port": url.port, "database": url.database,
                "user": url.username}
    entry = connections.settings[alias]
    return {"host": entry.get("HOST") or None, "port": entry.get("PORT") or None,
            "database": str(entry.get("NAME") or ""), "user": entry.get("USER") or None}
