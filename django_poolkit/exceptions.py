"""Every exception django-poolkit raises, in one place (as ``psycopg_pool/errors.py`` does).

Each keeps its natural base class, so code that already catches ``ImproperlyConfigured``,
``ConnectionDoesNotExist``, SQLAlchemy's ``TimeoutError`` or psycopg's ``OperationalError``
keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import sqlalchemy.exc
from django.core.exceptions import ImproperlyConfigured
from django.utils.connection import ConnectionDoesNotExist

__all__ = [
    "ClientTimeout",
    "NoHealthyReplica",
    "PoolTimeout",
    "PoolkitConfigurationError",
    "PoolkitError",
    "Problem",
    "ServerUnreachable",
    "SharingError",
    "UnknownAlias",
    "UnusableConnection",
    "describe_error",
]


class PoolkitError(Exception):
    """Base class of every django-poolkit error."""

    __module__ = "django_poolkit"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration.

    ``path`` names where it is (``POOLKIT["DATABASES"]["default"]["pool_size"]`` or
    ``environment variable POOLKIT_POOL_SIZE``), ``message`` what is wrong, ``hint`` what to
    write instead, and ``check_id`` the system check that reports it.
    """

    path: str
    message: str
    hint: str
    check_id: str

    def __str__(self) -> str:
        end = "" if self.message.endswith(("?", ".", "!")) else "."
        return f"{self.path}: {self.message}{end} {self.hint}"


class PoolkitConfigurationError(PoolkitError, ImproperlyConfigured):
    """``POOLKIT`` (or a ``POOLKIT_*`` environment variable) is wrong.

    Raised when the settings are first used; ``manage.py check`` reports the same problems as
    ``poolkit.E0xx`` errors. ``problems`` lists every problem found, not just the first.
    """

    __module__ = "django_poolkit"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            text = f"{len(self.problems)} problems in the poolkit configuration:\n{lines}"
        super().__init__(text)


class UnknownAlias(PoolkitError, ConnectionDoesNotExist):
    """No database in ``DATABASES`` and no engine in ``POOLKIT["ENGINES"]`` has this name."""

    __module__ = "django_poolkit"


class PoolTimeout(PoolkitError, sqlalchemy.exc.TimeoutError):
    """No connection became free within ``pool_timeout``.

    Still a SQLAlchemy ``TimeoutError``; the message names the alias, the pool's size,
    overflow and timeout, and how many connections were checked out, so the log line alone
    says which pool ran dry. ``PoolkitMiddleware`` answers it with HTTP 503.
    """

    __module__ = "django_poolkit"

    def __init__(
        self, alias: str, pool_size: int, max_overflow: int, timeout: float, checked_out: int
    ) -> None:
        self.alias = alias
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.timeout = timeout
        self.checked_out = checked_out
        super().__init__(
            f"pool {alias!r} exhausted: no connection free within {timeout:g} s "
            f"(pool_size={pool_size}, max_overflow={max_overflow}, "
            f"checked out={checked_out}); raise pool_size/max_overflow for this alias, "
            f"release connections sooner, or shed load"
        )

    def __reduce__(self) -> tuple[type[PoolTimeout], tuple[str, int, int, float, int]]:
        return (
            type(self),
            (self.alias, self.pool_size, self.max_overflow, self.timeout, self.checked_out),
        )


class NoHealthyReplica(PoolkitError):
    """A read found no replica to serve it and the cluster's ``fallback`` is ``"raise"``.

    ``PoolkitMiddleware`` answers it with HTTP 503, like a pool timeout.
    """

    def __init__(self, cluster: str, reasons: dict[str, str]) -> None:
        self.cluster = cluster
        self.reasons = reasons
        detail = "; ".join(f"{alias}: {why}" for alias, why in reasons.items()) or "none"
        super().__init__(f"no replica of cluster {cluster!r} can serve reads ({detail}) and "
                         'its fallback is "raise"')


class SharingError(PoolkitError):
    """Something SQLAlchemy asked for cannot be done on a connection the ORM shares in this
    thread (:mod:`django_poolkit.engines.sharing`)."""


class ServerUnreachable(PoolkitError):
    """A server could not be asked (``poolstatus``, ``poolplan``, the budget check); ``str()``
    is a fixed phrase, never the driver's text."""


class ClientTimeout(psycopg.OperationalError):
    """No answer from the server within the deadline: poolkit closed the connection.

    An ``OperationalError`` like any lost connection, so Django raises
    ``django.db.OperationalError`` and SQLAlchemy ``sqlalchemy.exc.OperationalError`` (with
    ``connection_invalidated`` set)."""

    __module__ = "django_poolkit"


class UnusableConnection(Exception):
    """Raised inside a checkin when a connection cannot be made clean; SQLAlchemy then
    invalidates it (closes it) instead of putting it back. Internal: never reaches users."""


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
    ('"trust" authentication failed', "authentication failed"),  # PgBouncer: not in auth_file
    ("fatal:  not allowed", "admin login refused"),  # PgBouncer: not an admin or stats user
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


def describe_error(error: BaseException | None, *, quote: bool = False) -> str:
    """How poolkit names an error in its reports and logs: the one describer.

    By default a fixed phrase with the SQLSTATE when known (health probes, server queries,
    anything an HTTP response or command output may show): the driver's own text can hold
    host names, user names and parameter values, so it is only *matched*, never returned.
    ``quote=True`` gives the class and the first line of the message instead (log lines and
    the router's reasons, read by operators; libpq never puts a password in its messages),
    never a DSN or a chained traceback. None is an explicit invalidation.
    """
    if error is None:
        return "explicit invalidation"
    if quote:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first}" if first else type(error).__name__
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
