"""Health probes: the one implementation behind the health views, ``manage.py poolcheck`` and
the django-health-check backend.

A *round* probes every configured database at once, each in its own daemon thread, and turns
the answers plus the pools' gauges into a typed :class:`HealthReport`. Four properties matter
more than the probe itself:

- **Bounded.** A round returns after ``timeout`` seconds whatever the servers do. libpq will not
  time a connect out in less than 2 s and a stopped (``SIGSTOP``) server keeps the TCP
  connection open, so the deadline is enforced here, by waiting on the probe threads, and a
  server-side ``statement_timeout`` bounds the query too. A probe still stuck from an earlier
  round is waited on again instead of being started twice, so a dead server costs at most one
  thread and one socket per alias.
- **Never steals a pool slot.** The probe opens its own connection, outside every pool, with
  the alias's own parameters (the ORM's ``get_connection_params()``), so a saturated pool can
  neither delay it nor lose a slot to it. Saturation is read from the pool's gauges
  (``pool_stats()``), which costs no I/O. Opening a *fresh* connection each round is also what
  notices a server that refuses new connections (``max_connections`` or a role's
  ``CONNECTION LIMIT`` reached) while the pool's open connections still answer ``SELECT 1``.
- **Cheap under a flood.** A round's report is cached for ``cache_ttl`` seconds and concurrent
  callers share the round in flight (single-flight), so each process sends at most one probe
  per database per ``cache_ttl``, however many health requests arrive.
- **Safe.** Errors are reduced to fixed phrases (``"connection refused"``, ``"too many
  connections"``, SQLSTATE codes); the driver's message, which can name hosts, users and
  parameters, never leaves this module. The report's public form is its status only; details
  (host, port, database name, errors) are rendered only when the caller asks for them.

Settings live in ``POOLKIT["HEALTH"]`` (:class:`HealthSettings`), validated by
:func:`parse_settings` through ``conf.SECTION_PARSERS`` with check ids ``poolkit.E030``-``E034``.
"""

from __future__ import annotations

from ..ops.serverinfo import describe_error
from .probe import ProbeResult, probe_database
from .report import DatabaseHealth, HealthReport, evaluate, worst
from .runner import HealthChecker, checker
from .settings import (
    DEGRADED,
    HEALTHY,
    SETTING_RULES,
    UNHEALTHY,
    HealthSettings,
    Status,
    health_settings,
    parse_settings,
    with_overrides,
)

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "SETTING_RULES",
    "UNHEALTHY",
    "DatabaseHealth",
    "HealthChecker",
    "HealthReport",
    "HealthSettings",
    "ProbeResult",
    "Status",
    "checker",
    "describe_error",
    "evaluate",
    "health_settings",
    "parse_settings",
    "probe_database",
    "with_overrides",
    "worst",
]

