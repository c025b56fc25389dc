"""The pool settings (knobs) and the shape of a resolved configuration.

:data:`KNOBS` is the one table of per-pool settings: default, accepted values, what each does
and the rule that checks it. :class:`PoolSettings` is one resolved pool,
:class:`PoolkitSettings` the whole configuration; :data:`SECTION_PARSERS` names the parsers
of the sections other packages own (HEALTH, ROUTING, DEPLOYMENT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._schema import (
    SHORTEST_WAIT,
    Field,
    Invalid,
    boolean,
    choice,
    fields,
    integer,
    number,
    optional,
    template,
    text,
)
from ..ops import sizing


def admin_url(value: Any) -> Any:
    """A ``postgresql://`` URL with a host (PgBouncer's admin console), or None. The refusal
    never shows the value: it may hold a password."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        from sqlalchemy.exc import ArgumentError

        from .build import parse_url

        try:
            url = parse_url(value)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            pass
        else:
            if url.host:
                return value
    raise Invalid("got a value that is not a postgresql:// URL with a host")


def shown_value(name: str, value: Any) -> Any:
    """A knob's value as commands and the dashboard show it: a secret URL (``pgbouncer_admin``)
    as ``postgresql://user@host:port/database``, its password and query left out."""
    knob = KNOBS.get(name)
    if value is None or knob is None or not knob.secret:
        return value
    from .build import parse_url

    url = parse_url(value)
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"postgresql://{user}{url.host}{port}/{url.database or ''}"

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "ENGINE_ONLY_KEYS",
    "KNOBS",
    "OPTION_FIELDS",
    "ORIGINS",
    "ORM_DEFAULTS",
    "POOLED_BACKEND",
    "SECTION_PARSERS",
    "TOP_LEVEL_KEYS",
    "PoolSettings",
    "PoolkitSettings",
    "admin_url",
    "shown_value",
]

DEFAULT_ENV_PREFIX = "POOLKIT_"

#: The ENGINE of poolkit's pooled ORM backend: its alias's sync pool is shared with the ORM.
POOLED_BACKEND = "django_poolkit.db.backends.postgresql"


#: The ceilings of the numbers below: generous for any real deployment, and each far from
#: where Python, the server or a ``threading`` wait would overflow.
MOST_CONNECTIONS = 10_000
MOST_CORES = 4096
MOST_CONCURRENCY = 1_000_000
FEWEST_QUERIES = 0.001
MOST_QUERIES = 10_000
HOUR = 3600
DAY = 86_400
YEAR = 31_536_000
INT4_MAX = 2_147_483_647  # PostgreSQL's statement_timeout is an int4 of milliseconds

#: Every per-pool setting, in the order docs/configuration.rst documents them. Defaults
#: follow a typical production ``create_engine(...)``.
KNOBS: dict[str, Field] = fields(
    Field("pool_size", 5, f"an integer >= 1 and <= {MOST_CONNECTIONS}",
         "Connections kept open in the pool (per process).", integer(1, MOST_CONNECTIONS),
         int),
    Field("max_overflow", 10, f"an integer >= 0 and <= {MOST_CONNECTIONS}, or -1 for no limit",
         "Extra connections opened when the pool is exhausted, closed again on checkin.",
         integer(0, MOST_CONNECTIONS, minus_one=True), int),
    Field("pool_timeout", 30, f"a number of seconds >= {SHORTEST_WAIT} and <= {HOUR}",
         "How long a checkout waits for a free connection before PoolTimeout.",
         number(at_least=SHORTEST_WAIT, at_most=HOUR), float),
    Field("pool_recycle", 3600,
         f"an integer of seconds >= 1 and <= {YEAR}, or -1 to never recycle",
         "Connections older than this are replaced at their next checkout.",
         integer(1, YEAR, minus_one=True), int),
    Field("pool_pre_ping", True, "True or False",
         "Test a connection before handing it out, replacing it if the server dropped it.",
         boolean, bool),
    Field("pool_use_lifo", False, "True or False",
         "Hand out the most recently returned connection first, so idle ones can time out.",
         boolean, bool),
    Field("connect_timeout", 10, f"an integer of seconds >= 0 and <= {HOUR} (0 waits forever)",
         "libpq's limit on opening a connection.", integer(0, HOUR), int),
    Field("statement_timeout", 30000,
         f"an integer of milliseconds >= 0 and <= {INT4_MAX} (0: no limit), or None",
         "Sent as -c statement_timeout at connect; None leaves the server's value.",
         integer(0, INT4_MAX, none=True), int),
    Field("application_name", "poolkit:{alias}:{host}:{pid}",
         "a template string using only {alias}, {host} and {pid} ({{ and }} for a brace), "
         "or None",
         "Names the pool's connections in pg_stat_activity; None leaves OPTIONS' value.",
         template(("alias", "host", "pid"), none=True), str),
    Field("preset", None, "one of " + ", ".join(f'"{n}"' for n in sizing.PRESETS) + ", or None",
         "A named size from the preset table: sets pool_size and max_overflow.",
         choice(sizing.PRESETS, none=True), str),
    Field("sizing", None, "one of " + ", ".join(f'"{name}"' for name in sizing.SIZING_FORMULAS)
         + ", or None",
         "Compute pool_size (and, for production/auto, max_overflow) with a sizing formula.",
         choice(sizing.SIZING_FORMULAS, none=True), str),
    Field("cores", None, f"an integer >= 1 and <= {MOST_CORES}, or None for os.cpu_count()",
         "CPU cores for the cores/production/auto formulas.",
         integer(1, MOST_CORES, none=True), int),
    Field("spindles", 0, f"an integer >= 0 and <= {MOST_CONNECTIONS}",
         "Disk spindles for the cores formula.", integer(0, MOST_CONNECTIONS), int),
    Field("concurrency", None, f"an integer >= 1 and <= {MOST_CONCURRENCY}, or None",
         "Expected concurrent requests, for the async formula.",
         integer(1, MOST_CONCURRENCY, none=True), int),
    Field("queries_per_request", 1,
          f"a number >= {FEWEST_QUERIES} and <= {MOST_QUERIES}",
         "Average queries per request, for the async formula.",
         number(at_least=FEWEST_QUERIES, at_most=MOST_QUERIES), float),
    Field("environment", None, 'a string such as "production", or None to read $ENV',
         'The auto formula uses the production rule when this is "production".',
         text(none=True), str),
    Field("async_pool_size", None,
         f"an integer >= 1 and <= {MOST_CONNECTIONS}, or None for pool_size",
         "pool_size of the async engine's own pool.",
         integer(1, MOST_CONNECTIONS, none=True), int),
    Field("async_max_overflow", None,
         f"an integer >= 0 and <= {MOST_CONNECTIONS}, -1, or None for max_overflow",
         "max_overflow of the async engine's own pool.",
         integer(0, MOST_CONNECTIONS, none=True, minus_one=True), int),
    Field("reset_on_return", "rollback", '"rollback", "reset_all" or "discard_all"',
         "What a checkin does besides the rollback: nothing, RESET ALL and friends (keeps "
         "temporary tables and plans), or DISCARD ALL.",
         choice(("rollback", "reset_all", "discard_all"), none=True), str),
    Field("pre_ping_mode", "socket", '"socket" or "query"',
         "How pool_pre_ping tests a connection: a zero-timeout look at its socket (a real "
         "ping only when the server sent something), or a round trip every checkout.",
         choice(("socket", "query"), none=True), str),
    Field("pgbouncer", None, '"transaction", "session", or None (a server, no PgBouncer)',
         "The pool connects through a PgBouncer in this pooling mode: no startup options; "
         "in transaction mode also no prepared statements and no server-side cursors.",
         choice(("transaction", "session"), none=True), str),
    Field("pgbouncer_admin", None,
         "a postgresql:// URL of PgBouncer's admin console (database pgbouncer), or None",
         "Where poolstatus, poolplan and the dashboard read PgBouncer's own view (SHOW POOLS, "
         "CLIENTS, SERVERS, STATS, CONFIG) when pgbouncer is set; None: the pool's own host, "
         "port, user and password, database pgbouncer.", admin_url, str, secret=True),
    Field("leak_detection_threshold", None, f"a number of seconds >= {SHORTEST_WAIT} and <= "
         f"{DAY}, or None (off)",
         "Log once, with the checkout's stack, a connection held longer than this.",
         optional(number(at_least=SHORTEST_WAIT, at_most=DAY)), float),
    Field("client_timeout", None, f"a number of seconds >= {SHORTEST_WAIT} and <= {DAY}, or "
         "None (off)",
         "The longest one wait for the server's answer (a query, a fetch, a commit) may "
         "take before poolkit closes the connection and raises OperationalError; set it "
         "above statement_timeout.", optional(number(at_least=SHORTEST_WAIT, at_most=DAY)),
         float),
)

#: Defaults that differ for a pool that serves the ORM (a ``DATABASES`` alias on
#: :data:`POOLED_BACKEND`): a drop-in backend changes nothing a query may do unless asked, so
#: ``statement_timeout`` stays the server's (stock Django sends none). ENGINES and the pools
#: only ``get_engine()`` uses keep KNOBS' defaults.
ORM_DEFAULTS: dict[str, Any] = {"statement_timeout": None}

#: The values libpq accepts for ``sslmode``.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: ``OPTIONS`` keys of a ``DATABASES`` entry that poolkit reads for its engines, besides the
#: knobs (a ``DATABASE_URL`` query parameter lands in ``OPTIONS``): checked like them.
OPTION_FIELDS: dict[str, Field] = fields(
    Field("isolation_level", None,
          "a psycopg.IsolationLevel: 1 (READ UNCOMMITTED), 2 (READ COMMITTED), 3 (REPEATABLE "
          "READ) or 4 (SERIALIZABLE)",
          "Django's OPTIONS['isolation_level'], e.g. psycopg.IsolationLevel.SERIALIZABLE "
          "(?isolation_level=4 in DATABASE_URL).", integer(1, 4), int),
    Field("sslmode", None, "one of " + ", ".join(f'"{mode}"' for mode in SSL_MODES),
          "libpq's sslmode (?sslmode=require in DATABASE_URL); libpq would refuse any other "
          "value only at the first connection.", choice(SSL_MODES), str),
)

#: Keys an ``ENGINES`` entry accepts besides the knobs. ``password`` beside ``url`` is the
#: way to give a secret that Django's error reports mask (their filter hides keys matching
#: ``PASS``; a password inside ``url`` shows in a DEBUG page and an admin e-mail).
ENGINE_ONLY_KEYS = ("url", "password")

#: Top-level keys of ``POOLKIT`` and what each holds.
TOP_LEVEL_KEYS: dict[str, str] = {
    "DEFAULTS": "pool settings applied to every pool",
    "DATABASES": "per-alias pool settings for aliases of settings.DATABASES",
    "ENGINES": "extra SQLAlchemy-only engines: name -> {url, pool settings}",
    "ENV_PREFIX": "prefix of the environment variables poolkit reads, or None to read none",
    "HEALTH": "health endpoints and poolcheck: timeout, cache, token, databases, policy",
    "ROUTING": "primary/replica clusters and read routing (see django_poolkit.routing.settings)",
    "DEPLOYMENT": "the process model (hosts, workers, threads) for the connection budget",
}

#: Top-level sections owned by other modules: key -> dotted path of a parser
#: ``parse(value, databases, report) -> object``. ``report(path, message, hint, check_id)``
#: records a problem; the parser's result lands in ``PoolkitSettings.sections[key]``. Each
#: feature validates its own section this way, and still only ``conf`` reads ``POOLKIT``.
SECTION_PARSERS: dict[str, str] = {
    "HEALTH": "django_poolkit.health.settings.parse_settings",
    "ROUTING": "django_poolkit.routing.settings.parse",
    "DEPLOYMENT": "django_poolkit.ops.deployment.parse",
}

#: Origins a resolved value can have, weakest first.
ORIGINS = ("default", "preset", "sizing", "setting", "url", "environment")


@dataclass(frozen=True)
class PoolSettings:
    """The resolved, validated settings of one pool (a ``DATABASES`` alias or an engine).

    Sizes are per process; ``origins`` maps each knob to where its value came from.
    """

    alias: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool
    pool_use_lifo: bool
    connect_timeout: int
    statement_timeout: int | None
    application_name: str | None
    preset: str | None
    sizing: str | None
    cores: int | None
    spindles: int
    concurrency: int | None
    queries_per_request: float
    environment: str | None
    async_pool_size: int
    async_max_overflow: int
    url: str | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)
    reset_on_return: str = "rollback"
    pre_ping_mode: str = "socket"
    leak_detection_threshold: float | None = None
    pgbouncer: str | None = None
    pgbouncer_admin: str | None = None
    client_timeout: float | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def capacity(self) -> int | None:
        """Most connections the sync pool opens at once, or None if overflow is unlimited."""
        return None if self.max_overflow < 0 else self.pool_size + self.max_overflow

    def __repr__(self) -> str:
        # The engine URL may carry a password: never show it.
        return f"<PoolSettings {self.alias!r} size={self.pool_size} overflow={self.max_overflow}>"


@dataclass(frozen=True)
class PoolkitSettings:
    """The whole validated configuration: one :class:`PoolSettings` per pool."""

    pools: Mapping[str, PoolSettings]
    env_prefix: str | None
    sections: Mapping[str, Any] = field(default_factory=dict)

    def for_alias(self, alias: str) -> PoolSettings | None:
        """The settings of ``alias``, or None when no such pool is configured."""
        return self.pools.get(alias)

